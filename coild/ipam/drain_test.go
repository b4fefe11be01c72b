package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/model"
)

// While a subnet is drained, new pods go to blocks of other subnets, so
// the drained blocks empty as pods come and go; their free addresses are
// used only when the pool gives no other block.
func TestDrainedBlocksLastResort(t *testing.T) {
	ctx := context.Background()
	st, _ := setup(t, "p", "10.60.0.0/29", "", 2) // 2 blocks of 4
	if err := st.AddSubnet(ctx, "p", model.Subnet{IPv4: mustPrefix(t, "10.60.1.0/29")}); err != nil {
		t.Fatal(err)
	}
	a := restored(t, st, "n1", nil)
	setPools := func() {
		t.Helper()
		pools, err := st.ListPools(ctx)
		if err != nil {
			t.Fatal(err)
		}
		a.SetPools(pools)
	}
	first, err := a.Allocate(ctx, "p", owner("c0"))
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := st.GetPool(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	drainedPrefix := p.Subnets[first.Subnet].IPv4
	if _, err := st.SetDrained(ctx, "p", drainedPrefix, true); err != nil {
		t.Fatal(err)
	}
	setPools()
	// The drained block has 3 free addresses, yet the next pods go to a
	// new block of the other subnet.
	for i := 1; i <= 4; i++ {
		ad, err := a.Allocate(ctx, "p", owner(fmt.Sprintf("c%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		if ad.Subnet == first.Subnet {
			t.Fatalf("pod %d got %s of the drained subnet while the pool had other blocks", i, ad.IPv4)
		}
	}
	if free := a.FreeAddresses()["p"]; free != 3+0 {
		t.Fatalf("free addresses in owned blocks = %d, want 3 (the drained block's)", free)
	}
	// An address freed in the drained block is not handed out again
	// while the pool gives blocks.
	if _, _, err := a.Release(ctx, api.Attachment{ContainerID: "c0", Interface: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if ad, err := a.Allocate(ctx, "p", owner("c-next")); err != nil || ad.Subnet == first.Subnet {
		t.Fatalf("after a release in the drained block: %v, %v; want a new block of the other subnet", ad.IPv4, err)
	}
	// Drain the whole pool: no new block anywhere, so the drained
	// blocks' free addresses are used rather than failing pods.
	if _, err := st.SetDrained(ctx, "p", model.Subnet{}.IPv4, true); err != nil {
		t.Fatal(err)
	}
	setPools()
	got := 0
	for i := 5; ; i++ {
		_, err := a.Allocate(ctx, "p", owner(fmt.Sprintf("c%d", i)))
		if err != nil {
			if !errors.Is(err, model.ErrPoolExhausted) || !errors.Is(err, model.ErrDrained) {
				t.Fatalf("allocation in a full drained pool = %v, want ErrPoolExhausted and ErrDrained", err)
			}
			break
		}
		got++
	}
	if got != 4+3 {
		t.Fatalf("%d pods got addresses of the node's drained blocks, want the 7 free in them", got)
	}
	blocks, err := st.ListBlocks(ctx, "p")
	if err != nil || len(blocks) != 3 {
		t.Fatalf("blocks = %v, %v; want the 3 the node took before the pool was drained", blocks, err)
	}
}

func mustPrefix(t *testing.T, s string) netip.Prefix {
	t.Helper()
	p, err := netip.ParsePrefix(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
