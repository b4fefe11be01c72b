package model_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestNodeLiveness: the key exists while KeepNodeAlive runs, survives the
// loss of its lease (a new one is granted), and expires with the lease
// once KeepNodeAlive stops.
func TestNodeLiveness(t *testing.T) {
	st, cli := newStore(t)
	ctx := context.Background()
	if alive, err := st.NodeAlive(ctx, "n1"); err != nil || alive {
		t.Fatalf("NodeAlive before any coild = %v, %v", alive, err)
	}
	if _, err := st.NodeAlive(ctx, ""); !errors.Is(err, model.ErrInvalidName) {
		t.Errorf("NodeAlive(\"\") = %v, want ErrInvalidName", err)
	}
	alive := func() bool {
		ok, err := st.NodeAlive(ctx, "n1")
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}

	kctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	states := make(chan bool, 16)
	go func() {
		done <- st.KeepNodeAlive(kctx, "n1", 2*time.Second, 100*time.Millisecond, func(ok bool, _ error) { states <- ok })
	}()
	defer func() { stop(); <-done }()
	testenv.Eventually(t, 10*time.Second, "the liveness key", alive)

	// Someone revokes the lease (an etcd restore, an operator): the key
	// goes, and comes back under a new lease.
	leases, err := cli.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range leases.Leases {
		if _, err := cli.Revoke(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, "the lost lease to be reported", func() bool {
		for {
			select {
			case ok := <-states:
				if !ok {
					return true
				}
			default:
				return false
			}
		}
	})
	testenv.Eventually(t, 10*time.Second, "the liveness key under a new lease", alive)

	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("KeepNodeAlive after cancel = %v, want context.Canceled", err)
	}
	done <- nil // for the deferred wait
	if !alive() {
		t.Fatal("the key was deleted on stop; it must expire with its lease")
	}
	testenv.Eventually(t, 10*time.Second, "the liveness key to expire", func() bool { return !alive() })
}

// TestWatchNodeReleases: releases of the node's addresses by others and
// of its blocks made after the revision are delivered with the record as
// it was; allocations, the node's own releases and other nodes' records
// are not; a compacted revision breaks the watch.
func TestWatchNodeReleases(t *testing.T) {
	st, cli := newStore(t)
	ctx := context.Background()
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.50.0.0/24", "")}}); err != nil {
		t.Fatal(err)
	}
	mine, first, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "n1", ContainerID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	second, err := st.AllocateAddress(ctx, mine, 1, model.Owner{ContainerID: "b"})
	if err != nil {
		t.Fatal(err)
	}
	own, err := st.AllocateAddress(ctx, mine, 3, model.Owner{ContainerID: "e"})
	if err != nil {
		t.Fatal(err)
	}
	theirs, other, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "n2", ContainerID: "c"})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// After rev: an allocation (a put), a release of another node's
	// address, a release of ours, then our block force-released.
	if _, err := st.AllocateAddress(ctx, mine, 2, model.Owner{ContainerID: "d"}); err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseAddress(ctx, other); err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseAddress(ctx, second); err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseOwnAddress(ctx, own); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ForceReleaseBlock(ctx, mine); err != nil {
		t.Fatal(err)
	}
	_ = theirs

	wctx, cancel := context.WithCancel(ctx)
	var got []model.Released
	done := make(chan error, 1)
	go func() {
		done <- st.WatchNodeReleases(wctx, "n1", rev, func(r model.Released) {
			got = append(got, r)
			if r.Block != nil {
				cancel()
			}
		})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("WatchNodeReleases = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("the block release was not delivered")
	}
	// second, then the block (whose remaining addresses, first and d, go
	// with it: the block's release stands for them).
	var addrs []model.Address
	var blocks []model.Block
	for _, r := range got {
		switch {
		case r.Address != nil:
			addrs = append(addrs, *r.Address)
		case r.Block != nil:
			blocks = append(blocks, *r.Block)
		}
	}
	if len(addrs) != 1 || addrs[0].Offset != second.Offset || addrs[0].Revision != second.Revision {
		t.Fatalf("addresses delivered %+v; want %d first, then the block's", addrs, second.Offset)
	}
	if len(blocks) != 1 || blocks[0].ID() != mine.ID() || blocks[0].Revision != mine.Revision || blocks[0].Node != "n1" {
		t.Fatalf("blocks delivered %+v; want %s", blocks, mine.ID())
	}
	for _, a := range addrs {
		if a.Node != "n1" {
			t.Errorf("release of node %s's %v delivered to n1", a.Node, a.IPs())
		}
	}
	_ = first

	t.Run("compacted", func(t *testing.T) {
		now, err := st.Revision(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Compact(ctx, now, clientv3.WithCompactPhysical()); err != nil {
			t.Fatal(err)
		}
		err = st.WatchNodeReleases(ctx, "n1", rev, func(model.Released) {})
		if !errors.Is(err, model.ErrWatchBroken) {
			t.Fatalf("watch from a compacted revision = %v, want ErrWatchBroken", err)
		}
	})
}
