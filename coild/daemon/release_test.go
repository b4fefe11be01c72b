package daemon_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	nodetest "github.com/coil-project/coil/internal/testenv/node"
	"github.com/coil-project/coil/model"
)

// TestReleaseInEtcdReachesCoild frees an address of a full block behind
// coild's back, the way `coilctl address free` does (the controller's leak
// reclaim is the same call): the next ADD on the node must get it without a
// restart, from the same block, although the pool has no other block.
func TestReleaseInEtcdReachesCoild(t *testing.T) {
	// One block of 4 addresses: the whole pool.
	n := env.NewNode(t, nodetest.Options{Pools: []model.Pool{pool(t, "default", 2, "10.31.0.0/30")}})
	var pods []*nodetest.Pod
	var addrs []netip.Addr
	for i := range 4 {
		p := nodetest.NewPod(t, "default", fmt.Sprintf("fill-%d", i))
		addrs = append(addrs, n.Add(p)...)
		pods = append(pods, p)
	}
	if _, err := n.TryAdd(nodetest.NewPod(t, "default", "one-too-many")); err == nil {
		t.Fatal("ADD succeeded in a full pool")
	}

	ctx := context.Background()
	freed := addrs[2]
	info, err := n.Store.FindAddress(ctx, freed)
	if err != nil || info.Address == nil {
		t.Fatalf("find %s: %+v, %v", freed, info, err)
	}
	if err := n.Store.ReleaseAddress(ctx, *info.Address); err != nil {
		t.Fatal(err)
	}

	var got []netip.Addr
	testenv.Eventually(t, 10*time.Second, "an ADD to get the address freed in etcd", func() bool {
		res, err := n.TryAdd(nodetest.NewPod(t, "default", "next"))
		if err != nil {
			return false
		}
		got = nodetest.ResultAddrs(t, res)
		return true
	})
	if !slices.Equal(got, []netip.Addr{freed}) {
		t.Fatalf("next pod got %v, want the freed %s", got, freed)
	}
	if bs := n.StatusBlocks(); len(bs) != 1 || !bs[0].Contains(freed) {
		t.Errorf("node owns blocks %v, want the one block of the pool", bs)
	}
	// The pod whose record was freed is gone from coild's memory: a DEL of
	// it must not free the address now held by "next".
	n.Del(pods[2])
	if recs := n.AddressRecords(); len(recs) != 4 {
		t.Fatalf("%d address records after DEL of the freed pod, want 4", len(recs))
	}
}

// TestForceReleasedBlockWithdrawn releases one of coild's blocks in etcd
// behind its back, as coil-controller or an operator does for a node
// taken for dead: coild must stop allocating from it, withdraw its route
// from the export table and count it, without a restart.
func TestForceReleasedBlockWithdrawn(t *testing.T) {
	n := env.NewNode(t, nodetest.Options{Pools: []model.Pool{pool(t, "default", 2, "10.32.0.0/29")}})
	first := n.Add(nodetest.NewPod(t, "default", "a"))
	blocks := n.StatusBlocks()
	if len(blocks) != 1 || !blocks[0].Contains(first[0]) {
		t.Fatalf("blocks %v after the first ADD", blocks)
	}
	n.WaitExportMatchesStatus()

	ctx := context.Background()
	mine, err := n.Store.NodeBlocks(ctx, n.Name)
	if err != nil || len(mine) != 1 {
		t.Fatalf("blocks in etcd: %v, %v", mine, err)
	}
	if _, err := n.Store.ForceReleaseBlock(ctx, mine[0]); err != nil {
		t.Fatal(err)
	}

	testenv.Eventually(t, 10*time.Second, "the released block to leave the export table and the status", func() bool {
		return !slices.Contains(n.Exported(), blocks[0]) && !slices.Contains(n.StatusBlocks(), blocks[0])
	})
	if m := n.Metrics(); !strings.Contains(m, "coild_blocks_released_elsewhere_total 1") {
		t.Errorf("metric of blocks released elsewhere missing:\n%s", grepLines(m, "coild_blocks"))
	}
	// The next pod gets a block acquired anew, which may be the same CIDR
	// under a new record: it must be in etcd as this node's.
	got := n.Add(nodetest.NewPod(t, "default", "b"))
	now, err := n.Store.NodeBlocks(ctx, n.Name)
	if err != nil || len(now) != 1 || !now[0].IPv4.Contains(got[0]) || now[0].Revision == mine[0].Revision {
		t.Fatalf("after ADD the node's blocks in etcd are %v (%v); the pod got %v", now, err, got)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
