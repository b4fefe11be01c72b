package model

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
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

// Topology is every block and node record: what a node needs to route to
// the others' blocks.
type Topology struct {
	Blocks []Block
	Nodes  []Node
}

// topologyCopy is a node's copy of every block and node record, by key,
// kept up to date by applying watch events.
type topologyCopy struct {
	blocks map[string]Block
	nodes  map[string]Node
}

// listTopology reads every block and node record at one revision.
func (s *Store) listTopology(ctx context.Context) (*topologyCopy, int64, error) {
	resp, err := s.kv.Txn(ctx).Then(
		clientv3.OpGet(s.blocksPrefix(), clientv3.WithPrefix()),
		clientv3.OpGet(s.nodesPrefix(), clientv3.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, 0, etcdErr("list blocks and nodes", err)
	}
	c := &topologyCopy{blocks: map[string]Block{}, nodes: map[string]Node{}}
	for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
		c.putBlock(s, kv)
	}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		c.putNode(s, kv)
	}
	return c, resp.Header.Revision, nil
}

// putBlock stores the block record kv. A record that does not decode is
// reported and left out, as a list leaves it out.
func (c *topologyCopy) putBlock(s *Store, kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	b, err := s.DecodeBlock(key, kv.Value)
	if err != nil {
		s.reportCorrupt("blocks", key, err)
		delete(c.blocks, key)
		return
	}
	b.Revision = kv.CreateRevision
	c.blocks[key] = b
}

func (c *topologyCopy) putNode(s *Store, kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	n, err := s.DecodeNode(key, kv.Value)
	if err != nil {
		s.reportCorrupt("nodes", key, err)
		delete(c.nodes, key)
		return
	}
	c.nodes[key] = n
}

// apply applies the events of one watch response on blocks (or nodes).
func (c *topologyCopy) apply(s *Store, blocks bool, events []*clientv3.Event) {
	for _, ev := range events {
		switch {
		case ev.Type == clientv3.EventTypeDelete && blocks:
			delete(c.blocks, string(ev.Kv.Key))
		case ev.Type == clientv3.EventTypeDelete:
			delete(c.nodes, string(ev.Kv.Key))
		case blocks:
			c.putBlock(s, ev.Kv)
		default:
			c.putNode(s, ev.Kv)
		}
	}
}

// topology returns the copy as a Topology, in key order as a list
// returns it. The records are copied: fn may keep them.
func (c *topologyCopy) topology() Topology {
	var t Topology
	for _, k := range slices.Sorted(maps.Keys(c.blocks)) {
		t.Blocks = append(t.Blocks, c.blocks[k])
	}
	for _, k := range slices.Sorted(maps.Keys(c.nodes)) {
		t.Nodes = append(t.Nodes, c.nodes[k])
	}
	return t
}

// WatchTopology calls fn with every block and node now and after changes,
// until ctx ends. It lists the records once and then applies the watch's
// events to its own copy, so a block taken or released anywhere in the
// cluster costs each watcher one small event, not a list of the whole
// cluster (issue 15: at 5,000 nodes a list is 20,000 blocks, and every
// node would fetch it on every change). Changes arriving within settle of
// each other are handed to fn together. A broken or compacted watch is
// replaced by a fresh list, so nothing is missed; a failing list is
// retried every retry interval.
//
// Between the two watches (blocks, nodes) the copy may be a few events
// apart: a block whose node record is not there yet is in the topology
// without its node, and is completed by the next call.
func (s *Store) WatchTopology(ctx context.Context, settle, retry time.Duration, fn func(Topology)) error {
	if s.watcher == nil {
		return errors.New("watch topology: store has no watcher")
	}
	for ctx.Err() == nil {
		c, rev, err := s.listTopology(ctx)
		if err != nil {
			sleep(ctx, retry)
			continue
		}
		fn(c.topology())
		if compacted := s.followTopology(ctx, c, rev, settle, fn); !compacted {
			// Watch broken (leader lost, etcd down): back off a little
			// before listing again, so a dead etcd does not spin us.
			sleep(ctx, retry)
		}
	}
	return fmt.Errorf("watch topology: %w", context.Cause(ctx))
}

// followTopology applies to c the changes after rev and calls fn, at most
// once per settle interval, until ctx ends or the watch breaks. It reports
// whether the watch broke because rev was compacted away, when a fresh
// list is due at once.
func (s *Store) followTopology(ctx context.Context, c *topologyCopy, rev int64, settle time.Duration, fn func(Topology)) (compacted bool) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	blocks := s.watcher.Watch(wctx, s.blocksPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	nodes := s.watcher.Watch(wctx, s.nodesPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	timer := time.NewTimer(settle)
	timer.Stop()
	defer timer.Stop()
	pending := false
	for {
		var resp clientv3.WatchResponse
		var ok, isBlocks bool
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
			pending = false
			fn(c.topology())
			continue
		case resp, ok = <-blocks:
			isBlocks = true
		case resp, ok = <-nodes:
		}
		if !ok || resp.Canceled || resp.Err() != nil {
			// The copy may lack changes the broken watch did not deliver;
			// the caller's fresh list replaces it, and tells fn.
			return ok && resp.CompactRevision != 0
		}
		if len(resp.Events) == 0 {
			continue // progress notification
		}
		c.apply(s, isBlocks, resp.Events)
		if !pending {
			pending = true
			timer.Reset(settle)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
