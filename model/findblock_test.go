package model_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
)

// TestAcquireBlockReadsFewKeys: a node taking a block reads a few block
// keys, not every block of the cluster, and takes the very block a
// listing of all of them would have chosen; only when the blocks around
// its starting point are all taken does it list the pool.
func TestAcquireBlockReadsFewKeys(t *testing.T) {
	ctx := context.Background()
	owner := func(node, cid string) model.Owner {
		return model.Owner{Node: node, ContainerID: cid, Interface: "eth0"}
	}
	for _, tc := range []struct {
		name string
		// others is how many blocks other nodes own, anywhere in the
		// pool; crowd how many the node itself took just before, which
		// fill the candidates next to its starting point.
		others, crowd int
		wantList      bool
	}{
		{name: "empty pool", others: 0},
		{name: "100 blocks taken", others: 100},
		{name: "3000 blocks taken", others: 3000},
		{name: "the first 16 candidates taken", crowd: 16},
		{name: "the first 80 candidates taken", crowd: 80, wantList: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// 16,384 blocks of 4 addresses.
			cli, prefix, rec, st := recordedStore(t, "10.62.0.0/16")
			rng := rand.New(rand.NewPCG(1, uint64(tc.others)))
			for _, i := range rng.Perm(16384)[:tc.others] {
				if _, err := cli.Put(ctx, fmt.Sprintf("%sblocks/default/0/%d", prefix, i), `{"node":"other"}`); err != nil {
					t.Fatal(err)
				}
			}
			for i := range tc.crowd {
				if _, _, err := st.AcquireBlock(ctx, "default", owner("n1", fmt.Sprint("crowd-", i))); err != nil {
					t.Fatal(err)
				}
			}

			// What a listing of every block chooses, given back at once.
			model.SetBlockProbes(st)
			listed, _, err := st.AcquireBlock(ctx, "default", owner("n1", "listed"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := st.ForceReleaseBlock(ctx, listed); err != nil {
				t.Fatal(err)
			}

			model.SetBlockProbes(st, 16, 64)
			rec.reset()
			b, a, err := st.AcquireBlock(ctx, "default", owner("n1", "probed"))
			if err != nil {
				t.Fatal(err)
			}
			if b.ID() != listed.ID() || a.ContainerID != "probed" {
				t.Errorf("took block %s, a listing chooses %s", b.ID(), listed.ID())
			}
			listedPool := false
			blockKeys := 0
			for _, r := range rec.reads {
				switch {
				case r.key == prefix+"blocks/default/" && r.end != "":
					listedPool = true
				case strings.HasPrefix(r.key, prefix+"blocks/") && r.end == "":
					blockKeys++
				}
			}
			if listedPool != tc.wantList {
				t.Errorf("listed every block of the pool: %v, want %v", listedPool, tc.wantList)
			}
			if blockKeys > 16+64 {
				t.Errorf("read %d block keys one by one, want at most 80", blockKeys)
			}
			// Pool, blocks read in one request (two past 16 taken), the
			// transaction; plus the listing.
			want := 3
			if tc.crowd >= 16 {
				want++
			}
			if tc.wantList {
				want++
			}
			if rec.requests != want {
				t.Errorf("acquisition cost %d requests, want %d", rec.requests, want)
			}
		})
	}
}

// TestAcquireBlockExhaustedWithoutListing: in a pool smaller than the
// reads, the reads alone tell that every block is taken.
func TestAcquireBlockExhaustedWithoutListing(t *testing.T) {
	ctx := context.Background()
	_, prefix, rec, st := recordedStore(t, "10.63.0.0/28") // 4 blocks
	for i := range 4 {
		if _, _, err := st.AcquireBlock(ctx, "default", model.Owner{Node: fmt.Sprint("n", i), ContainerID: "c"}); err != nil {
			t.Fatal(err)
		}
	}
	rec.reset()
	_, _, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "n9", ContainerID: "c"})
	if !errors.Is(err, model.ErrPoolExhausted) {
		t.Fatalf("acquisition in a full pool = %v, want ErrPoolExhausted", err)
	}
	for _, r := range rec.reads {
		if r.key == prefix+"blocks/default/" {
			t.Errorf("listed the pool's blocks")
		}
	}
}

// TestAcquireBlockUnderATxnOpsLimit: an etcd whose --max-txn-ops is below
// the reads' size refuses them; the acquisition then lists the pool, and
// still takes the block a listing chooses.
func TestAcquireBlockUnderATxnOpsLimit(t *testing.T) {
	ctx := context.Background()
	cli, prefix, _, _ := recordedStore(t, "10.64.0.0/24") // 64 blocks
	limited := &opsLimitKV{KV: cli.KV, max: 8}
	st := model.NewWithKV(limited, prefix)
	listing := model.NewWithKV(cli.KV, prefix)
	model.SetBlockProbes(listing)
	for i := range 3 {
		want, _, err := listing.AcquireBlock(ctx, "default", model.Owner{Node: "n1", ContainerID: fmt.Sprint("l", i)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := listing.ForceReleaseBlock(ctx, want); err != nil {
			t.Fatal(err)
		}
		got, _, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "n1", ContainerID: fmt.Sprint("c", i)})
		if err != nil {
			t.Fatalf("acquisition under a limit of %d operations: %v", limited.max, err)
		}
		if got.ID() != want.ID() {
			t.Errorf("took block %s, a listing chooses %s", got.ID(), want.ID())
		}
	}
	if limited.refused.Load() == 0 {
		t.Error("no read was refused: the test does not test the limit")
	}
}

// opsLimitKV refuses, as etcd does, a transaction of more than max
// operations.
type opsLimitKV struct {
	clientv3.KV
	max     int
	refused atomic.Int32
}

func (k *opsLimitKV) Txn(ctx context.Context) clientv3.Txn {
	return etcdtest.HookTxn(k.KV.Txn(ctx), func(then []clientv3.Op, commit func() (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
		if len(then) > k.max {
			k.refused.Add(1)
			return nil, rpctypes.ErrTooManyOps
		}
		return commit()
	})
}
