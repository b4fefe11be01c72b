package model_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func TestPoolLifecycle(t *testing.T) {
	ctx := context.Background()
	st, cli := newStore(t)
	p := model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.0.0.0/24", "")}}
	if err := st.CreatePool(ctx, p); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		do   func() error
		want error
	}{
		{"duplicate name", func() error {
			return st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.1.0.0/24", "")}})
		}, model.ErrPoolExists},
		{"equal subnet", func() error {
			return st.CreatePool(ctx, model.Pool{Name: "b", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.0.0.0/24", "")}})
		}, model.ErrSubnetOverlap},
		{"smaller overlapping subnet", func() error {
			return st.CreatePool(ctx, model.Pool{Name: "b", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.0.0.64/26", "")}})
		}, model.ErrSubnetOverlap},
		{"larger overlapping subnet", func() error {
			return st.CreatePool(ctx, model.Pool{Name: "b", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.0.0.0/16", "")}})
		}, model.ErrSubnetOverlap},
		{"add overlapping subnet", func() error { return st.AddSubnet(ctx, "default", mustSubnet(t, "10.0.0.128/25", "")) }, model.ErrSubnetOverlap},
		{"add to unknown pool", func() error { return st.AddSubnet(ctx, "nope", mustSubnet(t, "10.7.0.0/24", "")) }, model.ErrPoolNotFound},
		{"add subnet of other family", func() error { return st.AddSubnet(ctx, "default", mustSubnet(t, "fd00::/120", "")) }, model.ErrInvalidCIDR},
		{"delete unknown pool", func() error { return st.DeletePool(ctx, "nope") }, model.ErrPoolNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := dump(t, cli, st.Prefix())
			if err := c.do(); !errors.Is(err, c.want) {
				t.Fatalf("error = %v, want %v", err, c.want)
			}
			if after := dump(t, cli, st.Prefix()); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Fatalf("a failed call changed etcd:\nbefore %v\nafter  %v", before, after)
			}
		})
	}

	if err := st.AddSubnet(ctx, "default", mustSubnet(t, "10.0.1.0/24", "")); err != nil {
		t.Fatal(err)
	}
	got, _, err := st.GetPool(ctx, "default")
	if err != nil || len(got.Subnets) != 2 {
		t.Fatalf("GetPool = %+v, %v", got, err)
	}

	// A pool with a block in use cannot be deleted.
	b, a, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "n1", ContainerID: "c1", Interface: "eth0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeletePool(ctx, "default"); !errors.Is(err, model.ErrPoolInUse) {
		t.Fatalf("DeletePool in use = %v", err)
	}
	if err := st.ReleaseAddress(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseBlock(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := st.DeletePool(ctx, "default"); err != nil {
		t.Fatal(err)
	}
	pools, err := st.ListPools(ctx)
	if err != nil || len(pools) != 0 {
		t.Fatalf("ListPools after delete = %v, %v", pools, err)
	}
}

// dump returns every key and value under prefix except the schema key.
func dump(t *testing.T, cli *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = string(kv.Value)
	}
	return m
}

// Many admins creating overlapping pools at once: exactly one wins.
func TestConcurrentOverlappingCreates(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	// Every pair of these overlaps: they all contain 10.0.0.0.
	subnets := []string{"10.0.0.0/16", "10.0.0.0/24", "10.0.0.0/22", "10.0.0.0/17", "10.0.0.0/8", "10.0.0.0/20", "10.0.0.0/23", "10.0.0.0/12"}
	var wg sync.WaitGroup
	var won, overlap atomic.Int32
	for i, s := range subnets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub, _ := model.ParseSubnet(s, "")
			err := st.CreatePool(ctx, model.Pool{Name: fmt.Sprintf("p%d", i), BlockSizeBits: 8, Subnets: []model.Subnet{sub}})
			switch {
			case err == nil:
				won.Add(1)
			case errors.Is(err, model.ErrSubnetOverlap), errors.Is(err, model.ErrInvalidBlockSize):
				overlap.Add(1)
			default:
				t.Errorf("create %s: %v", s, err)
			}
		}()
	}
	wg.Wait()
	if won.Load() != 1 {
		t.Fatalf("%d overlapping creates succeeded, want exactly 1", won.Load())
	}
	pools, _ := st.ListPools(ctx)
	if len(pools) != 1 {
		t.Fatalf("pools = %v", pools)
	}
}

func TestBlocksAndAddresses(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	if err := st.CreatePool(ctx, model.Pool{Name: "dual", BlockSizeBits: 1, Subnets: []model.Subnet{mustSubnet(t, "10.2.0.0/30", "fd02::/126")}}); err != nil {
		t.Fatal(err)
	}
	owner := func(node, cid string) model.Owner {
		return model.Owner{Node: node, Namespace: "ns", Pod: "pod-" + cid, ContainerID: cid, Interface: "eth0"}
	}
	b1, a1, err := st.AcquireBlock(ctx, "dual", owner("n1", "c1"))
	if err != nil {
		t.Fatal(err)
	}
	if !a1.IPv4.IsValid() || !a1.IPv6.IsValid() || !b1.IPv4.Contains(a1.IPv4) || !b1.IPv6.Contains(a1.IPv6) {
		t.Fatalf("first address %+v not in block %s", a1, b1)
	}
	a2, err := st.AllocateAddress(ctx, b1, 1, owner("n1", "c2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AllocateAddress(ctx, b1, 1, owner("n1", "c3")); !errors.Is(err, model.ErrAddressInUse) {
		t.Fatalf("double allocation = %v", err)
	}
	b2, _, err := st.AcquireBlock(ctx, "dual", owner("n2", "c4"))
	if err != nil {
		t.Fatal(err)
	}
	if b2.ID() == b1.ID() {
		t.Fatal("same block handed to two nodes")
	}
	if _, _, err := st.AcquireBlock(ctx, "dual", owner("n3", "c5")); !errors.Is(err, model.ErrPoolExhausted) {
		t.Fatalf("acquire from full pool = %v", err)
	}
	if _, _, err := st.AcquireBlock(ctx, "nope", owner("n3", "c5")); !errors.Is(err, model.ErrPoolNotFound) {
		t.Fatalf("acquire from unknown pool = %v", err)
	}
	if err := st.ReleaseBlock(ctx, b1); !errors.Is(err, model.ErrBlockInUse) {
		t.Fatalf("release block in use = %v", err)
	}

	// Owner-checked release: a late release of a2 after the address went to
	// someone else must not free the new allocation.
	if err := st.ReleaseAddress(ctx, a2); err != nil {
		t.Fatal(err)
	}
	a2b, err := st.AllocateAddress(ctx, b1, 1, owner("n1", "c6"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseAddress(ctx, a2); !errors.Is(err, model.ErrNotOwner) {
		t.Fatalf("late release = %v, want ErrNotOwner", err)
	}
	info, err := st.FindAddress(ctx, a2b.IPv6)
	if err != nil || info.Address == nil || info.Address.ContainerID != "c6" || info.Block.Node != "n1" {
		t.Fatalf("FindAddress = %+v, %v", info, err)
	}
	if _, err := st.FindAddress(ctx, netip.MustParseAddr("192.0.2.1")); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("FindAddress outside pools = %v", err)
	}

	// Reclaiming a dead node's block removes its addresses too, and the
	// old owner can no longer allocate in it.
	n, err := st.ForceReleaseBlock(ctx, b1)
	if err != nil || n != 2 {
		t.Fatalf("ForceReleaseBlock = %d, %v", n, err)
	}
	if _, err := st.AllocateAddress(ctx, b1, 1, owner("n1", "c7")); !errors.Is(err, model.ErrBlockLost) {
		t.Fatalf("allocate in lost block = %v", err)
	}
	mine, err := st.NodeBlocks(ctx, "n2")
	if err != nil || len(mine) != 1 || mine[0].ID() != b2.ID() || mine[0].Revision != b2.Revision {
		t.Fatalf("NodeBlocks(n2) = %+v, %v", mine, err)
	}
}

// countingKV counts the requests the store sends to etcd.
type countingKV struct {
	clientv3.KV
	gets, txns, puts atomic.Int32
}

func (c *countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	c.gets.Add(1)
	return c.KV.Get(ctx, key, opts...)
}

func (c *countingKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	c.puts.Add(1)
	return c.KV.Put(ctx, key, val, opts...)
}

func (c *countingKV) Txn(ctx context.Context) clientv3.Txn {
	c.txns.Add(1)
	return c.KV.Txn(ctx)
}

func (c *countingKV) total() int32 { return c.gets.Load() + c.txns.Load() + c.puts.Load() }

func TestAllocationIsOneTransaction(t *testing.T) {
	ctx := context.Background()
	cli := server.Client(t)
	kv := &countingKV{KV: cli.KV}
	st := model.NewWithKV(kv, etcdtest.Prefix(t))
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 5, Subnets: []model.Subnet{mustSubnet(t, "10.3.0.0/24", "")}}); err != nil {
		t.Fatal(err)
	}
	b, _, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "n1", ContainerID: "c0"})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < 20; i++ {
		before := kv.total()
		a, err := st.AllocateAddress(ctx, b, i, model.Owner{Node: "n1", ContainerID: fmt.Sprint("c", i)})
		if err != nil {
			t.Fatal(err)
		}
		if got := kv.total() - before; got != 1 {
			t.Fatalf("allocation %d cost %d etcd requests, want 1", i, got)
		}
		before = kv.total()
		release := st.ReleaseOwnAddress
		if i%2 == 0 {
			// The release by coil-controller or coilctl, which also
			// tells the node, is one transaction too.
			release = st.ReleaseAddress
		}
		if err := release(ctx, a); err != nil {
			t.Fatal(err)
		}
		if got := kv.total() - before; got != 1 {
			t.Fatalf("release %d cost %d etcd requests, want 1", i, got)
		}
	}
}

func TestUnreachableEtcd(t *testing.T) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://127.0.0.1:1"}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	st := model.New(cli, "/coil/")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, _, err = st.AcquireBlock(ctx, "default", model.Owner{Node: "n1"})
	if !errors.Is(err, model.ErrUnavailable) {
		t.Fatalf("AcquireBlock with etcd down = %v, want ErrUnavailable", err)
	}
}

func TestSchemaVersion(t *testing.T) {
	ctx := context.Background()
	st, cli := newStore(t)
	if err := st.Init(ctx); err != nil {
		t.Fatalf("second Init = %v", err)
	}
	if _, err := cli.Put(ctx, st.Prefix()+"schema", `{"version":99}`); err != nil {
		t.Fatal(err)
	}
	if err := st.Init(ctx); !errors.Is(err, model.ErrSchemaVersion) {
		t.Fatalf("Init on newer schema = %v", err)
	}
}

func TestTLSClientCertificates(t *testing.T) {
	s, err := etcdtest.Start(etcdtest.Options{TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	st := model.New(s.Client(t), "/coil/")
	if err := st.Init(ctx); err != nil {
		t.Fatalf("Init over TLS: %v", err)
	}
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 4, Subnets: []model.Subnet{mustSubnet(t, "10.4.0.0/24", "")}}); err != nil {
		t.Fatal(err)
	}
}

func TestEtcdRefusalIsNotUnavailable(t *testing.T) {
	ctx := context.Background()
	st, _ := newStore(t)
	// etcd refuses values over its request size limit (1.5 MiB by default):
	// retrying cannot help, so it must not look like an outage.
	huge := model.Node{Name: "big"}
	for range 200000 {
		huge.Addresses = append(huge.Addresses, netip.MustParseAddr("10.0.0.1"))
	}
	err := st.PutNode(ctx, huge)
	if err == nil || errors.Is(err, model.ErrUnavailable) || !errors.Is(err, model.ErrEtcd) {
		t.Fatalf("oversized put = %v, want ErrEtcd and not ErrUnavailable", err)
	}
}
