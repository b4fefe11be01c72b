package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/coild/ipam"
	"github.com/coil-project/coil/model"
)

// once fails the first AllocateAddress with err, committing it anyway if
// commit is set, and lets the next ones through.
func once(err error, commit bool) func(model.Block, int) (bool, error) {
	done := false
	return func(model.Block, int) (bool, error) {
		if done {
			return false, nil
		}
		done = true
		return commit, err
	}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func att(cid string) api.Attachment { return api.Attachment{ContainerID: cid, Interface: "eth0"} }

// The races etcd decides, played by a fake store: every case starts with
// container "first" holding 10.0.0.0, the first address of the node's
// block 0 (blocks of 4), then changes the store behind the allocator's
// back, allocates for container "new", and checks what a user sees.
func TestAllocatorRaces(t *testing.T) {
	unavailable := fmt.Errorf("commit: %w: context deadline exceeded", model.ErrUnavailable)
	outcomeUnknown := fmt.Errorf("commit: %w: %w: context deadline exceeded", model.ErrOutcomeUnknown, model.ErrUnavailable)
	cases := []struct {
		name string
		bits int // block size bits; 2 unless set
		// before changes the store (and the allocator) before "new" asks.
		before func(t *testing.T, f *fakeStore, a *ipam.Allocator)
		// wantErr is the sentinel the allocation of "new" fails with;
		// want the address it gets when it succeeds.
		wantErr error
		want    netip.Addr
		// after checks what the allocator and the store hold then.
		after func(t *testing.T, f *fakeStore, a *ipam.Allocator, rec *recorder)
	}{{
		name:   "address taken by a record the node did not know of: another one is handed out",
		before: func(_ *testing.T, f *fakeStore, _ *ipam.Allocator) { f.take(0, 1, "stranger") },
		want:   ip("10.0.0.2"),
		after: func(t *testing.T, f *fakeStore, a *ipam.Allocator, _ *recorder) {
			// The taken address stays marked used: the block fills up
			// around it, and the next block is started.
			for i, want := range []string{"10.0.0.3", "10.0.0.4"} {
				got, err := a.Allocate(context.Background(), "default", owner(fmt.Sprintf("more%d", i)))
				if err != nil || got.IPv4 != ip(want) {
					t.Errorf("next allocation = %v, %v; want %s", got.IPv4, err, want)
				}
			}
			if h := f.holders()[ip("10.0.0.1")]; h != "stranger" {
				t.Errorf("10.0.0.1 held by %q, want the stranger still", h)
			}
		},
	}, {
		name:   "block reclaimed behind the node's back: dropped from memory, a new block serves",
		before: func(_ *testing.T, f *fakeStore, _ *ipam.Allocator) { f.reclaim(0, "node2") },
		want:   ip("10.0.0.4"),
		after: func(t *testing.T, _ *fakeStore, a *ipam.Allocator, rec *recorder) {
			if _, ok := a.Lookup(att("first")); ok {
				t.Error(`"first" still holds an address of the lost block`)
			}
			blocks := a.Blocks()["default"]
			if len(blocks) != 1 || blocks[0].Index != 1 {
				t.Errorf("node holds blocks %v, want only block 1", blocks)
			}
			if !slices.Equal(rec.released, []string{"default/0/0"}) || len(rec.acquired) != 2 {
				t.Errorf("observer saw acquired %v released %v", rec.acquired, rec.released)
			}
			if nb, used := a.Usage(); nb != 1 || used != 1 {
				t.Errorf("usage = %d blocks %d addresses, want 1 and 1", nb, used)
			}
		},
	}, {
		name: "etcd unavailable at commit: unavailable, nothing held, a retry succeeds",
		before: func(_ *testing.T, f *fakeStore, _ *ipam.Allocator) {
			f.allocateFails = once(unavailable, false)
		},
		wantErr: model.ErrUnavailable,
		after: func(t *testing.T, f *fakeStore, a *ipam.Allocator, _ *recorder) {
			if _, ok := a.Lookup(att("new")); ok {
				t.Error(`"new" holds an address after a failed allocation`)
			}
			if _, used := a.Usage(); used != 1 {
				t.Errorf("%d addresses in use after a failed commit, want 1", used)
			}
			got, err := a.Allocate(context.Background(), "default", owner("new"))
			if err != nil || got.IPv4 != ip("10.0.0.2") {
				t.Errorf("retry = %v, %v; want 10.0.0.2", got.IPv4, err)
			}
			if h := f.holders(); len(h) != 2 || h[ip("10.0.0.2")] != "new" {
				t.Errorf("store holds %v, want first and new only", h)
			}
		},
	}, {
		name: "outcome unknown, committed: unavailable; the retry gets the committed address, nothing is orphaned",
		before: func(_ *testing.T, f *fakeStore, _ *ipam.Allocator) {
			f.allocateFails = once(outcomeUnknown, true)
		},
		wantErr: model.ErrOutcomeUnknown,
		after: func(t *testing.T, f *fakeStore, a *ipam.Allocator, _ *recorder) {
			// Until settled, the address is not handed to anyone else.
			other, err := a.Allocate(context.Background(), "default", owner("p2"))
			if err != nil || other.IPv4 != ip("10.0.0.2") {
				t.Errorf("another pod got %v, %v; want 10.0.0.2", other.IPv4, err)
			}
			// kubelet retries the ADD: it gets what etcd holds for it.
			got, err := a.Allocate(context.Background(), "default", owner("new"))
			if err != nil || got.IPv4 != ip("10.0.0.1") {
				t.Errorf("retry = %v, %v; want the committed 10.0.0.1", got.IPv4, err)
			}
			if h := f.holders(); len(h) != 3 || h[ip("10.0.0.1")] != "new" {
				t.Errorf("store holds %v", h)
			}
		},
	}, {
		name: "outcome unknown, not committed: the retry commits the same address",
		before: func(_ *testing.T, f *fakeStore, _ *ipam.Allocator) {
			f.allocateFails = once(outcomeUnknown, false)
		},
		wantErr: model.ErrOutcomeUnknown,
		after: func(t *testing.T, f *fakeStore, a *ipam.Allocator, _ *recorder) {
			got, err := a.Allocate(context.Background(), "default", owner("new"))
			if err != nil || got.IPv4 != ip("10.0.0.1") {
				t.Errorf("retry = %v, %v; want 10.0.0.1", got.IPv4, err)
			}
			if h := f.holders(); len(h) != 2 || h[ip("10.0.0.1")] != "new" {
				t.Errorf("store holds %v", h)
			}
		},
	}, {
		name: "outcome unknown, committed, then DEL instead of a retry: the record is deleted, not orphaned",
		before: func(_ *testing.T, f *fakeStore, _ *ipam.Allocator) {
			f.allocateFails = once(outcomeUnknown, true)
		},
		wantErr: model.ErrOutcomeUnknown,
		after: func(t *testing.T, f *fakeStore, a *ipam.Allocator, _ *recorder) {
			if _, ok, err := a.Release(context.Background(), att("new")); err != nil || !ok {
				t.Errorf("release = %v, %v; want the committed address released", ok, err)
			}
			if h := f.holders(); len(h) != 1 {
				t.Errorf("store holds %v, want only first", h)
			}
			if _, used := a.Usage(); used != 1 {
				t.Errorf("%d addresses in use, want 1", used)
			}
		},
	}, {
		name: "block acquisition outcome unknown, committed: the retry adopts the block, none is orphaned",
		before: func(t *testing.T, f *fakeStore, a *ipam.Allocator) {
			for i := 1; i < 4; i++ {
				if _, err := a.Allocate(context.Background(), "default", owner(fmt.Sprintf("p%d", i))); err != nil {
					t.Fatal(err)
				}
			}
			failed := false
			f.acquireFails = func() (bool, error) {
				if failed {
					return false, nil
				}
				failed = true
				return true, fmt.Errorf("acquire block: %w", outcomeUnknown)
			}
		},
		wantErr: model.ErrOutcomeUnknown,
		after: func(t *testing.T, f *fakeStore, a *ipam.Allocator, rec *recorder) {
			got, err := a.Allocate(context.Background(), "default", owner("new"))
			if err != nil || got.IPv4 != ip("10.0.0.4") {
				t.Errorf("retry = %v, %v; want 10.0.0.4 of the block committed before", got.IPv4, err)
			}
			if nb, _ := a.Usage(); nb != 2 || len(rec.acquired) != 2 {
				t.Errorf("%d blocks (observer saw %v), want 2", nb, rec.acquired)
			}
			if blocks, _ := f.NodeBlocks(context.Background(), "node1"); len(blocks) != 2 {
				t.Errorf("store holds %d blocks for the node, want 2", len(blocks))
			}
		},
	}, {
		name: "block acquisition outcome unknown and still unknown: the retry stays unavailable, no second block",
		before: func(t *testing.T, f *fakeStore, a *ipam.Allocator) {
			for i := 1; i < 4; i++ {
				if _, err := a.Allocate(context.Background(), "default", owner(fmt.Sprintf("p%d", i))); err != nil {
					t.Fatal(err)
				}
			}
			f.acquireFails = func() (bool, error) { return true, fmt.Errorf("acquire block: %w", outcomeUnknown) }
			f.claimFails = func() (bool, error) { return false, fmt.Errorf("claim block: %w", outcomeUnknown) }
		},
		wantErr: model.ErrOutcomeUnknown,
		after: func(t *testing.T, f *fakeStore, a *ipam.Allocator, rec *recorder) {
			if _, err := a.Allocate(context.Background(), "default", owner("new")); !errors.Is(err, model.ErrUnavailable) {
				t.Errorf("retry while etcd does not tell = %v, want unavailable", err)
			}
			f.claimFails = nil
			if _, ok, err := a.Release(context.Background(), att("new")); err != nil || !ok {
				t.Errorf("release once etcd answers = %v, %v", ok, err)
			}
			if blocks, _ := f.NodeBlocks(context.Background(), "node1"); len(blocks) != 2 || len(rec.acquired) != 2 {
				t.Errorf("store holds %d blocks, observer saw %v: want the committed block adopted", len(blocks), rec.acquired)
			}
			if h := f.holders(); len(h) != 4 {
				t.Errorf("store holds %v, want first and p1-p3", h)
			}
		},
	}, {
		name: "pool exhausted: the node's blocks full and no free block",
		before: func(t *testing.T, f *fakeStore, a *ipam.Allocator) {
			for i := 1; i < 4; i++ {
				if _, err := a.Allocate(context.Background(), "default", owner(fmt.Sprintf("p%d", i))); err != nil {
					t.Fatal(err)
				}
			}
			for i := 1; i < f.numBlocks(); i++ {
				f.reclaim(i, "node2")
			}
		},
		wantErr: model.ErrPoolExhausted,
		after: func(t *testing.T, _ *fakeStore, a *ipam.Allocator, _ *recorder) {
			if nb, used := a.Usage(); nb != 1 || used != 4 {
				t.Errorf("usage = %d blocks %d addresses, want 1 and 4", nb, used)
			}
			if _, ok := a.Lookup(att("new")); ok {
				t.Error(`"new" holds an address in an exhausted pool`)
			}
		},
	}, {
		name: "etcd unavailable while acquiring a block: unavailable, a retry takes the block",
		before: func(t *testing.T, f *fakeStore, a *ipam.Allocator) {
			for i := 1; i < 4; i++ {
				if _, err := a.Allocate(context.Background(), "default", owner(fmt.Sprintf("p%d", i))); err != nil {
					t.Fatal(err)
				}
			}
			failed := false
			f.acquireFails = func() (bool, error) {
				if failed {
					return false, nil
				}
				failed = true
				return false, fmt.Errorf("acquire block: %w", unavailable)
			}
		},
		wantErr: model.ErrUnavailable,
		after: func(t *testing.T, _ *fakeStore, a *ipam.Allocator, rec *recorder) {
			if nb, _ := a.Usage(); nb != 1 || len(rec.acquired) != 1 {
				t.Errorf("%d blocks (observer saw %v) after a failed acquisition, want 1", nb, rec.acquired)
			}
			got, err := a.Allocate(context.Background(), "default", owner("new"))
			if err != nil || got.IPv4 != ip("10.0.0.4") {
				t.Errorf("retry = %v, %v; want 10.0.0.4", got.IPv4, err)
			}
		},
	}, {
		name: "every address taken behind the node's back: gives up, unavailable",
		bits: 6, // more free addresses in the block than attempts
		before: func(_ *testing.T, f *fakeStore, _ *ipam.Allocator) {
			f.allocateFails = func(b model.Block, off int) (bool, error) {
				return false, fmt.Errorf("allocate offset %d of block %s: %w", off, b.ID(), model.ErrAddressInUse)
			}
		},
		wantErr: model.ErrUnavailable,
		after: func(t *testing.T, _ *fakeStore, a *ipam.Allocator, _ *recorder) {
			if _, ok := a.Lookup(att("new")); ok {
				t.Error(`"new" holds an address after the allocator gave up`)
			}
		},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			bits := c.bits
			if bits == 0 {
				bits = 2
			}
			f := newFakeStore(bits)
			rec := &recorder{}
			a := ipam.New(f, "node1", rec)
			if err := a.Restore(ctx); err != nil {
				t.Fatal(err)
			}
			if first, err := a.Allocate(ctx, "default", owner("first")); err != nil || first.IPv4 != ip("10.0.0.0") {
				t.Fatalf("first allocation = %v, %v", first.IPv4, err)
			}
			c.before(t, f, a)
			got, err := a.Allocate(ctx, "default", owner("new"))
			switch {
			case c.wantErr != nil && !errors.Is(err, c.wantErr):
				t.Fatalf("allocate = %v, %v; want an error matching %v", got.IPv4, err, c.wantErr)
			case c.wantErr == nil && (err != nil || got.IPv4 != c.want):
				t.Fatalf("allocate = %v, %v; want %s", got.IPv4, err, c.want)
			}
			if c.after != nil {
				c.after(t, f, a, rec)
			}
			checkFresh(t, a)
		})
	}
}

// Restore rebuilds the allocator's memory from the store: what was
// allocated is found again and never handed out twice, and a restored
// allocator keeps allocating after the last address it knew of.
func TestRestoreFromStore(t *testing.T) {
	ctx := context.Background()
	f := newFakeStore(2)
	a1 := ipam.New(f, "node1", nil)
	if _, err := a1.Allocate(ctx, "default", owner("x")); !errors.Is(err, ipam.ErrNotRestored) || !errors.Is(err, api.ErrUnavailable) {
		t.Fatalf("allocate before restore = %v, want ErrNotRestored, unavailable", err)
	}
	if err := a1.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	for _, cid := range []string{"c0", "c1"} {
		if _, err := a1.Allocate(ctx, "default", owner(cid)); err != nil {
			t.Fatal(err)
		}
	}
	f.reclaim(1, "node2")

	a2 := ipam.New(f, "node1", nil)
	if err := a2.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	if got, ok := a2.Lookup(att("c1")); !ok || got.IPv4 != ip("10.0.0.1") {
		t.Fatalf("after restore c1 holds %v %v, want 10.0.0.1", got.IPv4, ok)
	}
	for i, want := range []string{"10.0.0.2", "10.0.0.3", "10.0.0.8"} {
		got, err := a2.Allocate(ctx, "default", owner(fmt.Sprintf("n%d", i)))
		if err != nil || got.IPv4 != ip(want) {
			t.Errorf("allocation %d after restore = %v, %v; want %s", i, got.IPv4, err, want)
		}
	}
}
