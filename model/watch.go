package model

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchPools calls fn with every pool now and again after each change, until
// ctx ends. A broken or compacted watch is re-established from a fresh list,
// so no change is missed; a failing list is retried every retry interval.
func (s *Store) WatchPools(ctx context.Context, retry time.Duration, fn func([]Pool)) error {
	return s.watchList(ctx, "pools", s.poolsPrefix(), retry, func(ctx context.Context) (int64, error) {
		snap, err := s.poolSnapshot(ctx, false)
		if err != nil {
			return 0, err
		}
		fn(snap.pools)
		return snap.revision, nil
	})
}

// watchList runs load, which lists the records under prefix, hands them on
// and returns the revision of the list, now and again after each change
// under prefix, until ctx ends. Each change costs one fresh list, so a
// broken or compacted watch misses nothing; a failing list is retried
// every retry interval.
func (s *Store) watchList(ctx context.Context, what, prefix string, retry time.Duration, load func(context.Context) (int64, error)) error {
	if s.watcher == nil {
		return fmt.Errorf("watch %s: store has no watcher", what)
	}
	for ctx.Err() == nil {
		rev, err := load(ctx)
		if err != nil {
			sleep(ctx, retry)
			continue
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		ch := s.watcher.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		changed := false
		for resp := range ch {
			if resp.Err() != nil || resp.Canceled {
				break
			}
			if len(resp.Events) > 0 {
				changed = true
				break
			}
		}
		cancel()
		if !changed && ctx.Err() == nil {
			// The watch ended without news (leader lost, compaction):
			// pause briefly so a dead etcd does not spin us.
			sleep(ctx, retry)
		}
	}
	return fmt.Errorf("watch %s: %w", what, context.Cause(ctx))
}

// Topology is every block and node record at one revision: what a node
// needs to route to the others' blocks.
type Topology struct {
	Blocks []Block
	Nodes  []Node
}

func (s *Store) topology(ctx context.Context) (Topology, int64, error) {
	resp, err := s.kv.Txn(ctx).Then(
		clientv3.OpGet(s.blocksPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(s.nodesPrefix(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return Topology{}, 0, etcdErr("list blocks and nodes", err)
	}
	var t Topology
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		b, err := s.DecodeBlock(string(kv.Key), kv.Value)
		if err != nil {
			s.reportCorrupt("blocks", string(kv.Key), err)
			continue
		}
		b.Revision = kv.CreateRevision
		t.Blocks = append(t.Blocks, b)
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		n, err := s.DecodeNode(string(kv.Key), kv.Value)
		if err != nil {
			s.reportCorrupt("nodes", string(kv.Key), err)
			continue
		}
		t.Nodes = append(t.Nodes, n)
	}
	return t, resp.Header.Revision, nil
}

// WatchTopology calls fn with every block and node now and after changes,
// until ctx ends. Changes arriving within settle of each other are handled
// together, so a burst of block acquisitions costs one re-list. A broken
// watch is re-established from a fresh list; nothing is missed.
func (s *Store) WatchTopology(ctx context.Context, settle, retry time.Duration, fn func(Topology)) error {
	if s.watcher == nil {
		return errors.New("watch topology: store has no watcher")
	}
	for ctx.Err() == nil {
		topo, rev, err := s.topology(ctx)
		if err != nil {
			sleep(ctx, retry)
			continue
		}
		fn(topo)
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		blocks := s.watcher.Watch(wctx, s.blocksPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		nodes := s.watcher.Watch(wctx, s.nodesPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case resp, ok = <-blocks:
		case resp, ok = <-nodes:
		case <-ctx.Done():
		}
		cancel()
		if !ok || resp.Err() != nil || resp.Canceled {
			// Watch broken (leader lost, compaction, etcd down): back off a little.
			sleep(ctx, retry)
			continue
		}
		sleep(ctx, settle)
	}
	return fmt.Errorf("watch topology: %w", context.Cause(ctx))
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
