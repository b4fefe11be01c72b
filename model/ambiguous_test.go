package model_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// proxiedStore returns a store whose requests go through a TCP proxy to the
// test server, its KV, and a client that reaches the server directly.
func proxiedStore(t *testing.T) (*model.Store, *etcdtest.LosingKV, *clientv3.Client) {
	t.Helper()
	kv := server.LosingKV(t)
	st := model.NewWithKV(kv, etcdtest.Prefix(t))
	// Init also opens the connection, so the proxy has one to spoil.
	if err := st.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	return st, kv, server.Client(t)
}

// loseAnswer runs op with the proxy swallowing etcd's answers from op's
// transaction on; once done says etcd holds op's effect, it cuts the connection and restores the path,
// so op's request has committed but its client saw only a broken
// connection.
func loseAnswer(t *testing.T, kv *etcdtest.LosingKV, done func() bool, op func(ctx context.Context) error) error {
	t.Helper()
	return loseAnswerFor(t, kv, false, done, op)
}

// loseAnswerFor is loseAnswer; with keepCut the path stays cut until op
// has returned, so op cannot learn the outcome.
func loseAnswerFor(t *testing.T, kv *etcdtest.LosingKV, keepCut bool, done func() bool, op func(ctx context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	proxy := kv.Proxy
	kv.Arm()
	cut := make(chan struct{})
	go func() {
		defer close(cut)
		for !done() {
			if ctx.Err() != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		proxy.SetCut(true)
		proxy.SetDropResponses(false)
		if !keepCut {
			proxy.SetCut(false)
		}
	}()
	err := op(ctx)
	<-cut
	proxy.SetCut(false)
	if !done() {
		t.Fatal("the request never took effect in etcd")
	}
	return err
}

// A transaction whose answer is lost may have committed. Each write must
// learn its outcome before answering, so that what it reports agrees with
// etcd: no committed address or block the caller believes failed (and so
// free), no release the caller believes failed.
func TestAmbiguousCommits(t *testing.T) {
	owner := func(cid string) model.Owner {
		return model.Owner{Node: "n1", Namespace: "ns", Pod: "pod-" + cid, ContainerID: cid, Interface: "eth0"}
	}
	has := func(cli *clientv3.Client, key string, prefix bool) bool {
		opts := []clientv3.OpOption{clientv3.WithCountOnly()}
		if prefix {
			opts = append(opts, clientv3.WithPrefix())
		}
		resp, err := cli.Get(context.Background(), key, opts...)
		return err == nil && resp.Count > 0
	}
	cases := []struct {
		name string
		// run sets up what the lost write needs (through st, whose path
		// still works), then performs it through loseAnswer and checks
		// the answer against etcd, read through direct.
		run func(t *testing.T, st *model.Store, kv *etcdtest.LosingKV, direct *clientv3.Client)
	}{{
		name: "address allocation",
		run: func(t *testing.T, st *model.Store, kv *etcdtest.LosingKV, direct *clientv3.Client) {
			b, _, err := st.AcquireBlock(context.Background(), "default", owner("c0"))
			if err != nil {
				t.Fatal(err)
			}
			key := st.Prefix() + "addresses/" + b.ID() + "/1"
			var got model.Address
			err = loseAnswer(t, kv, func() bool { return has(direct, key, false) }, func(ctx context.Context) (err error) {
				got, err = st.AllocateAddress(ctx, b, 1, owner("c1"))
				return err
			})
			if err != nil {
				t.Fatalf("allocation = %v, but etcd holds the address for c1: an orphan the caller thinks free", err)
			}
			resp, _ := direct.Get(context.Background(), key)
			if got.ContainerID != "c1" || got.Offset != 1 || len(resp.Kvs) != 1 || got.Revision != resp.Kvs[0].CreateRevision {
				t.Fatalf("allocation answered %+v, etcd holds %v", got, resp.Kvs)
			}
			// The answer is the record: a release guarded by it works.
			if err := st.ReleaseAddress(context.Background(), got); err != nil || has(direct, key, false) {
				t.Fatalf("release of the resolved allocation = %v", err)
			}
		},
	}, {
		name: "block acquisition",
		run: func(t *testing.T, st *model.Store, kv *etcdtest.LosingKV, direct *clientv3.Client) {
			prefix := st.Prefix() + "blocks/"
			var gotB model.Block
			var gotA model.Address
			err := loseAnswer(t, kv, func() bool { return has(direct, prefix, true) }, func(ctx context.Context) (err error) {
				gotB, gotA, err = st.AcquireBlock(ctx, "default", owner("c1"))
				return err
			})
			if err != nil {
				t.Fatalf("acquisition = %v, but etcd holds a block for the node: an orphan block routed to it", err)
			}
			blocks, err := st.NodeBlocks(context.Background(), "n1")
			if err != nil || len(blocks) != 1 || blocks[0].ID() != gotB.ID() || blocks[0].Revision != gotB.Revision {
				t.Fatalf("acquisition answered %+v, etcd holds %+v (%v)", gotB, blocks, err)
			}
			if gotA.ContainerID != "c1" || gotA.Revision != gotB.Revision {
				t.Fatalf("first address %+v", gotA)
			}
		},
	}, {
		name: "address release",
		run: func(t *testing.T, st *model.Store, kv *etcdtest.LosingKV, direct *clientv3.Client) {
			b, a, err := st.AcquireBlock(context.Background(), "default", owner("c0"))
			if err != nil {
				t.Fatal(err)
			}
			key := st.Prefix() + "addresses/" + b.ID() + "/0"
			err = loseAnswer(t, kv, func() bool { return !has(direct, key, false) }, func(ctx context.Context) error {
				return st.ReleaseAddress(ctx, a)
			})
			if err != nil {
				t.Fatalf("release = %v, but etcd no longer holds the address", err)
			}
		},
	}, {
		name: "block release",
		run: func(t *testing.T, st *model.Store, kv *etcdtest.LosingKV, direct *clientv3.Client) {
			b, a, err := st.AcquireBlock(context.Background(), "default", owner("c0"))
			if err != nil {
				t.Fatal(err)
			}
			if err := st.ReleaseAddress(context.Background(), a); err != nil {
				t.Fatal(err)
			}
			key := st.Prefix() + "blocks/" + b.ID()
			err = loseAnswer(t, kv, func() bool { return !has(direct, key, false) }, func(ctx context.Context) error {
				return st.ReleaseBlock(ctx, b)
			})
			if err != nil {
				t.Fatalf("block release = %v, but etcd no longer holds the block: its route would stay exported", err)
			}
		},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, kv, direct := proxiedStore(t)
			if err := st.CreatePool(context.Background(), model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.9.0.0/28", "")}}); err != nil {
				t.Fatal(err)
			}
			c.run(t, st, kv, direct)
		})
	}
}

// When etcd's answer is lost and the path stays down, a write reports
// ErrOutcomeUnknown (and unavailable), never a plain failure; repeating it
// once etcd answers again settles it to what etcd holds.
func TestOutcomeUnknownSettledLater(t *testing.T) {
	owner := model.Owner{Node: "n1", Namespace: "ns", Pod: "p", ContainerID: "c1", Interface: "eth0"}
	cases := []struct {
		name string
		// lose runs the write whose answer is lost (through loseAnswerFor)
		// and returns what settles it later.
		lose func(t *testing.T, st *model.Store, kv *etcdtest.LosingKV, direct *clientv3.Client) (error, func() (model.Address, error))
	}{{
		name: "address allocation",
		lose: func(t *testing.T, st *model.Store, kv *etcdtest.LosingKV, direct *clientv3.Client) (error, func() (model.Address, error)) {
			b, _, err := st.AcquireBlock(context.Background(), "default", model.Owner{Node: "n1", ContainerID: "c0"})
			if err != nil {
				t.Fatal(err)
			}
			key := st.Prefix() + "addresses/" + b.ID() + "/1"
			err = loseAnswerFor(t, kv, true, func() bool { return countKeys(direct, key, false) > 0 }, func(ctx context.Context) error {
				_, err := st.AllocateAddress(ctx, b, 1, owner)
				return err
			})
			return err, func() (model.Address, error) { return st.AllocateAddress(context.Background(), b, 1, owner) }
		},
	}, {
		name: "block acquisition",
		lose: func(t *testing.T, st *model.Store, kv *etcdtest.LosingKV, direct *clientv3.Client) (error, func() (model.Address, error)) {
			var b model.Block
			var a model.Address
			err := loseAnswerFor(t, kv, true, func() bool { return countKeys(direct, st.Prefix()+"blocks/", true) > 0 }, func(ctx context.Context) (err error) {
				b, a, err = st.AcquireBlock(ctx, "default", owner)
				return err
			})
			return err, func() (model.Address, error) {
				_, a, err := st.ClaimBlock(context.Background(), b, a)
				return a, err
			}
		},
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, kv, direct := proxiedStore(t)
			model.SetOutcomeWait(st, 300*time.Millisecond)
			if err := st.CreatePool(context.Background(), model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, "10.9.0.0/28", "")}}); err != nil {
				t.Fatal(err)
			}
			err, settle := c.lose(t, st, kv, direct)
			if !errors.Is(err, model.ErrOutcomeUnknown) || !errors.Is(err, model.ErrUnavailable) {
				t.Fatalf("write with its answer lost and etcd out of reach = %v, want ErrOutcomeUnknown and ErrUnavailable", err)
			}
			a, err := settle()
			if err != nil {
				t.Fatalf("settling = %v", err)
			}
			resp, err := direct.Get(context.Background(), st.Prefix()+"addresses/", clientv3.WithPrefix())
			if err != nil || len(resp.Kvs) == 0 {
				t.Fatal(err)
			}
			last := resp.Kvs[len(resp.Kvs)-1]
			if a.ContainerID != "c1" || a.Revision != last.CreateRevision || !strings.HasSuffix(string(last.Key), "/"+strconv.Itoa(a.Offset)) {
				t.Fatalf("settled to %+v, etcd holds %s rev %d", a, last.Key, last.CreateRevision)
			}
		})
	}
}

func countKeys(cli *clientv3.Client, key string, prefix bool) int64 {
	opts := []clientv3.OpOption{clientv3.WithCountOnly()}
	if prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	resp, err := cli.Get(context.Background(), key, opts...)
	if err != nil {
		return 0
	}
	return resp.Count
}
