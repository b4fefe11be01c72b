package nodenet

import (
	"errors"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// TestEgressHostileLinks: a pod with CAP_NET_ADMIN owns its namespace and
// may create any link under the names coil uses there. Syncing egress
// into such a namespace must fail for that pod with ErrForeignLink, never
// panic (a panic in a pod's namespace would take coild down on every
// restart), and never delete a link coil did not make.
func TestEgressHostileLinks(t *testing.T) {
	b := newEgressBed(t)
	tunnel := EgressTunnel{VNI: testVNI, Destinations: extNets, Gateway: gatewayAV4}
	for _, tc := range []struct {
		name string
		pod  ns.NetNS
		link string
		sync func(path string) error
	}{
		{"client tunnel is a veth", b.client, EgressClientLinkName(testVNI), func(path string) error {
			return SyncEgressClient(path, EgressClient{IPv4: clientV4, Bypass: podNets, Tunnels: []EgressTunnel{tunnel}})
		}},
		{"gateway tunnel is a veth", b.gwA, EgressGatewayLinkName(testVNI, clientV4), func(path string) error {
			return SyncEgressGateway(path, EgressGateway{VNI: testVNI, IPv4: gatewayAV4, Clients: []EgressGatewayClient{{Outer: clientV4, IPv4: clientV4}}})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inNS(t, tc.pod, func() error {
				return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tc.link}, PeerName: "hostile0"})
			})
			if err := tc.sync(tc.pod.Path()); !errors.Is(err, ErrForeignLink) {
				t.Errorf("sync = %v, want ErrForeignLink", err)
			}
			inNS(t, tc.pod, func() error {
				l, err := netlink.LinkByName(tc.link)
				if err != nil {
					t.Errorf("the pod's own link %s was removed: %v", tc.link, err)
				} else if l.Type() != "veth" {
					t.Errorf("link %s is now a %s", tc.link, l.Type())
				}
				return nil
			})
		})
	}
}

// TestInPodNSRecoversPanics: ns.Do runs its function on a goroutine of its
// own, where a caller's recover cannot reach, so inPodNS must turn a panic
// into an error itself.
func TestInPodNSRecoversPanics(t *testing.T) {
	n := newTestNS(t)
	err := inPodNS(n.Path(), func(ns.NetNS) error {
		var l *netlink.Vxlan
		_ = l.VxlanId // nil dereference, as a malformed link would cause
		return nil
	})
	if !errors.Is(err, ErrPanic) {
		t.Errorf("inPodNS = %v, want ErrPanic", err)
	}
}
