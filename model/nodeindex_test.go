package model_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// readRecorder records the key ranges the store reads, Get and the Get
// operations of transactions alike.
type readRecorder struct {
	clientv3.KV
	mu       sync.Mutex
	requests int
	reads    []keyRange
}

type keyRange struct{ key, end string }

func (r *readRecorder) note(ops ...clientv3.Op) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, op := range ops {
		if op.IsGet() {
			r.reads = append(r.reads, keyRange{string(op.KeyBytes()), string(op.RangeBytes())})
		}
	}
}

func (r *readRecorder) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	r.mu.Lock()
	r.requests++
	r.mu.Unlock()
	r.note(clientv3.OpGet(key, opts...))
	return r.KV.Get(ctx, key, opts...)
}

func (r *readRecorder) Txn(ctx context.Context) clientv3.Txn {
	r.mu.Lock()
	r.requests++
	r.mu.Unlock()
	return etcdtest.HookTxn(r.KV.Txn(ctx), func(then []clientv3.Op, commit func() (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
		r.note(then...)
		return commit()
	})
}

func (r *readRecorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests, r.reads = 0, nil
}

// recordedStore returns an initialised store over a readRecorder, with a
// pool "default" of blocks of 4 addresses in subnet cidr, and what it
// stands on.
func recordedStore(t *testing.T, cidr string) (*clientv3.Client, string, *readRecorder, *model.Store) {
	t.Helper()
	ctx := context.Background()
	cli := server.Client(t)
	prefix := etcdtest.Prefix(t)
	rec := &readRecorder{KV: cli.KV}
	st := model.NewWithKV(rec, prefix)
	if err := st.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, cidr, "")}}); err != nil {
		t.Fatal(err)
	}
	return cli, prefix, rec, st
}

// fillNodes makes n nodes named node-<i> own one block each, with one
// address in it.
func fillNodes(t *testing.T, st *model.Store, n int) map[string]model.Block {
	t.Helper()
	blocks := map[string]model.Block{}
	for i := range n {
		node := fmt.Sprintf("node-%d", i)
		b, _, err := st.AcquireBlock(context.Background(), "default", model.Owner{Node: node, ContainerID: "c-" + node})
		if err != nil {
			t.Fatal(err)
		}
		blocks[node] = b
	}
	return blocks
}

// TestNodeBlocksReadsOnlyTheNode: a node finds its blocks in a constant
// number of requests that read its own index and its own block keys,
// never another node's, however many nodes there are.
func TestNodeBlocksReadsOnlyTheNode(t *testing.T) {
	ctx := context.Background()
	cli, prefix, rec, st := recordedStore(t, "10.60.0.0/20")
	// Mark every node indexed the way coild's first start does.
	for _, n := range []int{3, 60} {
		t.Run(fmt.Sprint(n, " nodes"), func(t *testing.T) {
			for i := range n {
				if _, err := st.OwnBlocks(ctx, fmt.Sprintf("node-%d", i)); err != nil {
					t.Fatal(err)
				}
			}
			blocks := fillNodes(t, st, n)
			// node-1 takes a second block.
			second, _, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "node-1", ContainerID: "more"})
			if err != nil {
				t.Fatal(err)
			}
			rec.reset()
			got, err := st.NodeBlocks(ctx, "node-1")
			if err != nil {
				t.Fatal(err)
			}
			want := map[string]int64{blocks["node-1"].ID(): blocks["node-1"].Revision, second.ID(): second.Revision}
			if len(got) != 2 || want[got[0].ID()] != got[0].Revision || want[got[1].ID()] != got[1].Revision {
				t.Fatalf("NodeBlocks(node-1) = %+v, want %v", got, want)
			}
			if got[0].Node != "node-1" || !got[0].IPv4.IsValid() {
				t.Errorf("block without its record: %+v", got[0])
			}
			if rec.requests != 2 {
				t.Errorf("NodeBlocks cost %d requests, want 2 (index, blocks)", rec.requests)
			}
			own := map[string]bool{}
			for _, b := range got {
				own[prefix+"blocks/"+b.ID()] = true
			}
			for _, r := range rec.reads {
				switch {
				case r.end == "" && own[r.key]:
				case r.key == prefix+"nodeblocks/node-1/" && r.end == prefix+"nodeblocks/node-10":
				default:
					t.Errorf("NodeBlocks read %q..%q: not only node-1's keys", r.key, r.end)
				}
			}
			// Clean up for the next size.
			if _, err := cli.Delete(ctx, prefix+"blocks/", clientv3.WithPrefix()); err != nil {
				t.Fatal(err)
			}
			if _, err := cli.Delete(ctx, prefix+"addresses/", clientv3.WithPrefix()); err != nil {
				t.Fatal(err)
			}
			if _, err := cli.Delete(ctx, prefix+"nodeblocks/", clientv3.WithPrefix()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestNodeIndexMigration: blocks taken before the index existed are found
// by one scan, which writes the node's index, so that the next read uses
// it; entries left by a release that did not know the index are dropped.
func TestNodeIndexMigration(t *testing.T) {
	ctx := context.Background()
	cli, prefix, rec, st := recordedStore(t, "10.61.0.0/24")
	blocks := fillNodes(t, st, 4)
	// What a cluster written by a Coil without the index holds: blocks
	// and addresses, no nodeblocks/.
	if _, err := cli.Delete(ctx, prefix+"nodeblocks/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}

	// Inspection (coilctl) finds them and writes nothing.
	got, err := st.NodeBlocks(ctx, "node-2")
	if err != nil || len(got) != 1 || got[0].ID() != blocks["node-2"].ID() {
		t.Fatalf("NodeBlocks before the index = %+v, %v", got, err)
	}
	if resp, err := cli.Get(ctx, prefix+"nodeblocks/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Fatalf("NodeBlocks wrote the index: %v, %v", resp, err)
	}

	rec.reset()
	got, err = st.OwnBlocks(ctx, "node-2")
	if err != nil || len(got) != 1 || got[0].ID() != blocks["node-2"].ID() || got[0].Revision != blocks["node-2"].Revision {
		t.Fatalf("OwnBlocks before the index = %+v, %v", got, err)
	}
	scanned := false
	for _, r := range rec.reads {
		scanned = scanned || r.key == prefix+"blocks/"
	}
	if !scanned {
		t.Fatalf("an unindexed node was not scanned for: reads %v", rec.reads)
	}

	rec.reset()
	got, err = st.NodeBlocks(ctx, "node-2")
	if err != nil || len(got) != 1 || got[0].Revision != blocks["node-2"].Revision {
		t.Fatalf("NodeBlocks after the migration = %+v, %v", got, err)
	}
	if rec.requests != 2 {
		t.Errorf("indexed NodeBlocks cost %d requests, want 2", rec.requests)
	}

	// A release of an address of an unindexed node writes no index entry.
	if _, err := st.AllocateAddress(ctx, blocks["node-3"], 1, model.Owner{Node: "node-3", ContainerID: "x"}); err != nil {
		t.Fatal(err)
	}
	recs, err := st.BlockAddresses(ctx, blocks["node-3"])
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range recs {
		if err := st.ReleaseAddress(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if resp, err := cli.Get(ctx, prefix+"nodeblocks/node-3/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Fatalf("release made index keys for an unindexed node: %v, %v", resp, err)
	}

	// A block deleted without its entry (by a coil-controller older than
	// the index): NodeBlocks leaves it out and drops the entry.
	if _, err := cli.Delete(ctx, prefix+"blocks/"+blocks["node-2"].ID()); err != nil {
		t.Fatal(err)
	}
	got, err = st.OwnBlocks(ctx, "node-2")
	if err != nil || len(got) != 0 {
		t.Fatalf("NodeBlocks with a stale entry = %+v, %v", got, err)
	}
	resp, err := cli.Get(ctx, prefix+"nodeblocks/node-2/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if !strings.HasSuffix(string(kv.Key), "/.complete") {
			t.Errorf("stale index key %s left", kv.Key)
		}
	}
}

// TestNewNodeInIndexedCluster: in a cluster created with the index, a node
// that never started has nothing to migrate, so its first start reads its
// own keys and the cluster's mark, not every block of the cluster; a node
// whose blocks are indexed but not marked complete finds them the same way.
func TestNewNodeInIndexedCluster(t *testing.T) {
	ctx := context.Background()
	cli, prefix, rec, st := recordedStore(t, "10.62.0.0/24")
	blocks := fillNodes(t, st, 8)

	tests := []struct {
		name, node string
		own        bool // OwnBlocks (the node's coild) rather than NodeBlocks
		want       []model.Block
	}{
		{name: "new node, its coild", node: "node-new", own: true},
		{name: "new node, inspection", node: "node-other"},
		{name: "node with blocks, not marked complete, inspection", node: "node-3", want: []model.Block{blocks["node-3"]}},
		{name: "node with blocks, not marked complete, its coild", node: "node-5", own: true, want: []model.Block{blocks["node-5"]}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec.reset()
			read := st.NodeBlocks
			if tc.own {
				read = st.OwnBlocks
			}
			got, err := read(ctx, tc.node)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) || (len(got) == 1 && got[0].Revision != tc.want[0].Revision) {
				t.Fatalf("blocks of %s = %+v, want %+v", tc.node, got, tc.want)
			}
			for _, r := range rec.reads {
				switch {
				case strings.HasPrefix(r.key, prefix+"nodeblocks/"+tc.node+"/"), r.key == prefix+"nodeblocks/.indexed" && r.end == "":
				case r.end == "" && len(tc.want) == 1 && r.key == prefix+"blocks/"+tc.want[0].ID():
				default:
					t.Errorf("read %q..%q: not only the node's keys and the cluster's mark", r.key, r.end)
				}
			}
			resp, err := cli.Get(ctx, prefix+"nodeblocks/"+tc.node+"/.complete", clientv3.WithCountOnly())
			if err != nil {
				t.Fatal(err)
			}
			if marked := resp.Count == 1; marked != tc.own {
				t.Errorf(".complete written: %v, want %v (only by the node's coild)", marked, tc.own)
			}
		})
	}
}

// TestNodeIndexFollowsBlocks: taking and releasing blocks, by the node or
// by coil-controller, keep the node's index in step in the same
// transactions.
func TestNodeIndexFollowsBlocks(t *testing.T) {
	ctx := context.Background()
	st, cli := newStore(t)
	prefix := st.Prefix()
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 1, Subnets: []model.Subnet{mustSubnet(t, "10.62.0.0/28", "")}}); err != nil {
		t.Fatal(err)
	}
	keys := func() []string {
		resp, err := cli.Get(ctx, prefix+"nodeblocks/n1/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range resp.Kvs {
			out = append(out, strings.TrimPrefix(string(kv.Key), prefix+"nodeblocks/n1/"))
		}
		return out
	}
	b1, a1, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "n1", ContainerID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	b2, a2, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "n1", ContainerID: "b"})
	if err != nil {
		t.Fatal(err)
	}
	if got := keys(); len(got) != 2 || got[0] != b1.ID() && got[1] != b1.ID() {
		t.Fatalf("index after two acquisitions: %v", got)
	}
	// A release by someone else leaves a "released" key next to the entry.
	if err := st.ReleaseAddress(ctx, a1); err != nil {
		t.Fatal(err)
	}
	if got := keys(); len(got) != 3 {
		t.Fatalf("index after a release by another: %v", got)
	}
	if err := st.ReleaseBlock(ctx, b1); err != nil {
		t.Fatal(err)
	}
	if got := keys(); len(got) != 1 || got[0] != b2.ID() {
		t.Fatalf("index after the node released %s: %v", b1.ID(), got)
	}
	if err := st.ReleaseOwnAddress(ctx, a2); err != nil {
		t.Fatal(err)
	}
	if got := keys(); len(got) != 1 {
		t.Fatalf("the node's own release touched the index: %v", got)
	}
	if _, err := st.ForceReleaseBlock(ctx, b2); err != nil {
		t.Fatal(err)
	}
	if got := keys(); len(got) != 0 {
		t.Fatalf("index after coil-controller released %s: %v", b2.ID(), got)
	}
	// The completion mark of a node goes with its record.
	if _, err := st.OwnBlocks(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if got := keys(); len(got) != 1 || got[0] != ".complete" {
		t.Fatalf("index of a node without blocks: %v", got)
	}
	if err := st.DeleteNode(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if got := keys(); len(got) != 0 {
		t.Fatalf("index after the node was deleted: %v", got)
	}
	if _, _, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "a/b", ContainerID: "c"}); err == nil {
		t.Fatal("a node name with a slash took a block")
	}
}
