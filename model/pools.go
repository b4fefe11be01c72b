package model

import (
	"context"
	"fmt"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// poolSnapshot is every pool as of one revision.
type poolSnapshot struct {
	pools    []Pool
	revision int64
}

// poolSnapshot lists every pool. A corrupt pool record is skipped and
// reported, unless strict: a write that checks overlaps with every pool
// must not go ahead without knowing one of them, so it fails instead.
func (s *Store) poolSnapshot(ctx context.Context, strict bool) (poolSnapshot, error) {
	resp, err := s.kv.Get(ctx, s.poolsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return poolSnapshot{}, etcdErr("list pools", err)
	}
	snap := poolSnapshot{revision: resp.Header.Revision}
	for _, kv := range resp.Kvs {
		p, err := s.DecodePool(string(kv.Key), kv.Value)
		if err != nil {
			if strict {
				return poolSnapshot{}, fmt.Errorf("%w (repair or delete it first)", err)
			}
			s.reportCorrupt("pools", string(kv.Key), err)
			continue
		}
		snap.pools = append(snap.pools, p)
	}
	return snap, nil
}

// checkOverlap reports whether any of subnets overlaps a subnet of a pool
// other than skip.
func (snap poolSnapshot) checkOverlap(subnets []Subnet, skip string) error {
	for _, p := range snap.pools {
		if p.Name == skip {
			continue
		}
		for _, o := range p.Subnets {
			for _, s := range subnets {
				if s.Overlaps(o) {
					return fmt.Errorf("%w: %s overlaps %s of pool %q", ErrSubnetOverlap, s, o, p.Name)
				}
			}
		}
	}
	return nil
}

// unchangedSince guards a write that was decided on a view of every pool:
// it fails if any pool key was created or modified after rev. Two
// concurrent creations of overlapping subnets therefore cannot both commit.
func (s *Store) unchangedSince(rev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(s.poolsPrefix()), "<", rev+1).WithPrefix()
}

// CreatePool validates p and stores it. Fails with ErrPoolExists,
// ErrSubnetOverlap or a validation error, changing nothing.
func (s *Store) CreatePool(ctx context.Context, p Pool) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("create pool %q: %w", p.Name, err)
	}
	key := s.poolKey(p.Name)
	err := retryConflicts(ctx, maxConflictAttempts, func() error {
		snap, err := s.poolSnapshot(ctx, true)
		if err != nil {
			return err
		}
		if slices.ContainsFunc(snap.pools, func(o Pool) bool { return o.Name == p.Name }) {
			return ErrPoolExists
		}
		if err := snap.checkOverlap(p.Subnets, ""); err != nil {
			return err
		}
		resp, err := s.kv.Txn(ctx).
			If(s.unchangedSince(snap.revision), clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, encode(p))).
			Commit()
		if err != nil {
			return etcdErr("commit", err)
		}
		if !resp.Succeeded {
			// Some pool changed under us: decide again on a fresh view.
			return errConflict
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("create pool %q: %w", p.Name, err)
	}
	return nil
}

// AddSubnet appends a subnet to an existing pool, with the same checks as
// CreatePool.
func (s *Store) AddSubnet(ctx context.Context, name string, sub Subnet) error {
	err := retryConflicts(ctx, maxConflictAttempts, func() error {
		snap, err := s.poolSnapshot(ctx, true)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(snap.pools, func(o Pool) bool { return o.Name == name })
		if i < 0 {
			return ErrPoolNotFound
		}
		p := snap.pools[i]
		p.Subnets = append(slices.Clone(p.Subnets), sub)
		if err := p.Validate(); err != nil {
			return fmt.Errorf("subnet %s: %w", sub, err)
		}
		if err := snap.checkOverlap([]Subnet{sub}, name); err != nil {
			return err
		}
		resp, err := s.kv.Txn(ctx).
			If(s.unchangedSince(snap.revision), clientv3.Compare(clientv3.CreateRevision(s.poolKey(name)), ">", 0)).
			Then(clientv3.OpPut(s.poolKey(name), encode(p))).
			Commit()
		if err != nil {
			return etcdErr("commit", err)
		}
		if !resp.Succeeded {
			return errConflict
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("add subnet to pool %q: %w", name, err)
	}
	return nil
}

// GetPool returns a pool and the revision at which it was last modified.
func (s *Store) GetPool(ctx context.Context, name string) (Pool, int64, error) {
	key := s.poolKey(name)
	resp, err := s.kv.Get(ctx, key)
	if err != nil {
		return Pool{}, 0, fmt.Errorf("get pool %q: %w", name, etcdErr("get", err))
	}
	if len(resp.Kvs) == 0 {
		return Pool{}, 0, fmt.Errorf("get pool %q: %w", name, ErrPoolNotFound)
	}
	p, err := s.DecodePool(key, resp.Kvs[0].Value)
	if err != nil {
		return Pool{}, 0, err
	}
	return p, resp.Kvs[0].ModRevision, nil
}

// ListPools returns every pool, sorted by name.
func (s *Store) ListPools(ctx context.Context) ([]Pool, error) {
	snap, err := s.poolSnapshot(ctx, false)
	if err != nil {
		return nil, err
	}
	return snap.pools, nil
}

// DeletePool removes a pool that has no block in use. A node acquiring a
// block at the same moment either wins (and the delete fails with
// ErrPoolInUse) or loses (its acquisition sees the pool gone).
func (s *Store) DeletePool(ctx context.Context, name string) error {
	key := s.poolKey(name)
	blocks := s.poolBlocksPrefix(name)
	resp, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0),
			clientv3.Compare(clientv3.CreateRevision(blocks), "=", 0).WithPrefix()).
		Then(clientv3.OpDelete(key)).
		Else(clientv3.OpGet(key, clientv3.WithCountOnly()),
			clientv3.OpGet(blocks, clientv3.WithPrefix(), clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return fmt.Errorf("delete pool %q: %w", name, etcdErr("commit", err))
	}
	if resp.Succeeded {
		return nil
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return fmt.Errorf("delete pool %q: %w", name, ErrPoolNotFound)
	}
	n := resp.Responses[1].GetResponseRange().Count
	return fmt.Errorf("delete pool %q: %w: %d blocks still owned by nodes", name, ErrPoolInUse, n)
}
