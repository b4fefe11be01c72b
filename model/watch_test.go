package model_test

import (
	"context"
	"net/netip"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestWatchPoolsAndTopology(t *testing.T) {
	st, _ := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	pools := make(chan []model.Pool, 16)
	topo := make(chan model.Topology, 16)
	done := make(chan struct{}, 2)
	go func() {
		st.WatchPools(ctx, 100*time.Millisecond, func(p []model.Pool) { pools <- p })
		done <- struct{}{}
	}()
	go func() {
		st.WatchTopology(ctx, 10*time.Millisecond, 100*time.Millisecond, func(tp model.Topology) { topo <- tp })
		done <- struct{}{}
	}()
	wait := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for !ok() {
			select {
			case <-deadline:
				t.Fatalf("timed out waiting for %s", what)
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	var lastPools []model.Pool
	var lastTopo model.Topology
	drain := func() {
		for {
			select {
			case p := <-pools:
				lastPools = p
			case tp := <-topo:
				lastTopo = tp
			default:
				return
			}
		}
	}
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.30.0.0/24", "")}}); err != nil {
		t.Fatal(err)
	}
	wait("pool event", func() bool { drain(); return len(lastPools) == 1 })
	if _, _, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "n1", ContainerID: "c"}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutNode(ctx, model.Node{Name: "n1"}); err != nil {
		t.Fatal(err)
	}
	wait("topology event", func() bool { drain(); return len(lastTopo.Blocks) == 1 && len(lastTopo.Nodes) == 1 })
	cancel()
	<-done
	<-done
}

// topologyWatch runs WatchTopology on st until the test ends and keeps the
// last topology it delivered.
type topologyWatch struct {
	mu    sync.Mutex
	last  model.Topology
	calls int
}

func startTopologyWatch(t *testing.T, st *model.Store) *topologyWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &topologyWatch{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.WatchTopology(ctx, 5*time.Millisecond, 20*time.Millisecond, func(tp model.Topology) {
			w.mu.Lock()
			w.last = tp
			w.calls++
			w.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return w
}

// waitFor waits until the watcher's last topology equals want.
func (w *topologyWatch) waitFor(t *testing.T, what string, want model.Topology) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		got, calls := w.last, w.calls
		w.mu.Unlock()
		if calls > 0 && sameTopology(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: watcher sees %+v, a fresh list %+v", what, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// sameTopology compares two topologies record by record (an empty list
// and none are the same).
func sameTopology(a, b model.Topology) bool {
	if len(a.Blocks) != len(b.Blocks) || len(a.Nodes) != len(b.Nodes) {
		return false
	}
	for i := range a.Blocks {
		if !reflect.DeepEqual(a.Blocks[i], b.Blocks[i]) {
			return false
		}
	}
	for i := range a.Nodes {
		if !reflect.DeepEqual(a.Nodes[i], b.Nodes[i]) {
			return false
		}
	}
	return true
}

// freshTopology lists every block and node now, in key order as the
// watcher delivers them.
func freshTopology(t *testing.T, st *model.Store) model.Topology {
	t.Helper()
	ctx := context.Background()
	blocks, err := st.ListBlocks(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := st.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return model.Topology{Blocks: blocks, Nodes: nodes}
}

// topologyStep is one change to the cluster the watcher must follow.
type topologyStep struct {
	name string
	do   func(t *testing.T, ctx context.Context, st *model.Store, blocks map[string]model.Block)
}

func acquireStep(node, as string) topologyStep {
	return topologyStep{"acquire block " + as + " for " + node, func(t *testing.T, ctx context.Context, st *model.Store, blocks map[string]model.Block) {
		b, _, err := st.AcquireBlock(ctx, "default", model.Owner{Node: node, ContainerID: as})
		if err != nil {
			t.Fatal(err)
		}
		blocks[as] = b
	}}
}

func putNodeStep(node, addr string) topologyStep {
	return topologyStep{"put node " + node + " " + addr, func(t *testing.T, ctx context.Context, st *model.Store, _ map[string]model.Block) {
		if err := st.PutNode(ctx, model.Node{Name: node, Addresses: []netip.Addr{netip.MustParseAddr(addr)}}); err != nil {
			t.Fatal(err)
		}
	}}
}

func releaseStep(as string) topologyStep {
	return topologyStep{"release block " + as, func(t *testing.T, ctx context.Context, st *model.Store, blocks map[string]model.Block) {
		if _, err := st.ForceReleaseBlock(ctx, blocks[as]); err != nil {
			t.Fatal(err)
		}
	}}
}

func deleteNodeStep(node string) topologyStep {
	return topologyStep{"delete node " + node, func(t *testing.T, ctx context.Context, st *model.Store, _ map[string]model.Block) {
		if err := st.DeleteNode(ctx, node); err != nil {
			t.Fatal(err)
		}
	}}
}

func newTopologyPool(t *testing.T, st *model.Store) {
	t.Helper()
	if err := st.CreatePool(context.Background(), model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.31.0.0/24", "fd31::/120")}}); err != nil {
		t.Fatal(err)
	}
}

// TestWatchTopologyFollowsChanges checks that after every change the
// watcher's topology is what a fresh list returns.
func TestWatchTopologyFollowsChanges(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	newTopologyPool(t, st)
	blocks := map[string]model.Block{}
	for _, s := range []topologyStep{putNodeStep("n1", "192.0.2.1"), acquireStep("n1", "a")} {
		s.do(t, ctx, st, blocks)
	}
	w := startTopologyWatch(t, st)
	w.waitFor(t, "start", freshTopology(t, st))
	steps := []topologyStep{
		acquireStep("n1", "b"),
		putNodeStep("n2", "192.0.2.2"),
		acquireStep("n2", "c"),
		putNodeStep("n2", "2001:db8::2"),
		releaseStep("a"),
		acquireStep("n3", "d"),
		deleteNodeStep("n2"),
		releaseStep("c"),
		acquireStep("n1", "e"),
	}
	for _, s := range steps {
		s.do(t, ctx, st, blocks)
		w.waitFor(t, s.name, freshTopology(t, st))
	}
	// A burst of changes within the settle time ends in the same state.
	for _, s := range []topologyStep{releaseStep("b"), releaseStep("d"), putNodeStep("n4", "192.0.2.4"), acquireStep("n4", "f"), deleteNodeStep("n1")} {
		s.do(t, ctx, st, blocks)
	}
	w.waitFor(t, "burst", freshTopology(t, st))
}

// TestWatchTopologyDoesNotRelist counts the requests the watcher's store
// sends: after the first list, block and node changes reach it as watch
// events only, not as a list of the whole cluster each.
func TestWatchTopologyDoesNotRelist(t *testing.T) {
	ctx := context.Background()
	writer, _ := newStore(t)
	newTopologyPool(t, writer)
	cli := server.Client(t)
	kv := &countingKV{KV: cli.KV}
	cli.KV = kv
	st := model.New(cli, writer.Prefix())
	w := startTopologyWatch(t, st)
	w.waitFor(t, "start", freshTopology(t, writer))
	before := kv.total()
	blocks := map[string]model.Block{}
	for _, s := range []topologyStep{putNodeStep("n1", "192.0.2.1"), acquireStep("n1", "a"), acquireStep("n2", "b"), releaseStep("a")} {
		s.do(t, ctx, writer, blocks)
		w.waitFor(t, s.name, freshTopology(t, writer))
	}
	if got := kv.total() - before; got != 0 {
		t.Fatalf("the watcher sent %d requests to etcd for 4 changes, want 0 (no re-list)", got)
	}
}

// gatedWatcher holds every Watch call until open is closed, and makes the
// next break calls return a channel that is already closed, as a watch
// etcd ended does.
type gatedWatcher struct {
	clientv3.Watcher
	open   chan struct{}
	breaks atomic.Int32
}

func (g *gatedWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	select {
	case <-g.open:
	case <-ctx.Done():
	}
	if g.breaks.Add(-1) >= 0 {
		ch := make(chan clientv3.WatchResponse)
		close(ch)
		return ch
	}
	return g.Watcher.Watch(ctx, key, opts...)
}

// TestWatchTopologyRecovers checks that a watch that cannot resume (its
// revision compacted, or ended by etcd) is replaced by a fresh list, and
// that the changes made meanwhile are not missed.
func TestWatchTopologyRecovers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		compact bool
		breaks  int32
	}{
		{name: "compacted", compact: true},
		{name: "broken", breaks: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			writer, wcli := newStore(t)
			newTopologyPool(t, writer)
			blocks := map[string]model.Block{}
			for _, s := range []topologyStep{putNodeStep("n1", "192.0.2.1"), acquireStep("n1", "a")} {
				s.do(t, ctx, writer, blocks)
			}
			cli := server.Client(t)
			kv := &countingKV{KV: cli.KV}
			gw := &gatedWatcher{Watcher: cli.Watcher, open: make(chan struct{})}
			gw.breaks.Store(tc.breaks)
			cli.KV, cli.Watcher = kv, gw
			st := model.New(cli, writer.Prefix())
			w := startTopologyWatch(t, st)
			first := freshTopology(t, writer)
			w.waitFor(t, "start", first)
			listed := kv.total()
			// Changes after the watcher's list, before its watch starts.
			for _, s := range []topologyStep{acquireStep("n2", "b"), putNodeStep("n2", "192.0.2.2"), releaseStep("a")} {
				s.do(t, ctx, writer, blocks)
			}
			if tc.compact {
				rev, err := writer.Revision(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := wcli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
					t.Fatal(err)
				}
			}
			close(gw.open)
			w.waitFor(t, "after recovery", freshTopology(t, writer))
			if kv.total() == listed {
				t.Fatal("the watcher did not list again after its watch broke")
			}
			// And it follows changes from there on.
			acquireStep("n3", "c").do(t, ctx, writer, blocks)
			w.waitFor(t, "after recovery, a new block", freshTopology(t, writer))
		})
	}
}
