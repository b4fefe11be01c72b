package model

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Draining rewrites the pool record, and every block acquisition compares
// the pool's ModRevision with the one it picked its block on: an
// acquisition that read the pool before a drain committed fails its
// compare and picks again on the drained pool. So a drain is one
// transaction on one key, and no block of a drained subnet is created
// after the drain's revision.

// SetDrained marks the pool (subnet invalid) or its subnet with the prefix
// subnet (either family of a dual-stack pair) drained or not. A drained
// pool or subnet gives no new blocks; blocks already owned stay, and their
// addresses with them. Undraining the pool clears the marks of its subnets
// too. It reports whether anything changed: marking what is already so
// writes nothing. Fails with ErrPoolNotFound or ErrSubnetNotFound.
func (s *Store) SetDrained(ctx context.Context, pool string, subnet netip.Prefix, drained bool) (changed bool, err error) {
	what := "pool " + strconv.Quote(pool)
	if subnet.IsValid() {
		what = "subnet " + subnet.String() + " of " + what
	}
	verb := "drain"
	if !drained {
		verb = "undrain"
	}
	err = retryConflicts(ctx, maxConflictAttempts, func() error {
		p, rev, err := s.GetPool(ctx, pool)
		if err != nil {
			return err
		}
		changed = false
		p.Subnets = slices.Clone(p.Subnets)
		switch {
		case subnet.IsValid():
			i, ok := p.FindSubnet(subnet)
			if !ok {
				return ErrSubnetNotFound
			}
			changed = p.Subnets[i].Drained != drained
			p.Subnets[i].Drained = drained
		case drained:
			changed = !p.Drained
			p.Drained = true
		default:
			changed = p.Drained
			p.Drained = false
			for i := range p.Subnets {
				changed = changed || p.Subnets[i].Drained
				p.Subnets[i].Drained = false
			}
		}
		if !changed {
			return nil
		}
		return s.putPoolAt(ctx, p, rev)
	})
	if err != nil {
		return false, fmt.Errorf("%s %s: %w", verb, what, err)
	}
	return changed, nil
}

// putPoolAt writes p if its record is still at revision rev; errConflict
// otherwise.
func (s *Store) putPoolAt(ctx context.Context, p Pool, rev int64) error {
	if err := p.Validate(); err != nil {
		return err
	}
	key := s.poolKey(p.Name)
	resp, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, encode(p))).
		Commit()
	if err != nil {
		return etcdErr("commit", err)
	}
	if !resp.Succeeded {
		return errConflict
	}
	return nil
}

// SubnetInUseError is RemoveSubnet's refusal while records remain under
// the subnet.
type SubnetInUseError struct {
	Pool   string
	Subnet Subnet
	// Nodes maps each node owning blocks of the subnet to how many.
	Nodes map[string]int
	// Orphans counts address records under the subnet outside any block
	// (left by a bug elsewhere); `coilctl address free` removes them.
	Orphans int64
}

func (e *SubnetInUseError) Error() string {
	if len(e.Nodes) == 0 {
		return fmt.Sprintf("%v: %d address records remain under subnet %s of pool %q without a block",
			ErrSubnetInUse, e.Orphans, e.Subnet, e.Pool)
	}
	nodes := make([]string, 0, len(e.Nodes))
	for n := range e.Nodes {
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(a, b string) int { return cmp.Or(cmp.Compare(e.Nodes[b], e.Nodes[a]), cmp.Compare(a, b)) })
	parts := make([]string, len(nodes))
	for i, n := range nodes {
		unit := "blocks"
		if e.Nodes[n] == 1 {
			unit = "block"
		}
		parts[i] = fmt.Sprintf("%s (%d %s)", n, e.Nodes[n], unit)
	}
	return fmt.Sprintf("%v: nodes still own blocks of subnet %s of pool %q: %s",
		ErrSubnetInUse, e.Subnet, e.Pool, strings.Join(parts, ", "))
}

// Unwrap makes errors.Is(err, ErrSubnetInUse) hold.
func (e *SubnetInUseError) Unwrap() error { return ErrSubnetInUse }

// RemoveSubnet takes the subnet with the prefix subnet (either family of a
// pair) out of the pool, in one transaction guarded by the pool's revision
// and by the absence of any block or address key under the subnet. The
// subnet must be drained first (ErrNotDrained): then no node takes a block
// of it any more, and once the nodes have returned theirs it can go. While
// blocks are owned it fails with a *SubnetInUseError naming the nodes. The
// pool's last subnet is not removed (ErrLastSubnet).
//
// The subnet's place in the list stays as a removed entry, since the
// positions of the subnets after it are part of their records' keys;
// trailing removed entries are dropped.
func (s *Store) RemoveSubnet(ctx context.Context, pool string, subnet netip.Prefix) error {
	err := retryConflicts(ctx, maxConflictAttempts, func() error {
		p, rev, err := s.GetPool(ctx, pool)
		if err != nil {
			return err
		}
		i, ok := p.FindSubnet(subnet)
		if !ok {
			return ErrSubnetNotFound
		}
		if !p.SubnetDrained(i) {
			return fmt.Errorf("%w: drain it first (coilctl pool drain %s --subnet %s)", ErrNotDrained, pool, subnet)
		}
		live := 0
		for _, sn := range p.Subnets {
			if !sn.Removed {
				live++
			}
		}
		if live == 1 {
			return fmt.Errorf("%w: delete the pool instead", ErrLastSubnet)
		}
		removed := p.Subnets[i]
		p.Subnets = slices.Clone(p.Subnets)
		p.Subnets[i] = Subnet{Removed: true}
		for len(p.Subnets) > 0 && p.Subnets[len(p.Subnets)-1].Removed {
			p.Subnets = p.Subnets[:len(p.Subnets)-1]
		}
		if err := p.Validate(); err != nil {
			return err
		}
		key := s.poolKey(pool)
		blocks := s.poolBlocksPrefix(pool) + strconv.Itoa(i) + "/"
		addrs := s.addressesPrefix() + pool + "/" + strconv.Itoa(i) + "/"
		resp, err := s.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", rev),
				clientv3.Compare(clientv3.CreateRevision(blocks), "=", 0).WithPrefix(),
				clientv3.Compare(clientv3.CreateRevision(addrs), "=", 0).WithPrefix()).
			Then(clientv3.OpPut(key, encode(p))).
			Else(clientv3.OpGet(blocks, clientv3.WithPrefix()),
				clientv3.OpGet(addrs, clientv3.WithPrefix(), clientv3.WithCountOnly())).
			Commit()
		if err != nil {
			return etcdErr("commit", err)
		}
		if resp.Succeeded {
			return nil
		}
		inUse := &SubnetInUseError{Pool: pool, Subnet: removed, Nodes: map[string]int{}}
		for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
			node := "(unknown: corrupt record " + string(kv.Key) + ")"
			if b, err := s.DecodeBlock(string(kv.Key), kv.Value); err == nil {
				node = b.Node
			}
			inUse.Nodes[node]++
		}
		blocksOwned := len(inUse.Nodes) > 0
		inUse.Orphans = resp.Responses[1].GetResponseRange().Count
		if blocksOwned || inUse.Orphans > 0 {
			if blocksOwned {
				inUse.Orphans = 0 // addresses of owned blocks are no orphans
			}
			return inUse
		}
		return errConflict // the pool changed: decide again
	})
	if err != nil {
		return fmt.Errorf("remove subnet %s from pool %q: %w", subnet, pool, err)
	}
	return nil
}
