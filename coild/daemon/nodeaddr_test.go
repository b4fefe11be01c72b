package daemon_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/coil-project/coil/coild/daemon"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	nodetest "github.com/coil-project/coil/internal/testenv/node"
)

// The node of TestNodeAddress: its uplink eth0 carries the node's
// addresses and the default routes; docker0 and kube-ipvs0 are bridges
// carrying global addresses that are not the node's, created first so
// that they come first in the link list.
var (
	uplinkV4 = netip.MustParseAddr("192.0.2.10")
	uplinkV6 = netip.MustParseAddr("2001:db8:1::10")
)

// realisticNode gives the current network namespace the links of a real
// node: docker0's bridge address, kube-proxy IPVS's service addresses on
// kube-ipvs0 (a dummy link on a real node; dummy links do not exist in
// every kernel, a bridge has the same effect), and the uplink eth0 (a
// macvlan over a bridge, standing in for the NIC) with default routes.
func realisticNode(withDefaultRoutes bool) func() error {
	return func() error {
		for _, br := range []struct {
			name  string
			addrs []string
		}{
			{"docker0", []string{"172.17.0.1/16", "fd00:17::1/64"}},
			{"kube-ipvs0", []string{"10.96.0.1/32", "10.96.0.10/32", "fd00:96::1/128"}},
			{"phys0", nil},
		} {
			if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: br.name}}); err != nil {
				return err
			}
			if err := netnstest.LinkUp(br.name, br.addrs...); err != nil {
				return err
			}
		}
		phys, err := netlink.LinkByName("phys0")
		if err != nil {
			return err
		}
		mv := &netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: "eth0", ParentIndex: phys.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}
		if err := netlink.LinkAdd(mv); err != nil {
			return err
		}
		if err := netnstest.LinkUp("eth0", uplinkV4.String()+"/24", uplinkV6.String()+"/64"); err != nil {
			return err
		}
		if !withDefaultRoutes {
			return nil
		}
		if err := netnstest.AddRoute("0.0.0.0/0", "192.0.2.254"); err != nil {
			return err
		}
		return netnstest.AddRoute("::/0", "2001:db8:1::fe")
	}
}

// TestNodeAddress: without --node-address, coild records as the node's
// address (what other nodes route its blocks through in flat-L2 mode) the
// Node object's InternalIP, else the address of the link the default route
// leaves through; never a bridge's or a service address.
func TestNodeAddress(t *testing.T) {
	internal4 := netip.MustParseAddr("198.51.100.7")
	internal6 := netip.MustParseAddr("2001:db8:9::7")
	for _, tc := range []struct {
		name     string
		internal []netip.Addr
		want     []netip.Addr
		logged   string
	}{
		{"default route's link, no Node object", nil, []netip.Addr{uplinkV4, uplinkV6}, "default route"},
		{"Node InternalIP", []netip.Addr{internal4, internal6}, []netip.Addr{internal4, internal6}, "InternalIP"},
		{"Node InternalIP of one family, default route for the other", []netip.Addr{internal4}, []netip.Addr{internal4, uplinkV6}, "InternalIP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := env.NewNode(t, nodetest.Options{
				FindNodeAddress: true,
				NodeInternalIPs: tc.internal,
				Prepare:         realisticNode(true),
			})
			if got := n.NodeRecord().Addresses; !slices.Equal(got, tc.want) {
				t.Errorf("node record addresses = %v, want %v", got, tc.want)
			}
			if log := n.Log(); !strings.Contains(log, tc.logged) {
				t.Errorf("coild's log does not say the address came from %q:\n%s", tc.logged, log)
			}
		})
	}
}

// TestNodeAddressNotFound: with neither a Node InternalIP nor a default
// route through a usable link, coild does not start, and says why.
func TestNodeAddressNotFound(t *testing.T) {
	n := env.NewNode(t, nodetest.Options{Prepare: realisticNode(false)})
	n.Stop()
	cfg := n.Config()
	cfg.NodeAddresses = nil
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := daemon.Run(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "--node-address") || !strings.Contains(err.Error(), "default route") {
		t.Fatalf("Run = %v, want an error about the node's address", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Run waited for its context to end instead of failing")
	}
}
