package model

import (
	"context"
	"errors"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Revision returns etcd's current revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	resp, err := s.kv.Get(ctx, s.schemaKey(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("read revision: %w", etcdErr("get", err))
	}
	return resp.Header.Revision, nil
}

// Released is a block or address record of a node deleted from etcd.
// Exactly one of Block and Address is set, holding the record as it was
// before the deletion, Revision included.
type Released struct {
	Block   *Block
	Address *Address
}

// ErrWatchBroken: a watch ended before its context did (etcd unreachable,
// the revision compacted): changes may have been missed, so the caller must
// read the state again before it watches from a new revision.
var ErrWatchBroken = errors.New("watch broken")

// WatchNodeReleases calls fn for each block or address record of node
// deleted after revision rev, in order, until ctx ends (it then returns
// ctx's cause) or the watch breaks (an error wrapping ErrWatchBroken).
//
// It is one watch over the address and block keys of every node, with
// puts filtered out by etcd and the records of other nodes dropped here:
// a node allocates its own addresses, so only deletions made by others
// (coil-controller, coilctl) are news to it, and those are rare.
func (s *Store) WatchNodeReleases(ctx context.Context, node string, rev int64, fn func(Released)) error {
	if s.watcher == nil {
		return errors.New("watch releases: store has no watcher")
	}
	// addresses/ sorts before blocks/: one range covers both, and the
	// keys between them are checked by parseReleased.
	from, to := s.addressesPrefix(), clientv3.GetPrefixRangeEnd(s.blocksPrefix())
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	ch := s.watcher.Watch(wctx, from, clientv3.WithRange(to), clientv3.WithRev(rev+1),
		clientv3.WithFilterPut(), clientv3.WithPrevKV())
	for resp := range ch {
		if err := resp.Err(); err != nil {
			return fmt.Errorf("watch releases of node %q: %w: %w", node, ErrWatchBroken, err)
		}
		for _, ev := range resp.Events {
			if ev.Type != clientv3.EventTypeDelete {
				continue
			}
			if ev.PrevKv == nil {
				// The record is not known (compacted meanwhile): only a
				// fresh read tells whether it was this node's.
				return fmt.Errorf("watch releases of node %q: %w: deletion of %s without its record", node, ErrWatchBroken, ev.Kv.Key)
			}
			if r, ok := s.parseReleased(string(ev.PrevKv.Key), ev.PrevKv.Value, ev.PrevKv.CreateRevision); ok && r.node() == node {
				fn(r)
			}
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("watch releases of node %q: %w", node, context.Cause(ctx))
	}
	return fmt.Errorf("watch releases of node %q: %w: channel closed", node, ErrWatchBroken)
}

// parseReleased decodes a deleted block or address record; anything else
// (or a record that does not decode) is not a release of interest.
func (s *Store) parseReleased(key string, val []byte, created int64) (Released, bool) {
	switch {
	case strings.HasPrefix(key, s.addressesPrefix()):
		a, err := s.DecodeAddress(key, val)
		if err != nil {
			return Released{}, false
		}
		a.Revision = created
		return Released{Address: &a}, true
	case strings.HasPrefix(key, s.blocksPrefix()):
		b, err := s.DecodeBlock(key, val)
		if err != nil {
			return Released{}, false
		}
		b.Revision = created
		return Released{Block: &b}, true
	}
	return Released{}, false
}

func (r Released) node() string {
	if r.Block != nil {
		return r.Block.Node
	}
	return r.Address.Node
}
