package model_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// gatedKV counts the transactions committed through it and can hold one
// commit until released, so that the writes arriving meanwhile queue up
// behind it and go out as one batch.
type gatedKV struct {
	clientv3.KV
	commits atomic.Int32
	armed   atomic.Bool
	held    chan struct{} // closed once the armed commit waits
	release chan struct{} // closed to let it go
}

func newGatedKV(kv clientv3.KV) *gatedKV {
	return &gatedKV{KV: kv, held: make(chan struct{}), release: make(chan struct{})}
}

func (g *gatedKV) Txn(ctx context.Context) clientv3.Txn {
	return etcdtest.HookTxn(g.KV.Txn(ctx), func(_ []clientv3.Op, commit func() (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
		g.commits.Add(1)
		if g.armed.CompareAndSwap(true, false) {
			close(g.held)
			<-g.release
		}
		return commit()
	})
}

// holdAndQueue runs first with its commit held, then starts each of rest
// once the one before it is queued behind first (so the queue is in the
// order of rest), calls then (when not nil), lets first go, and waits for
// all.
func holdAndQueue(t *testing.T, st *model.Store, kv *gatedKV, first func(), rest []func(), then func()) {
	t.Helper()
	kv.armed.Store(true)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		first()
	}()
	<-kv.held
	for i, f := range rest {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f()
		}()
		waitFor(t, func() bool { return model.QueuedWrites(st) == i+1 })
	}
	if then != nil {
		then()
	}
	close(kv.release)
	wg.Wait()
}

// waitFor polls cond until it holds (a state, not a duration, is awaited).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	if !eventually(cond) {
		t.Fatal("condition not reached")
	}
}

// eventually polls cond until it holds or long enough has passed for
// something to be broken; callable from any goroutine.
func eventually(cond func() bool) bool {
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

func batchOwner(cid string) model.Owner {
	return model.Owner{Node: "n1", Namespace: "ns", Pod: "p-" + cid, ContainerID: cid, Interface: "eth0"}
}

// TestBatchedAllocations queues allocations behind one in flight: they
// go out as one transaction when every compare holds, and when one does
// not, each still gets the answer it would have had alone.
func TestBatchedAllocations(t *testing.T) {
	type req struct {
		off     int
		cid     string
		lost    bool  // in a block the node lost (stale revision)
		wantErr error // nil: allocated to cid
	}
	cases := []struct {
		name   string
		queued []req
		// commits after the held one: 1 for a batch that holds, plus one
		// per write sent again alone.
		commits int32
	}{
		{"all free", []req{{off: 2, cid: "a"}, {off: 3, cid: "b"}, {off: 4, cid: "c"}, {off: 5, cid: "d"}, {off: 6, cid: "e"}}, 1},
		{"one in use", []req{{off: 2, cid: "a"}, {off: 7, cid: "x", wantErr: model.ErrAddressInUse}, {off: 4, cid: "c"}}, 1 + 3},
		{"one in a lost block", []req{{off: 2, cid: "a"}, {off: 3, cid: "b", lost: true, wantErr: model.ErrBlockLost}, {off: 4, cid: "c"}}, 1 + 3},
		// An allocation whose record exists already (a lost answer asked
		// again) fails the batch's compare and is then answered alone.
		{"one already recorded", []req{{off: 2, cid: "a"}, {off: 8, cid: "mine"}}, 1 + 2},
		// Two writes of one key never share a transaction (etcd refuses
		// a duplicate key): the second goes in the next batch.
		{"same address twice", []req{{off: 2, cid: "a"}, {off: 3, cid: "b"}, {off: 2, cid: "twin", wantErr: model.ErrAddressInUse}}, 1 + 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			kv := newGatedKV(server.Client(t).KV)
			st := model.NewWithKV(kv, etcdtest.Prefix(t))
			if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 4, Subnets: []model.Subnet{mustSubnet(t, "10.9.0.0/24", "")}}); err != nil {
				t.Fatal(err)
			}
			b, _, err := st.AcquireBlock(ctx, "default", batchOwner("c0"))
			if err != nil {
				t.Fatal(err)
			}
			// Offset 7 is someone else's, offset 8 already cid mine's.
			if _, err := st.AllocateAddress(ctx, b, 7, batchOwner("other")); err != nil {
				t.Fatal(err)
			}
			mine, err := st.AllocateAddress(ctx, b, 8, batchOwner("mine"))
			if err != nil {
				t.Fatal(err)
			}
			lost := b
			lost.Revision++

			before := kv.commits.Load()
			got := make([]model.Address, len(c.queued))
			errs := make([]error, len(c.queued))
			var rest []func()
			for i, r := range c.queued {
				blk := b
				if r.lost {
					blk = lost
				}
				rest = append(rest, func() { got[i], errs[i] = st.AllocateAddress(ctx, blk, r.off, batchOwner(r.cid)) })
			}
			var firstErr error
			holdAndQueue(t, st, kv, func() { _, firstErr = st.AllocateAddress(ctx, b, 1, batchOwner("first")) }, rest, nil)
			if firstErr != nil {
				t.Fatal(firstErr)
			}
			if n := kv.commits.Load() - before - 1; n != c.commits {
				t.Errorf("%d transactions after the first, want %d", n, c.commits)
			}
			for i, r := range c.queued {
				if r.wantErr != nil {
					if !errors.Is(errs[i], r.wantErr) {
						t.Errorf("%s at %d: err = %v, want %v", r.cid, r.off, errs[i], r.wantErr)
					}
					continue
				}
				if errs[i] != nil {
					t.Errorf("%s at %d: %v", r.cid, r.off, errs[i])
					continue
				}
				if got[i].ContainerID != r.cid || got[i].Offset != r.off {
					t.Errorf("%s at %d: got %+v", r.cid, r.off, got[i])
				}
				if r.cid == "mine" && got[i].Revision != mine.Revision {
					t.Errorf("already recorded: revision %d, want the record's %d", got[i].Revision, mine.Revision)
				}
			}
			// etcd holds exactly what the callers were told, at the
			// revisions they were told.
			recs, err := st.BlockAddresses(ctx, b)
			if err != nil {
				t.Fatal(err)
			}
			byOff := map[int]model.Address{}
			for _, a := range recs {
				byOff[a.Offset] = a
			}
			for i, r := range c.queued {
				rec, ok := byOff[r.off]
				if errs[i] == nil && (!ok || rec.ContainerID != r.cid || rec.Revision != got[i].Revision) {
					t.Errorf("%s at %d: etcd holds %+v (present %v), caller got revision %d", r.cid, r.off, rec, ok, got[i].Revision)
				}
				if errs[i] != nil && ok && rec.ContainerID == r.cid {
					t.Errorf("%s at %d: failed, yet etcd holds it", r.cid, r.off)
				}
			}
		})
	}
}

// TestConcurrentAllocationsCostAtMostOneRequest: n allocations at once
// cost at most n etcd requests, whatever their interleaving.
func TestConcurrentAllocationsCostAtMostOneRequest(t *testing.T) {
	ctx := context.Background()
	kv := &countingKV{KV: server.Client(t).KV}
	st := model.NewWithKV(kv, etcdtest.Prefix(t))
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 6, Subnets: []model.Subnet{mustSubnet(t, "10.10.0.0/24", "")}}); err != nil {
		t.Fatal(err)
	}
	b, _, err := st.AcquireBlock(ctx, "default", batchOwner("c0"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 48
	before := kv.total()
	var wg sync.WaitGroup
	addrs := make([]model.Address, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			addrs[i], errs[i] = st.AllocateAddress(ctx, b, i+1, batchOwner(fmt.Sprint("c", i+1)))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if got := kv.total() - before; got > n {
		t.Errorf("%d concurrent allocations cost %d etcd requests, want at most %d", n, got, n)
	}
	recs, err := st.BlockAddresses(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != n+1 {
		t.Errorf("%d records, want %d", len(recs), n+1)
	}
}

// TestBatchedReleasesKeepHistory: releases sent as one transaction each
// leave a history naming their releaser, the node's coild.
func TestBatchedReleasesKeepHistory(t *testing.T) {
	ctx := context.Background()
	cli := server.Client(t)
	kv := newGatedKV(cli.KV)
	cli.KV = kv
	st := model.New(cli, etcdtest.Prefix(t))
	st.SetReleaser(model.Releaser{Component: "coild", Host: "n1"})
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 4, Subnets: []model.Subnet{mustSubnet(t, "10.11.0.0/24", "")}}); err != nil {
		t.Fatal(err)
	}
	b, _, err := st.AcquireBlock(ctx, "default", batchOwner("c0"))
	if err != nil {
		t.Fatal(err)
	}
	var addrs []model.Address
	for i := 1; i <= 6; i++ {
		addrs = append(addrs, mustAlloc(t, st, b, i, batchOwner(fmt.Sprint("c", i))))
	}
	// A release of a record re-allocated since (its revision is stale)
	// fails the batch; it and the others are then answered alone.
	stale := addrs[5]
	if err := st.ReleaseOwnAddress(ctx, stale); err != nil {
		t.Fatal(err)
	}
	addrs[5] = mustAlloc(t, st, b, 6, batchOwner("c6-again"))

	before := kv.commits.Load()
	errs := make([]error, len(addrs))
	var rest []func()
	for i := 1; i < 5; i++ {
		rest = append(rest, func() { errs[i] = st.ReleaseOwnAddress(ctx, addrs[i]) })
	}
	holdAndQueue(t, st, kv, func() { errs[0] = st.ReleaseOwnAddress(ctx, addrs[0]) }, rest, nil)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if n := kv.commits.Load() - before; n != 2 {
		t.Errorf("5 releases, the last 4 queued, took %d transactions, want 2", n)
	}
	// Then a batch with the stale release in it.
	kv.held, kv.release = make(chan struct{}), make(chan struct{})
	a7 := mustAlloc(t, st, b, 7, batchOwner("c7"))
	a8 := mustAlloc(t, st, b, 8, batchOwner("c8"))
	var staleErr, err8 error
	holdAndQueue(t, st, kv, func() { errs[0] = st.ReleaseOwnAddress(ctx, a7) },
		[]func(){func() { staleErr = st.ReleaseOwnAddress(ctx, stale) }, func() { err8 = st.ReleaseOwnAddress(ctx, a8) }}, nil)
	if errs[0] != nil || err8 != nil {
		t.Fatal(errs[0], err8)
	}
	if !errors.Is(staleErr, model.ErrNotOwner) {
		t.Errorf("stale release = %v, want ErrNotOwner", staleErr)
	}

	for _, a := range append(addrs[:5], a7, a8) {
		h, err := st.AddressHistory(ctx, a.IPv4)
		if err != nil {
			t.Fatal(err)
		}
		checkHistory(t, h, []historyWant{
			{kind: model.EventAllocated, pod: a.Pod},
			{kind: model.EventReleased, pod: a.Pod, by: "coild on n1"},
		})
	}
	if recs, err := st.BlockAddresses(ctx, b); err != nil || len(recs) != 2 {
		t.Errorf("left in the block: %+v, %v; want the block's first address and c6-again's", recs, err)
	}
}

// TestQueuedWriteGivesUp: a write whose caller gives up while it waits
// for the one in flight is not sent, and says etcd did not answer.
func TestQueuedWriteGivesUp(t *testing.T) {
	ctx := context.Background()
	kv := newGatedKV(server.Client(t).KV)
	st := model.NewWithKV(kv, etcdtest.Prefix(t))
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 4, Subnets: []model.Subnet{mustSubnet(t, "10.12.0.0/24", "")}}); err != nil {
		t.Fatal(err)
	}
	b, _, err := st.AcquireBlock(ctx, "default", batchOwner("c0"))
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	var gaveUp error
	holdAndQueue(t, st, kv, func() { _, _ = st.AllocateAddress(ctx, b, 1, batchOwner("first")) },
		[]func(){func() { _, gaveUp = st.AllocateAddress(cctx, b, 2, batchOwner("impatient")) }},
		func() {
			cancel()
			waitFor(t, func() bool { return model.QueuedWrites(st) == 0 })
		})
	if !errors.Is(gaveUp, model.ErrUnavailable) || !errors.Is(gaveUp, context.Canceled) {
		t.Errorf("err = %v, want ErrUnavailable and context.Canceled", gaveUp)
	}
	recs, err := st.BlockAddresses(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range recs {
		if a.ContainerID == "impatient" {
			t.Errorf("the abandoned allocation was written: %+v", a)
		}
	}
}

// lostBatch is a batch of n allocations (b0...) queued behind a held one
// (first), which etcd applied and whose answer was lost.
type lostBatch struct {
	st     *model.Store
	kv     *gatedKV
	b      model.Block
	got    []model.Address
	errs   []error
	before int32 // transactions committed before first's
}

// loseBatchAnswer sets up a store over a KV that can lose answers (wait,
// if not zero, is its outcome wait), takes a block from pool subnet cidr,
// and has a batch of n allocations committed by etcd while the connection
// is cut, its answer lost. With reconnect the connection comes back at
// once; else it stays cut until the batch's writes gave up, and is then
// restored.
func loseBatchAnswer(t *testing.T, cidr string, n int, wait time.Duration, reconnect bool) lostBatch {
	t.Helper()
	ctx := context.Background()
	losing := server.LosingKV(t)
	kv := newGatedKV(losing)
	st := model.NewWithKV(kv, etcdtest.Prefix(t))
	if wait > 0 {
		model.SetOutcomeWait(st, wait)
	}
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 4, Subnets: []model.Subnet{mustSubnet(t, cidr, "")}}); err != nil {
		t.Fatal(err)
	}
	b, _, err := st.AcquireBlock(ctx, "default", batchOwner("c0"))
	if err != nil {
		t.Fatal(err)
	}
	direct := server.Client(t)
	recorded := func() bool {
		resp, err := direct.Get(ctx, st.Prefix()+"addresses/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		// The block's first, first's, and the batch's.
		return err == nil && resp.Count == int64(2+n)
	}
	lb := lostBatch{st: st, kv: kv, b: b, got: make([]model.Address, n), errs: make([]error, n)}
	var rest []func()
	for i := range n {
		rest = append(rest, func() { lb.got[i], lb.errs[i] = st.AllocateAddress(ctx, b, 2+i, batchOwner(fmt.Sprint("b", i))) })
	}
	lb.before = kv.commits.Load()
	cut := make(chan struct{})
	holdAndQueue(t, st, kv, func() { _, _ = st.AllocateAddress(ctx, b, 1, batchOwner("first")) }, rest, func() {
		// The next transaction created is the batch's (first's exists).
		losing.Arm()
		go func() {
			defer close(cut)
			if !eventually(recorded) {
				t.Error("the batch never took effect in etcd")
				return
			}
			losing.Proxy.SetCut(true)
			losing.Proxy.SetDropResponses(false)
			if reconnect {
				losing.Proxy.SetCut(false)
			}
		}()
	})
	<-cut
	losing.Proxy.SetCut(false)
	return lb
}

// TestBatchAnswerLost: a batch etcd applied but whose answer was lost is
// asked again, fails its compares (its writes are there), and each write
// then learns alone that its record is there: every caller gets its
// address, the one etcd holds.
func TestBatchAnswerLost(t *testing.T) {
	ctx := context.Background()
	lb := loseBatchAnswer(t, "10.13.0.0/24", 3, 0, true)
	st, kv, b, got, errs := lb.st, lb.kv, lb.b, lb.got, lb.errs
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// first's, the batch, the batch asked again, and each write alone.
	if n := kv.commits.Load() - lb.before; n != 1+1+1+3 {
		t.Errorf("%d transactions, want 6: the answer was not lost, or not settled write by write", n)
	}
	recs, err := st.BlockAddresses(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	byCID := map[string]model.Address{}
	for _, a := range recs {
		byCID[a.ContainerID] = a
	}
	for i, a := range got {
		rec, ok := byCID[fmt.Sprint("b", i)]
		if !ok || rec.Offset != a.Offset || rec.Revision != a.Revision {
			t.Errorf("b%d: caller got offset %d revision %d, etcd holds %+v (present %v)", i, a.Offset, a.Revision, rec, ok)
		}
		if a.Revision != got[0].Revision {
			t.Errorf("b%d committed at revision %d, b0 at %d: not one transaction", i, a.Revision, got[0].Revision)
		}
	}
}

// TestBatchOutcomeUnknown: when etcd does not tell what became of a batch,
// every write in it says so (ErrOutcomeUnknown), and asking again alone
// settles each.
func TestBatchOutcomeUnknown(t *testing.T) {
	ctx := context.Background()
	// Cut until the writes gave up asking.
	lb := loseBatchAnswer(t, "10.14.0.0/24", 2, 300*time.Millisecond, false)
	st, b, errs := lb.st, lb.b, lb.errs
	for i, err := range errs {
		if !errors.Is(err, model.ErrOutcomeUnknown) || !errors.Is(err, model.ErrUnavailable) {
			t.Errorf("b%d: err = %v, want ErrOutcomeUnknown and ErrUnavailable", i, err)
		}
		// Asked again (the allocator does it on the container's next
		// request), the write finds its record.
		a, err := st.AllocateAddress(ctx, b, 2+i, batchOwner(fmt.Sprint("b", i)))
		if err != nil || a.ContainerID != fmt.Sprint("b", i) {
			t.Errorf("b%d asked again: %+v, %v", i, a, err)
		}
	}
}
