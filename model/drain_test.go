package model_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// hookKV calls beforeCommit with the keys a transaction puts, just before
// it is sent: a test can commit something else between a writer's reads
// and its commit.
type hookKV struct {
	clientv3.KV
	beforeCommit func(puts []string)
}

func (k *hookKV) Txn(ctx context.Context) clientv3.Txn {
	return &hookTxn{Txn: k.KV.Txn(ctx), hook: k.beforeCommit}
}

type hookTxn struct {
	clientv3.Txn
	hook func([]string)
	puts []string
}

func (t *hookTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }
func (t *hookTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}
func (t *hookTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	for _, op := range ops {
		if op.IsPut() {
			t.puts = append(t.puts, string(op.KeyBytes()))
		}
	}
	t.Txn = t.Txn.Then(ops...)
	return t
}
func (t *hookTxn) Commit() (*clientv3.TxnResponse, error) {
	if t.hook != nil {
		t.hook(t.puts)
	}
	return t.Txn.Commit()
}

// blockSubnet returns the subnet position of a block key, or -1.
func blockSubnet(prefix, key string) int {
	rest, ok := strings.CutPrefix(key, prefix+"blocks/")
	if !ok {
		return -1
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 {
		return -1
	}
	n, err := strconv.Atoi(parts[1])
	if err != nil {
		return -1
	}
	return n
}

func twoSubnetPool(t *testing.T, st *model.Store, name string) model.Pool {
	t.Helper()
	p := model.Pool{Name: name, BlockSizeBits: 2, Subnets: []model.Subnet{
		mustSubnet(t, "10.20.0.0/28", ""), mustSubnet(t, "10.20.1.0/28", ""),
	}}
	if err := st.CreatePool(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	return p
}

// A node that read the pool before a drain committed, and commits its
// acquisition right after, must not get a block of the drained subnet: its
// compare on the pool fails and it picks again on the drained pool.
func TestDrainWhileAcquiring(t *testing.T) {
	for _, whole := range []bool{false, true} {
		t.Run(fmt.Sprintf("whole-pool=%v", whole), func(t *testing.T) {
			ctx := context.Background()
			admin, cli := newStore(t)
			p := twoSubnetPool(t, admin, "p")
			var drainedSubnet atomic.Int64
			drainedSubnet.Store(-1)
			var fired atomic.Bool
			kv := &hookKV{KV: cli.KV}
			kv.beforeCommit = func(puts []string) {
				if len(puts) == 0 || fired.Load() {
					return
				}
				sub := blockSubnet(admin.Prefix(), puts[0])
				if sub < 0 {
					return
				}
				fired.Store(true)
				// The drain commits between the node's reads and its commit.
				var prefix netip.Prefix
				if !whole {
					prefix = p.Subnets[sub].IPv4
				}
				changed, err := admin.SetDrained(ctx, "p", prefix, true)
				if err != nil || !changed {
					t.Errorf("drain: %v, %v", changed, err)
				}
				drainedSubnet.Store(int64(sub))
			}
			node := model.NewWithKV(kv, admin.Prefix())
			b, _, err := node.AcquireBlock(ctx, "p", model.Owner{Node: "n1", ContainerID: "c1", Interface: "eth0"})
			if !fired.Load() {
				t.Fatal("the acquisition never reached its commit")
			}
			sub := int(drainedSubnet.Load())
			if whole {
				if !errors.Is(err, model.ErrPoolExhausted) || !errors.Is(err, model.ErrDrained) {
					t.Fatalf("AcquireBlock in a pool drained meanwhile = %v, %v; want ErrPoolExhausted and ErrDrained", b, err)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if b.Subnet == sub {
					t.Fatalf("got block %s of subnet %d, drained before the acquisition committed", b, sub)
				}
			}
			blocks, err := admin.ListBlocks(ctx, "p")
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range blocks {
				if b.Subnet == sub || whole {
					t.Errorf("block %s created in drained subnet %d", b, sub)
				}
			}
		})
	}
}

// Many nodes acquire while a drain commits: every block of the drained
// subnet was created before the drain's revision, and the acquisitions
// after it go to the other subnet.
func TestDrainUnderConcurrentAcquisitions(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	p := model.Pool{Name: "busy", BlockSizeBits: 0, Subnets: []model.Subnet{
		mustSubnet(t, "10.30.0.0/24", ""), mustSubnet(t, "10.30.1.0/24", ""),
	}}
	if err := st.CreatePool(ctx, p); err != nil {
		t.Fatal(err)
	}
	const nodes, perNode = 6, 20
	var wg sync.WaitGroup
	var acquired atomic.Int64
	start := make(chan struct{})
	third := make(chan struct{})
	for n := range nodes {
		wg.Go(func() {
			<-start
			for i := range perNode {
				_, _, err := st.AcquireBlock(ctx, "busy", model.Owner{Node: fmt.Sprintf("n%d", n), ContainerID: fmt.Sprintf("c%d", i), Interface: "eth0"})
				if err != nil {
					t.Errorf("node %d: %v", n, err)
					return
				}
				if acquired.Add(1) == nodes*perNode/3 {
					close(third)
				}
			}
		})
	}
	close(start)
	<-third // drain in the middle of it
	if _, err := st.SetDrained(ctx, "busy", p.Subnets[0].IPv4, true); err != nil {
		t.Fatal(err)
	}
	_, drainRev, err := st.GetPool(ctx, "busy")
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	blocks, err := st.ListBlocks(ctx, "busy")
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != nodes*perNode {
		t.Fatalf("%d blocks, want %d", len(blocks), nodes*perNode)
	}
	var before, after int
	for _, b := range blocks {
		switch {
		case b.Subnet == 0 && b.Revision > drainRev:
			t.Errorf("block %s of the drained subnet created at revision %d, after the drain (%d)", b, b.Revision, drainRev)
		case b.Revision > drainRev:
			after++
		default:
			before++
		}
	}
	t.Logf("%d blocks before the drain, %d after", before, after)
	if before == 0 || after == 0 {
		t.Fatalf("the drain did not commit amid the acquisitions (%d before, %d after)", before, after)
	}
}

func TestDrainUndrain(t *testing.T) {
	ctx := context.Background()
	st, cli := newStore(t)
	p := twoSubnetPool(t, st, "d")
	s0, s1 := p.Subnets[0].IPv4, p.Subnets[1].IPv4
	steps := []struct {
		name        string
		subnet      netip.Prefix
		drain       bool
		wantChanged bool
		wantErr     error
		// state after: pool drained, subnet 0 drained, subnet 1 drained
		want [3]bool
	}{
		{"drain subnet", s0, true, true, nil, [3]bool{false, true, false}},
		{"drain it again", s0, true, false, nil, [3]bool{false, true, false}},
		{"unknown subnet", netip.MustParsePrefix("10.99.0.0/28"), true, false, model.ErrSubnetNotFound, [3]bool{false, true, false}},
		{"not the subnet's prefix", netip.MustParsePrefix("10.20.0.0/29"), true, false, model.ErrSubnetNotFound, [3]bool{false, true, false}},
		{"undrain the other, not drained", s1, false, false, nil, [3]bool{false, true, false}},
		{"drain pool", netip.Prefix{}, true, true, nil, [3]bool{true, true, false}},
		{"undrain pool clears all", netip.Prefix{}, false, true, nil, [3]bool{false, false, false}},
		{"undrain pool again", netip.Prefix{}, false, false, nil, [3]bool{false, false, false}},
	}
	for _, s := range steps {
		before := dump(t, cli, st.Prefix())
		changed, err := st.SetDrained(ctx, "d", s.subnet, s.drain)
		if !errors.Is(err, s.wantErr) || changed != s.wantChanged {
			t.Fatalf("%s: SetDrained = %v, %v; want %v, %v", s.name, changed, err, s.wantChanged, s.wantErr)
		}
		if !changed && fmt.Sprint(dump(t, cli, st.Prefix())) != fmt.Sprint(before) {
			t.Fatalf("%s: nothing to change, but etcd changed", s.name)
		}
		got, _, err := st.GetPool(ctx, "d")
		if err != nil {
			t.Fatal(err)
		}
		if st := [3]bool{got.Drained, got.Subnets[0].Drained, got.Subnets[1].Drained}; st != s.want {
			t.Fatalf("%s: drained (pool, subnet 0, subnet 1) = %v, want %v", s.name, st, s.want)
		}
	}
	if _, err := st.SetDrained(ctx, "nope", netip.Prefix{}, true); !errors.Is(err, model.ErrPoolNotFound) {
		t.Fatalf("drain unknown pool = %v", err)
	}

	// A drained subnet gives no blocks; the other does until it is full.
	if _, err := st.SetDrained(ctx, "d", s0, true); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		b, _, err := st.AcquireBlock(ctx, "d", model.Owner{Node: "n1", ContainerID: strconv.Itoa(i), Interface: "eth0"})
		if i == 4 {
			if !errors.Is(err, model.ErrPoolExhausted) || !errors.Is(err, model.ErrDrained) {
				t.Fatalf("fifth acquisition = %v, want exhausted because drained", err)
			}
			break
		}
		if err != nil || b.Subnet != 1 {
			t.Fatalf("acquisition %d = %v, %v; want a block of subnet 1", i, b, err)
		}
	}
	// Undrained, the subnet gives blocks again.
	if _, err := st.SetDrained(ctx, "d", s0, false); err != nil {
		t.Fatal(err)
	}
	if b, _, err := st.AcquireBlock(ctx, "d", model.Owner{Node: "n1", ContainerID: "x", Interface: "eth0"}); err != nil || b.Subnet != 0 {
		t.Fatalf("after undrain = %v, %v", b, err)
	}
}

func TestRemoveSubnet(t *testing.T) {
	ctx := context.Background()
	st, cli := newStore(t)
	p := model.Pool{Name: "r", BlockSizeBits: 2, Subnets: []model.Subnet{
		mustSubnet(t, "10.40.0.0/28", "fd00:40::/124"), mustSubnet(t, "10.40.1.0/28", "fd00:40:1::/124"), mustSubnet(t, "10.40.2.0/28", "fd00:40:2::/124"),
	}}
	if err := st.CreatePool(ctx, p); err != nil {
		t.Fatal(err)
	}
	s0, s1, s2 := p.Subnets[0], p.Subnets[1], p.Subnets[2]
	// Blocks in subnets 0 and 1, owned by two nodes.
	if _, err := st.SetDrained(ctx, "r", s2.IPv4, true); err != nil {
		t.Fatal(err)
	}
	if _, err := st.SetDrained(ctx, "r", s1.IPv4, true); err != nil {
		t.Fatal(err)
	}
	owned := map[string][]model.Block{}
	var held []model.Address
	for i := range 5 {
		node := []string{"n1", "n2"}[i%2]
		if i == 4 {
			// The fifth goes to subnet 1, undrained for it.
			if _, err := st.SetDrained(ctx, "r", s1.IPv4, false); err != nil {
				t.Fatal(err)
			}
			if _, err := st.SetDrained(ctx, "r", s0.IPv4, true); err != nil {
				t.Fatal(err)
			}
		}
		b, a, err := st.AcquireBlock(ctx, "r", model.Owner{Node: node, ContainerID: strconv.Itoa(i), Interface: "eth0"})
		if err != nil {
			t.Fatal(err)
		}
		owned[node] = append(owned[node], b)
		held = append(held, a)
	}

	refusals := []struct {
		name   string
		subnet netip.Prefix
		want   error
	}{
		{"not drained", s1.IPv6, model.ErrNotDrained},
		{"unknown", netip.MustParsePrefix("10.41.0.0/28"), model.ErrSubnetNotFound},
		{"blocks owned", s0.IPv4, model.ErrSubnetInUse},
	}
	for _, r := range refusals {
		before := dump(t, cli, st.Prefix())
		err := st.RemoveSubnet(ctx, "r", r.subnet)
		if !errors.Is(err, r.want) {
			t.Fatalf("%s: RemoveSubnet = %v, want %v", r.name, err, r.want)
		}
		if fmt.Sprint(dump(t, cli, st.Prefix())) != fmt.Sprint(before) {
			t.Fatalf("%s: refused, but etcd changed", r.name)
		}
		if r.want == model.ErrSubnetInUse {
			var inUse *model.SubnetInUseError
			if !errors.As(err, &inUse) || inUse.Nodes["n1"] != 2 || inUse.Nodes["n2"] != 2 || len(inUse.Nodes) != 2 {
				t.Fatalf("in use: %#v", inUse)
			}
			if !strings.Contains(err.Error(), "n1 (2 blocks), n2 (2 blocks)") {
				t.Fatalf("error does not name the nodes: %v", err)
			}
		}
	}
	// The nodes give their blocks of subnet 0 back: it can go.
	for _, a := range held {
		if a.Subnet == 0 {
			if err := st.ReleaseAddress(ctx, a); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, list := range owned {
		for _, b := range list {
			if b.Subnet == 0 {
				if err := st.ReleaseBlock(ctx, b); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if err := st.RemoveSubnet(ctx, "r", s0.IPv6); err != nil {
		t.Fatal(err)
	}
	got, _, err := st.GetPool(ctx, "r")
	if err != nil {
		t.Fatal(err)
	}
	// The place stays: subnet 1's block keys still name position 1.
	if len(got.Subnets) != 3 || !got.Subnets[0].Removed || got.Subnets[1].IPv4 != s1.IPv4 || got.NumBlocks() != 8 {
		t.Fatalf("pool after removing subnet 0: %+v", got)
	}
	if sub, blk, _, ok := got.Locate(held[4].IPv4); !ok || sub != 1 || blk != held[4].Block {
		t.Fatalf("Locate(%s) = %d %d %v", held[4].IPv4, sub, blk, ok)
	}
	if _, _, _, ok := got.Locate(netip.MustParseAddr("10.40.0.1")); ok {
		t.Fatal("an address of the removed subnet is still located in the pool")
	}
	// Subnet 2 (drained, no blocks) is last: removing it drops the place,
	// and a subnet added later takes it.
	if err := st.RemoveSubnet(ctx, "r", s2.IPv4); err != nil {
		t.Fatal(err)
	}
	if got, _, _ = st.GetPool(ctx, "r"); len(got.Subnets) != 2 {
		t.Fatalf("trailing removed subnet kept: %+v", got.Subnets)
	}
	// The removed prefixes may be used again.
	if err := st.AddSubnet(ctx, "r", s0); err != nil {
		t.Fatal(err)
	}
	if got, _, _ = st.GetPool(ctx, "r"); len(got.Subnets) != 3 || got.Subnets[2].IPv4 != s0.IPv4 {
		t.Fatalf("re-added subnet: %+v", got.Subnets)
	}
	// The only live subnet left cannot go.
	if err := st.RemoveSubnet(ctx, "r", s0.IPv4); !errors.Is(err, model.ErrNotDrained) {
		t.Fatalf("remove undrained = %v", err)
	}
	one := model.Pool{Name: "one", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.42.0.0/28", "")}, Drained: true}
	if err := st.CreatePool(ctx, one); err != nil {
		t.Fatal(err)
	}
	if err := st.RemoveSubnet(ctx, "one", one.Subnets[0].IPv4); !errors.Is(err, model.ErrLastSubnet) {
		t.Fatalf("remove last subnet = %v", err)
	}
}

func TestUsage(t *testing.T) {
	p := model.Pool{Name: "u", BlockSizeBits: 2, Subnets: []model.Subnet{
		mustSubnet(t, "10.50.0.0/28", ""), {Removed: true}, mustSubnet(t, "10.50.1.0/28", ""),
	}}
	p.Subnets[2].Drained = true
	blocks := []model.Block{
		{Pool: "u", Subnet: 0, Index: 0, Node: "a"},
		{Pool: "u", Subnet: 0, Index: 1, Node: "b"},
		{Pool: "u", Subnet: 2, Index: 3, Node: "a"},
		{Pool: "other", Subnet: 0, Index: 2, Node: "a"},
	}
	addrs := []model.Address{
		{Pool: "u", Subnet: 0, Block: 0, Offset: 0},
		{Pool: "u", Subnet: 0, Block: 0, Offset: 1},
		{Pool: "u", Subnet: 0, Block: 1, Offset: 0},
		{Pool: "u", Subnet: 2, Block: 3, Offset: 2},
		{Pool: "other", Subnet: 0, Block: 2, Offset: 0},
	}
	u := p.Usage(blocks, addrs)
	want := model.Capacity{Blocks: 8, BlocksOwned: 3, BlocksFree: 2, Addresses: 32, AddressesInUse: 4, FreeInOwnedBlocks: 8, BlockSize: 4}
	if u.Capacity != want {
		t.Fatalf("pool capacity = %+v, want %+v", u.Capacity, want)
	}
	if u.Usable() != 20 || u.Ratio() != 0.2 {
		t.Fatalf("usable %d ratio %v, want 20 and 0.2", u.Usable(), u.Ratio())
	}
	if len(u.Subnets) != 2 || u.Subnets[0].Index != 0 || u.Subnets[1].Index != 2 || !u.Subnets[1].Drained || u.Subnets[1].BlocksFree != 0 {
		t.Fatalf("subnets: %+v", u.Subnets)
	}
	if r := u.Subnets[1].Ratio(); r != 0.25 {
		t.Fatalf("drained subnet ratio = %v, want 0.25 (1 of its one owned block's 4)", r)
	}
	p.Drained = true
	empty := p.Usage(nil, nil)
	if empty.Usable() != 0 || empty.Ratio() != 0 || empty.BlocksFree != 0 {
		t.Fatalf("drained empty pool: %+v ratio %v", empty, empty.Ratio())
	}
}

// An acquisition whose answer was lost is settled by ClaimBlock; in a
// subnet drained since, the block is the node's only if the lost request
// committed, and is never taken afresh.
func TestClaimBlockInDrainedSubnet(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	p := twoSubnetPool(t, st, "c")
	owner := model.Owner{Node: "n1", ContainerID: "c1", Interface: "eth0"}
	committed, first, err := st.AcquireBlock(ctx, "c", owner)
	if err != nil {
		t.Fatal(err)
	}
	// A block the lost request would have taken, in the same subnet.
	v4, _ := p.BlockPrefixes(committed.Subnet, (committed.Index+1)%4)
	lost := committed
	lost.Index, lost.IPv4, lost.Revision = (committed.Index+1)%4, v4, 0
	lostAddr := first
	lostAddr.Block, lostAddr.IPv4, lostAddr.Revision = lost.Index, v4.Addr(), 0
	if _, err := st.SetDrained(ctx, "c", p.Subnets[committed.Subnet].IPv4, true); err != nil {
		t.Fatal(err)
	}
	b, _, err := st.ClaimBlock(ctx, committed, first)
	if err != nil || b.Revision != committed.Revision {
		t.Fatalf("claim of a block acquired before the drain = %v, %v", b, err)
	}
	if _, _, err := st.ClaimBlock(ctx, lost, lostAddr); !errors.Is(err, model.ErrBlockLost) {
		t.Fatalf("claim of an uncommitted block in a drained subnet = %v, want ErrBlockLost", err)
	}
	blocks, err := st.ListBlocks(ctx, "c")
	if err != nil || len(blocks) != 1 {
		t.Fatalf("blocks after the claims: %v, %v", blocks, err)
	}
}
