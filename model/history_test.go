package model_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
)

// historyWant is what one event of an address history must show.
type historyWant struct {
	kind  string
	pod   string
	by    string // Releaser.String(), "" for none
	block bool   // reclaimed with its block
}

func checkHistory(t *testing.T, h model.AddressHistory, want []historyWant) {
	t.Helper()
	if len(h.Events) != len(want) {
		for _, e := range h.Events {
			t.Logf("rev %d %s %s/%s by %v", e.Revision, e.Kind, e.Address.Namespace, e.Address.Pod, e.By)
		}
		t.Fatalf("%d events, want %d", len(h.Events), len(want))
	}
	var last int64
	for i, w := range want {
		e := h.Events[i]
		by := ""
		if e.By != nil {
			by = e.By.String()
		}
		if e.Kind != w.kind || e.Address.Pod != w.pod || by != w.by || (e.Block != "") != w.block {
			t.Errorf("event %d = %s pod %q by %q block %q, want %s pod %q by %q block %v",
				i, e.Kind, e.Address.Pod, by, e.Block, w.kind, w.pod, w.by, w.block)
		}
		if e.Revision <= last {
			t.Errorf("event %d at revision %d, not after %d", i, e.Revision, last)
		}
		last = e.Revision
		if w.by != "" && e.At.IsZero() {
			t.Errorf("event %d has no time", i)
		}
	}
}

// historyScenario allocates 10.0.0.1 three times on node-1 and frees it
// in each way Coil frees addresses: the node's own release, the
// controller's leak reclaim, and the controller's reclaim of the node's
// whole block; then once more by a store that signs nothing.
func historyScenario(t *testing.T, coild, ctrl, anon *model.Store) (model.Block, []historyWant) {
	t.Helper()
	ctx := context.Background()
	p := model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.0.0.0/24", "")}}
	if err := coild.CreatePool(ctx, p); err != nil {
		t.Fatal(err)
	}
	owner := func(pod string) model.Owner {
		return model.Owner{Node: "node-1", Namespace: "web", Pod: pod, ContainerID: "c-" + pod, Interface: "eth0"}
	}
	b, _, err := coild.AcquireBlock(ctx, "default", owner("first"))
	if err != nil {
		t.Fatal(err)
	}
	alloc := func(pod string) model.Address {
		t.Helper()
		a, err := coild.AllocateAddress(ctx, b, 1, owner(pod))
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	a := alloc("a")
	if err := coild.ReleaseAddress(ctx, a); err != nil {
		t.Fatal(err)
	}
	a = alloc("b")
	if err := ctrl.ReleaseAddress(ctx, a); err != nil {
		t.Fatal(err)
	}
	a = alloc("c")
	if err := anon.ReleaseAddress(ctx, a); err != nil {
		t.Fatal(err)
	}
	alloc("d")
	// Another address's release must not be taken for this one's.
	if err := coild.ReleaseAddress(ctx, mustAlloc(t, coild, b, 2, owner("other"))); err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.ForceReleaseBlock(ctx, b); err != nil {
		t.Fatal(err)
	}
	return b, []historyWant{
		{kind: model.EventAllocated, pod: "a"},
		{kind: model.EventReleased, pod: "a", by: "coild on node-1"},
		{kind: model.EventAllocated, pod: "b"},
		{kind: model.EventReclaimed, pod: "b", by: "coil-controller on ctrl-0"},
		{kind: model.EventAllocated, pod: "c"},
		{kind: model.EventReleased, pod: "c"},
		{kind: model.EventAllocated, pod: "d"},
		{kind: model.EventReclaimed, pod: "d", by: "coil-controller on ctrl-0", block: true},
	}
}

func mustAlloc(t *testing.T, st *model.Store, b model.Block, off int, o model.Owner) model.Address {
	t.Helper()
	a, err := st.AllocateAddress(context.Background(), b, off, o)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAddressHistory(t *testing.T) {
	ctx := context.Background()
	cli := server.Client(t)
	prefix := etcdtest.Prefix(t)
	coild, ctrl, anon := model.New(cli, prefix), model.New(cli, prefix), model.New(cli, prefix)
	coild.SetReleaser(model.Releaser{Component: "coild", Host: "node-1"})
	ctrl.SetReleaser(model.Releaser{Component: "coil-controller", Host: "ctrl-0"})
	start := time.Now()
	b, want := historyScenario(t, coild, ctrl, anon)
	ip, _ := b.AddressAt(1)

	h, err := anon.AddressHistory(ctx, ip)
	if err != nil {
		t.Fatal(err)
	}
	if h.Compacted || h.Initial != nil || h.Pool != "default" || h.Key != fmt.Sprintf("%saddresses/default/0/%d/1", prefix, b.Index) || h.IP != ip {
		t.Errorf("history header = %+v", h)
	}
	checkHistory(t, h, want)
	if got := h.Since(start).Events; len(got) != len(h.Events) {
		t.Errorf("Since(start of test) kept %d of %d events", len(got), len(h.Events))
	}
	if got := h.Since(time.Now().Add(time.Hour)).Events; len(got) != 0 {
		t.Errorf("Since(future) kept %d events", len(got))
	}

	// A free address never allocated has an empty history; an address
	// of no pool is an error.
	unused := netip.AddrFrom4([4]byte{10, 0, 0, byte((b.Index + 1) % 64 * 4)})
	h, err = anon.AddressHistory(ctx, unused)
	if err != nil || len(h.Events) != 0 {
		t.Errorf("history of an unused address = %+v, %v", h, err)
	}
	if _, err := anon.AddressHistory(ctx, netip.MustParseAddr("192.0.2.1")); !errors.Is(err, model.ErrNotFound) {
		t.Errorf("history outside every pool: err = %v, want ErrNotFound", err)
	}
}

// TestAddressHistoryCompacted compacts etcd (its own server: compaction is
// server-wide) in the middle of the address's life.
func TestAddressHistoryCompacted(t *testing.T) {
	ctx := context.Background()
	srv, err := etcdtest.Start(etcdtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cli := srv.Client(t)
	prefix := etcdtest.Prefix(t)
	st := model.New(cli, prefix)
	st.SetReleaser(model.Releaser{Component: "coild", Host: "node-1"})
	p := model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.0.0.0/24", "")}}
	if err := st.CreatePool(ctx, p); err != nil {
		t.Fatal(err)
	}
	owner := func(pod string) model.Owner {
		return model.Owner{Node: "node-1", Namespace: "web", Pod: pod, ContainerID: "c-" + pod, Interface: "eth0"}
	}
	b, _, err := st.AcquireBlock(ctx, "default", owner("first"))
	if err != nil {
		t.Fatal(err)
	}
	a := mustAlloc(t, st, b, 1, owner("a"))
	if err := st.ReleaseAddress(ctx, a); err != nil {
		t.Fatal(err)
	}
	a = mustAlloc(t, st, b, 1, owner("b"))
	rev, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseAddress(ctx, a); err != nil {
		t.Fatal(err)
	}

	ip, _ := b.AddressAt(1)
	h, err := st.AddressHistory(ctx, ip)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Compacted || h.FromRevision != rev {
		t.Errorf("Compacted, FromRevision = %v, %d; want true, %d", h.Compacted, h.FromRevision, rev)
	}
	if h.Initial == nil || h.Initial.Pod != "b" {
		t.Errorf("Initial = %+v, want pod b's record", h.Initial)
	}
	checkHistory(t, h, []historyWant{{kind: model.EventReleased, pod: "b", by: "coild on node-1"}})
}

// BenchmarkReleaseNote measures what the release note adds to a release:
// an allocation and its release, by a store that signs its releases and
// by one that does not, against the embedded etcd.
//
//	go test -run '^$' -bench ReleaseNote -benchtime 300x ./model/
func BenchmarkReleaseNote(b *testing.B) {
	ctx := context.Background()
	for _, signed := range []bool{false, true} {
		name := "unsigned"
		if signed {
			name = "signed"
		}
		b.Run(name, func(b *testing.B) {
			st := model.New(server.Client(b), etcdtest.Prefix(b))
			if signed {
				st.SetReleaser(model.Releaser{Component: "coild", Host: "node-1"})
			}
			p := model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{{IPv4: netip.MustParsePrefix("10.0.0.0/24")}}}
			if err := st.CreatePool(ctx, p); err != nil {
				b.Fatal(err)
			}
			o := model.Owner{Node: "node-1", Namespace: "ns", Pod: "p", ContainerID: "c", Interface: "eth0"}
			blk, _, err := st.AcquireBlock(ctx, "default", o)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				a, err := st.AllocateAddress(ctx, blk, 1, o)
				if err != nil {
					b.Fatal(err)
				}
				if err := st.ReleaseAddress(ctx, a); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
