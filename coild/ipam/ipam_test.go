package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/coild/ipam"
	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

var server *etcdtest.Server

func TestMain(m *testing.M) {
	os.Exit(etcdtest.Main(m, func(s *etcdtest.Server) { server = s }))
}

func setup(t *testing.T, pool, cidr, cidr6 string, bits int) (*model.Store, *clientv3.Client) {
	t.Helper()
	cli := server.Client(t)
	st := model.New(cli, etcdtest.Prefix(t))
	ctx := context.Background()
	if err := st.Init(ctx); err != nil {
		t.Fatal(err)
	}
	sub, err := model.ParseSubnet(cidr, cidr6)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreatePool(ctx, model.Pool{Name: pool, BlockSizeBits: bits, Subnets: []model.Subnet{sub}}); err != nil {
		t.Fatal(err)
	}
	return st, cli
}

func restored(t *testing.T, st *model.Store, node string, obs ipam.Observer) *ipam.Allocator {
	t.Helper()
	a := ipam.New(st, node, obs)
	if err := a.Restore(context.Background()); err != nil {
		t.Fatal(err)
	}
	return a
}

func owner(cid string) model.Owner {
	return model.Owner{Namespace: "ns", Pod: "pod-" + cid, ContainerID: cid, Interface: "eth0"}
}

// Eight nodes race for a pool too small for all their pods: nothing is
// handed out twice, losers get ErrPoolExhausted, and etcd holds exactly
// what was handed out.
func TestEightNodesExhaustPool(t *testing.T) {
	const nodes, perNode, workers = 8, 250, 10
	st, cli := setup(t, "default", "10.10.0.0/24", "", 3) // 32 blocks of 8
	ctx := context.Background()

	type result struct {
		node string
		addr model.Address
		err  error
	}
	results := make(chan result, nodes*perNode)
	allocs := make([]*ipam.Allocator, nodes)
	var wg sync.WaitGroup
	for n := range nodes {
		name := fmt.Sprintf("node%d", n)
		allocs[n] = restored(t, st, name, nil)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < perNode; i += workers {
					a, err := allocs[n].Allocate(ctx, "default", owner(fmt.Sprintf("%s-c%d", name, i)))
					results <- result{name, a, err}
				}
			}()
		}
	}
	wg.Wait()
	close(results)

	seen := map[netip.Addr]string{}
	failed := map[string]int{}
	successes := 0
	for r := range results {
		if r.err != nil {
			if !errors.Is(r.err, model.ErrPoolExhausted) {
				t.Fatalf("%s: unexpected error %v", r.node, r.err)
			}
			failed[r.node]++
			continue
		}
		if prev, dup := seen[r.addr.IPv4]; dup {
			t.Fatalf("%s handed to %s and %s", r.addr.IPv4, prev, r.node)
		}
		seen[r.addr.IPv4] = r.node
		successes++
	}
	if successes > 256 || len(failed) == 0 {
		t.Fatalf("successes = %d, failing nodes = %v", successes, failed)
	}

	// Every block is owned by exactly one node, and etcd holds exactly the
	// addresses handed out, each in a block of the node that got it.
	blocks, err := st.ListBlocks(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 32 {
		t.Fatalf("%d blocks owned after exhaustion, want all 32", len(blocks))
	}
	blockOwner := map[string]string{}
	for _, b := range blocks {
		blockOwner[b.ID()] = b.Node
	}
	resp, err := cli.Get(ctx, st.Prefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	addrKeys := 0
	for _, kv := range resp.Kvs {
		k := strings.TrimPrefix(string(kv.Key), st.Prefix())
		switch {
		case k == "schema", strings.HasPrefix(k, "pools/"), strings.HasPrefix(k, "blocks/"), strings.HasPrefix(k, "nodeblocks/"):
		case strings.HasPrefix(k, "addresses/"):
			addrKeys++
		default:
			t.Errorf("unaccounted key %s", kv.Key)
		}
	}
	addrs, err := st.ListAddresses(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	if addrKeys != successes || len(addrs) != successes {
		t.Fatalf("etcd holds %d address keys, %d handed out", addrKeys, successes)
	}
	for _, a := range addrs {
		id := model.Block{Pool: a.Pool, Subnet: a.Subnet, Index: a.Block}.ID()
		if blockOwner[id] != a.Node || seen[a.IPv4] != a.Node {
			t.Errorf("address %s recorded for %s in block of %s, handed to %s", a.IPv4, a.Node, blockOwner[id], seen[a.IPv4])
		}
	}
	// A node that was refused had no free address left in its own blocks.
	for n, a := range allocs {
		name := fmt.Sprintf("node%d", n)
		nb, used := a.Usage()
		if failed[name] > 0 && used != nb*8 {
			t.Errorf("%s was refused with %d of %d addresses of its blocks used", name, used, nb*8)
		}
	}
	t.Logf("%d addresses handed out, %d requests refused over %d nodes", successes, nodes*perNode-successes, len(failed))
}

type recorder struct {
	mu       sync.Mutex
	acquired []string
	released []string
}

func (r *recorder) BlockAcquired(b model.Block) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.acquired = append(r.acquired, b.ID())
}

func (r *recorder) BlockReleased(b model.Block) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.released = append(r.released, b.ID())
}

// Concurrent requests on one node take only the blocks they need.
func TestSingleFlightBlocks(t *testing.T) {
	st, _ := setup(t, "default", "10.11.0.0/20", "", 4) // blocks of 16
	rec := &recorder{}
	a := restored(t, st, "n1", rec)
	var wg sync.WaitGroup
	addrs := make([]model.Address, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ad, err := a.Allocate(context.Background(), "default", owner(strconv.Itoa(i)))
			if err != nil {
				t.Error(err)
			}
			addrs[i] = ad
		}()
	}
	wg.Wait()
	distinct := map[netip.Addr]bool{}
	for _, ad := range addrs {
		distinct[ad.IPv4] = true
	}
	if len(distinct) != 100 {
		t.Fatalf("%d distinct addresses for 100 containers", len(distinct))
	}
	if nb, _ := a.Usage(); nb != 7 || len(rec.acquired) != 7 {
		t.Fatalf("%d blocks acquired (observer saw %d), want 7", nb, len(rec.acquired))
	}
}

func TestIdempotentRotatingRelease(t *testing.T) {
	ctx := context.Background()
	st, _ := setup(t, "dual", "10.12.0.0/28", "fd12::/124", 2)
	a := restored(t, st, "n1", nil)
	first, err := a.Allocate(ctx, "dual", owner("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if !first.IPv4.IsValid() || !first.IPv6.IsValid() {
		t.Fatalf("dual-stack pool gave %v", first.IPs())
	}
	again, err := a.Allocate(ctx, "dual", owner("c1"))
	if err != nil || again.IPv4 != first.IPv4 {
		t.Fatalf("second ADD of same container = %v, %v; want %s", again.IPv4, err, first.IPv4)
	}
	if _, ok, err := a.Release(ctx, api.Attachment{ContainerID: "c1", Interface: "eth0"}); err != nil || !ok {
		t.Fatalf("release = %v %v", ok, err)
	}
	if _, ok, err := a.Release(ctx, api.Attachment{ContainerID: "c1", Interface: "eth0"}); err != nil || ok {
		t.Fatalf("second release = %v %v, want nothing released and no error", ok, err)
	}
	next, err := a.Allocate(ctx, "dual", owner("c2"))
	if err != nil {
		t.Fatal(err)
	}
	if next.IPv4 == first.IPv4 {
		t.Fatalf("freed address %s handed out again at once", first.IPv4)
	}
	if _, err := a.Allocate(ctx, "nope", owner("c3")); !errors.Is(err, model.ErrPoolNotFound) {
		t.Fatalf("unknown pool = %v", err)
	}
}

// A restarted coild restores its memory from etcd and hands out no duplicate.
func TestRestoreAfterRestart(t *testing.T) {
	ctx := context.Background()
	st, _ := setup(t, "default", "10.13.0.0/26", "", 3)
	a1 := restored(t, st, "n1", nil)
	before := map[string]netip.Addr{}
	for i := range 20 {
		ad, err := a1.Allocate(ctx, "default", owner(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		before[strconv.Itoa(i)] = ad.IPv4
	}
	a2 := ipam.New(st, "n1", nil)
	if _, err := a2.Allocate(ctx, "default", owner("x")); !errors.Is(err, ipam.ErrNotRestored) {
		t.Fatalf("allocate before restore = %v", err)
	}
	if err := a2.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	for cid, ip := range before {
		ad, ok := a2.Lookup(api.Attachment{ContainerID: cid, Interface: "eth0"})
		if !ok || ad.IPv4 != ip {
			t.Fatalf("after restart %s has %v, want %s", cid, ad.IPv4, ip)
		}
	}
	used := map[netip.Addr]bool{}
	for _, ip := range before {
		used[ip] = true
	}
	for i := 20; i < 40; i++ {
		ad, err := a2.Allocate(ctx, "default", owner(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		if used[ad.IPv4] {
			t.Fatalf("%s handed out twice across a restart", ad.IPv4)
		}
		used[ad.IPv4] = true
	}
	if nb, _ := a2.Usage(); nb != 5 {
		t.Fatalf("%d blocks for 40 addresses of blocks of 8, want 5", nb)
	}
}

func TestReleaseEmptyBlocks(t *testing.T) {
	ctx := context.Background()
	st, _ := setup(t, "default", "10.14.0.0/28", "", 2)
	rec := &recorder{}
	a := restored(t, st, "n1", rec)
	if _, err := a.Allocate(ctx, "default", owner("c1")); err != nil {
		t.Fatal(err)
	}
	if rel, err := a.ReleaseEmptyBlocks(ctx, 0); err != nil || len(rel) != 0 {
		t.Fatalf("released a block in use: %v %v", rel, err)
	}
	if _, _, err := a.Release(ctx, api.Attachment{ContainerID: "c1", Interface: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if rel, err := a.ReleaseEmptyBlocks(ctx, time.Hour); err != nil || len(rel) != 0 {
		t.Fatalf("released a block before its grace period: %v %v", rel, err)
	}
	rel, err := a.ReleaseEmptyBlocks(ctx, 0)
	if err != nil || len(rel) != 1 || len(rec.released) != 1 {
		t.Fatalf("ReleaseEmptyBlocks = %v, %v (observer %v)", rel, err, rec.released)
	}
	if blocks, _ := st.ListBlocks(ctx, "default"); len(blocks) != 0 {
		t.Fatalf("etcd still holds %v", blocks)
	}
	checkFresh(t, a)
}

// checkFresh fails t if the allocator's count of blocks with never-used
// addresses is off (reserveLocked would then pass over fresh addresses).
func checkFresh(t *testing.T, a *ipam.Allocator) {
	t.Helper()
	if m := ipam.FreshMiscount(a); m != "" {
		t.Fatal(m)
	}
}

// A block reclaimed behind the node's back (node thought dead) is dropped
// and allocation moves to a fresh block.
func TestBlockLost(t *testing.T) {
	ctx := context.Background()
	st, _ := setup(t, "default", "10.15.0.0/28", "", 2)
	rec := &recorder{}
	a := restored(t, st, "n1", rec)
	first, err := a.Allocate(ctx, "default", owner("c1"))
	if err != nil {
		t.Fatal(err)
	}
	blocks, _ := st.NodeBlocks(ctx, "n1")
	if _, err := st.ForceReleaseBlock(ctx, blocks[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Allocate(ctx, "default", owner("c2")); err != nil {
		t.Fatal(err)
	}
	if len(rec.released) != 1 || len(rec.acquired) != 2 {
		t.Fatalf("observer saw acquired %v released %v", rec.acquired, rec.released)
	}
	if _, ok := a.Lookup(api.Attachment{ContainerID: "c1", Interface: "eth0"}); ok {
		t.Fatalf("container c1 still holds %s from the reclaimed block", first.IPv4)
	}
	checkFresh(t, a)
}

// A released address is handed out again only after every address freed
// before it, or never used, in any block of the node: a pod's address must
// not go to the next pod at once (conntrack entries and egress NAT state
// of the old pod would still match it). After a restart the rotation of a
// block resumes after its most recently allocated address.
func TestReuseOrder(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name string
		bits int
		// allocate these containers in order first, then release these.
		allocate, release []string
		// before the restart (if restart is set), allocate these and
		// release these too.
		allocate2, release2 []string
		restart             bool
		// the addresses (last octet) the next allocations get, in order.
		want []int
	}{{
		name:     "a freed address of the first block, otherwise full, waits for the never used ones of the next",
		bits:     2,
		allocate: []string{"c0", "c1", "c2", "c3", "c4"},
		release:  []string{"c2", "c1"},
		want:     []int{5, 6, 7, 2, 1, 8},
	}, {
		name:     "freed addresses come back oldest first across blocks",
		bits:     2,
		allocate: []string{"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"},
		release:  []string{"c6", "c1", "c4"},
		want:     []int{6, 1, 4, 8},
	}, {
		name:      "after a restart the rotation resumes after the newest address, not the highest offset",
		bits:      3,
		allocate:  []string{"c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"},
		release:   []string{"c0", "c1"},
		allocate2: []string{"d0"}, // takes 10.x.0.0, the newest record
		release2:  []string{"c7"}, // freed just before the restart
		restart:   true,
		want:      []int{1, 7, 8},
	}}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, _ := setup(t, "default", fmt.Sprintf("10.16.%d.0/24", i), "", c.bits)
			a := restored(t, st, "n1", nil)
			run := func(alloc, rel []string) {
				for _, cid := range alloc {
					if _, err := a.Allocate(ctx, "default", owner(cid)); err != nil {
						t.Fatal(err)
					}
				}
				for _, cid := range rel {
					if _, ok, err := a.Release(ctx, api.Attachment{ContainerID: cid, Interface: "eth0"}); err != nil || !ok {
						t.Fatalf("release %s = %v, %v", cid, ok, err)
					}
				}
			}
			run(c.allocate, c.release)
			checkFresh(t, a)
			run(c.allocate2, c.release2)
			if c.restart {
				a = restored(t, st, "n1", nil)
			}
			checkFresh(t, a)
			var got []int
			for j := range c.want {
				ad, err := a.Allocate(ctx, "default", owner(fmt.Sprintf("new%d", j)))
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, int(ad.IPv4.As4()[3]))
			}
			if fmt.Sprint(got) != fmt.Sprint(c.want) {
				t.Fatalf("addresses handed out (last octet) %v, want %v", got, c.want)
			}
			checkFresh(t, a)
		})
	}
}

// TestFullPoolWaitsForHeldAddress: DEL frees an address only once its
// old veth is gone (ReleaseHeld), after answering; an ADD arriving in a
// full pool meanwhile waits for that address rather than failing with
// ErrPoolExhausted and being retried by the runtime seconds later. With
// nothing held, a full pool fails at once, and the wait is bounded.
func TestFullPoolWaitsForHeldAddress(t *testing.T) {
	st, _ := setup(t, "default", "10.12.0.0/30", "", 2) // one block of 4
	a := restored(t, st, "n1", nil)
	ctx := context.Background()
	got := map[string]model.Address{}
	for i := range 4 {
		cid := fmt.Sprintf("c%d", i)
		ad, err := a.Allocate(ctx, "default", owner(cid))
		if err != nil {
			t.Fatal(err)
		}
		got[cid] = ad
	}
	if _, err := a.Allocate(ctx, "default", owner("full")); !errors.Is(err, model.ErrPoolExhausted) {
		t.Fatalf("allocation in a full pool with nothing held = %v, want ErrPoolExhausted", err)
	}

	addr, released, free, err := a.ReleaseHeld(ctx, api.Attachment{ContainerID: "c0", Interface: "eth0"})
	if err != nil || !released {
		t.Fatalf("ReleaseHeld = %v, %v", released, err)
	}
	done := make(chan error, 1)
	var next model.Address
	go func() {
		var err error
		next, err = a.Allocate(ctx, "default", owner("c4"))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("allocation returned (%v) while the only free address was still held", err)
	case <-time.After(100 * time.Millisecond):
	}
	free()
	if err := <-done; err != nil {
		t.Fatalf("allocation after the held address was freed = %v", err)
	}
	if next.IPv4 != addr.IPv4 {
		t.Errorf("allocation got %s, want the freed %s", next.IPv4, addr.IPv4)
	}

	// A hold that outlives the request: the request's end ends the wait
	// with the pool's error.
	_, _, free1, err := a.ReleaseHeld(ctx, api.Attachment{ContainerID: "c1", Interface: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	defer free1()
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := a.Allocate(short, "default", owner("c5")); !errors.Is(err, model.ErrPoolExhausted) {
		t.Errorf("allocation while an address is held past the request's deadline = %v, want ErrPoolExhausted", err)
	}
}
