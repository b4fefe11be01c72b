package daemon_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/internal/testenv"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	nodetest "github.com/coil-project/coil/internal/testenv/node"
	"github.com/coil-project/coil/model"
	"github.com/vishvananda/netlink"
)

// TestAddressNotReusedBeforeOldLinkGone: DEL answers before the pod's veth
// is deleted, but an address is never handed to another pod while a route
// or link of its previous owner still exists on the node. In a pool whose
// only free address is the one just released, ADDs racing the DEL may
// fail, and the one that gets the address must find the old veth and its
// routes gone.
func TestAddressNotReusedBeforeOldLinkGone(t *testing.T) {
	// One block of 4 addresses: the whole pool.
	n := env.NewNode(t, nodetest.Options{Pools: []model.Pool{pool(t, "default", 2, "10.33.0.0/30")},
		// The kernel here deletes a veth in a few milliseconds: widen
		// the window in which the address must stay held.
		LinkRemovalDelay: 200 * time.Millisecond})
	for round := range 3 {
		var pods []*nodetest.Pod
		var addrs [][]netip.Addr
		for i := range 4 {
			p := nodetest.NewPod(t, "default", fmt.Sprintf("r%d-p%d", round, i))
			addrs = append(addrs, n.Add(p))
			pods = append(pods, p)
		}
		old := pods[1]
		oldIndex := 0
		netnstest.Do(t, n.NS, func() error {
			l, err := netlink.LinkByName(old.HostVeth())
			if err == nil {
				oldIndex = l.Attrs().Index
			}
			return err
		})

		// An allocation keeps trying while the DEL runs: straight to
		// coild's API, so that it is checked the moment it is answered,
		// not after a veth of its own was set up.
		var got []netip.Addr
		var linkLeft, routeLeft bool
		var wg sync.WaitGroup
		wg.Go(func() {
			deadline := time.Now().Add(20 * time.Second)
			for time.Now().Before(deadline) {
				resp, err := n.Client.Allocate(context.Background(), api.AllocRequest{
					PodNamespace: "default", PodName: fmt.Sprintf("r%d-next", round), ContainerID: fmt.Sprintf("next-%d", round), Interface: "eth0"})
				if err == nil {
					for _, a := range resp.Addresses {
						got = append(got, netip.MustParseAddr(a))
					}
					// Checked after the allocation answered: what existed
					// then still exists now, links do not come back.
					linkLeft = indexExists(t, n, oldIndex)
					routeLeft = len(n.RoutesTo(addrs[1])) > 0
					return
				}
				time.Sleep(time.Millisecond)
			}
		})
		n.Del(old)
		wg.Wait()
		if !slices.Equal(got, addrs[1]) {
			t.Fatalf("round %d: the next allocation got %v, want the freed %v", round, got, addrs[1])
		}
		if linkLeft {
			t.Errorf("round %d: %v handed out while the old owner's veth (index %d) still existed", round, got, oldIndex)
		}
		if routeLeft {
			t.Errorf("round %d: %v handed out while a route of the old owner still existed", round, got)
		}
		if err := n.Client.Release(context.Background(), "default", fmt.Sprintf("r%d-next", round), api.Attachment{ContainerID: fmt.Sprintf("next-%d", round), Interface: "eth0"}); err != nil {
			t.Fatal(err)
		}
		for _, p := range append(pods[:1:1], pods[2:]...) {
			n.Del(p)
		}
		testenv.Eventually(t, 10*time.Second, "every veth to go", func() bool { return len(n.HostVeths()) == 0 })
		// An address is freed once the deletion that took its veth has
		// returned, a moment after the veth is no longer listed (the
		// kernel lists it no more before it has finished with it).
		testenv.Eventually(t, 10*time.Second, "every address to be free", func() bool {
			return strings.Contains(n.Metrics(), `coild_addresses_free{pool="default"} 4`)
		})
	}
}

// indexExists reports whether the node has a link of that index.
func indexExists(t *testing.T, n *nodetest.Node, index int) bool {
	found := false
	netnstest.Do(t, n.NS, func() error {
		_, err := netlink.LinkByIndex(index)
		found = err == nil
		return nil
	})
	return found
}
