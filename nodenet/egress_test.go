package nodenet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The egress test bed: a node (host netns) with a client pod and two
// gateway pods wired by SetupPod, and an "external" host behind the node
// that routes back only to the gateways, so that only NATed traffic can
// get an answer.
var (
	clientV4   = netip.MustParseAddr("10.1.0.5")
	clientV6   = netip.MustParseAddr("fd00:1::5")
	gatewayAV4 = netip.MustParseAddr("10.1.0.6")
	gatewayAV6 = netip.MustParseAddr("fd00:1::6")
	gatewayBV4 = netip.MustParseAddr("10.1.0.7")
	gatewayBV6 = netip.MustParseAddr("fd00:1::7")
	externalV4 = netip.MustParseAddr("192.168.250.2")
	externalV6 = netip.MustParseAddr("fd99:250::2")
	podNets    = prefixes("10.1.0.0/24", "fd00:1::/120")
	extNets    = prefixes("192.168.250.0/24", "fd99:250::/64")
)

const testVNI = 0x123

type egressBed struct {
	host, client, gwA, gwB, external ns.NetNS
	// server4 and server6 answer each connection with the address they
	// see it come from.
	server4, server6 netip.AddrPort
}

func newEgressBed(t *testing.T) *egressBed {
	t.Helper()
	b := &egressBed{host: newHost(t), client: newTestNS(t), gwA: newTestNS(t), gwB: newTestNS(t), external: newTestNS(t)}
	for i, p := range []struct {
		n      ns.NetNS
		v4, v6 netip.Addr
	}{{b.client, clientV4, clientV6}, {b.gwA, gatewayAV4, gatewayAV6}, {b.gwB, gatewayBV4, gatewayBV6}} {
		cfg := PodConfig{NetNSPath: p.n.Path(), IfName: "eth0", HostVethName: HostVethName("egress", fmt.Sprint(i)), IPv4: p.v4, IPv6: p.v6, MTU: 1500}
		inNS(t, b.host, func() error { _, err := SetupPod(cfg); return err })
	}
	inNS(t, b.host, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{Name: "ext0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(b.external.Fd())),
		}); err != nil {
			return err
		}
		return upWithAddrs("ext0", "192.168.250.1/24", "fd99:250::1/64")
	})
	inNS(t, b.external, func() error {
		if err := upWithAddrs("eth0", "192.168.250.2/24", "fd99:250::2/64"); err != nil {
			return err
		}
		// Only the gateways are routed back: a packet from the client
		// itself can never be answered.
		for _, r := range []struct{ dst, via string }{
			{"10.1.0.6/32", "192.168.250.1"}, {"10.1.0.7/32", "192.168.250.1"},
			{"fd00:1::6/128", "fd99:250::1"}, {"fd00:1::7/128", "fd99:250::1"},
		} {
			if err := netnstest.AddRoute(r.dst, r.via); err != nil {
				return err
			}
		}
		return nil
	})
	b.server4 = peerServer(t, b.external, externalV4)
	b.server6 = peerServer(t, b.external, externalV6)
	return b
}

// upWithAddrs sets a link of the current netns up with addresses (see netnstest.LinkUp).
func upWithAddrs(name string, cidrs ...string) error { return netnstest.LinkUp(name, cidrs...) }

// peerServer answers each connection with the client's address as seen.
func peerServer(t *testing.T, n ns.NetNS, addr netip.Addr) netip.AddrPort {
	return netnstest.PeerServer(t, n, addr)
}

// seenAs connects from n to a peerServer and returns the address it saw.
func seenAs(n ns.NetNS, target netip.AddrPort, timeout time.Duration) (netip.Addr, error) {
	return netnstest.SeenAs(n, target, timeout)
}

func countEgress(t *testing.T, n ns.NetNS) EgressSummary {
	t.Helper()
	sum, err := SummarizeEgress(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func TestEgressNames(t *testing.T) {
	for _, vni := range []uint32{1, 0x123, MaxVNI} {
		for _, name := range []string{EgressClientLinkName(vni), EgressGatewayLinkName(vni, clientV4), EgressGatewayLinkName(vni, clientV6)} {
			if len(name) > maxIfNameLen {
				t.Errorf("link name %q is longer than IFNAMSIZ", name)
			}
		}
	}
	macs := map[string]string{}
	for _, a := range []string{"10.1.0.5", "10.1.0.6", "fd00:1::5", "fd00:2::5"} {
		mac := EgressClientMAC(netip.MustParseAddr(a))
		if mac[0]&0x03 != 0x02 {
			t.Errorf("client MAC %s of %s is not locally administered unicast", mac, a)
		}
		if other, dup := macs[mac.String()]; dup {
			t.Errorf("%s and %s share client MAC %s", a, other, mac)
		}
		macs[mac.String()] = a
	}
	if got := EgressClientMAC(netip.MustParseAddr("10.1.0.5")).String(); got != "06:00:0a:01:00:05" {
		t.Errorf("client MAC of 10.1.0.5 = %s", got)
	}
	if got := EgressGatewayMAC(0x123).String(); got != "02:c0:11:00:01:23" {
		t.Errorf("gateway MAC of VNI 0x123 = %s", got)
	}
}

func TestEgressValidate(t *testing.T) {
	tests := []struct {
		name string
		do   func() error
	}{
		{"client without address", func() error {
			return SyncEgressClient("/nonexistent", EgressClient{Tunnels: []EgressTunnel{{VNI: 1}}})
		}},
		{"client VNI 0", func() error {
			return SyncEgressClient("/nonexistent", EgressClient{IPv4: clientV4, Tunnels: []EgressTunnel{{VNI: 0}}})
		}},
		{"client VNI too large", func() error {
			return SyncEgressClient("/nonexistent", EgressClient{IPv4: clientV4, Tunnels: []EgressTunnel{{VNI: MaxVNI + 1}}})
		}},
		{"client VNI twice", func() error {
			return SyncEgressClient("/nonexistent", EgressClient{IPv4: clientV4, Tunnels: []EgressTunnel{{VNI: 1}, {VNI: 1}}})
		}},
		{"client gateway of other family", func() error {
			return SyncEgressClient("/nonexistent", EgressClient{IPv4: clientV4, Tunnels: []EgressTunnel{{VNI: 1, Gateway: gatewayAV6}}})
		}},
		{"gateway without address", func() error { return SyncEgressGateway("/nonexistent", EgressGateway{VNI: 1}) }},
		{"gateway client of other family", func() error {
			return SyncEgressGateway("/nonexistent", EgressGateway{VNI: 1, IPv4: gatewayAV4, Clients: []EgressGatewayClient{{Outer: clientV6}}})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.do(); !errors.Is(err, ErrInvalidEgress) {
				t.Fatalf("error = %v, want ErrInvalidEgress", err)
			}
		})
	}
}

// TestEgressDataPath sends a client's traffic to an external host through
// a gateway, over an IPv4 and an IPv6 outer tunnel: the external host sees
// the gateway's address, other traffic keeps its path, reprogramming leaves
// exactly one copy of everything, a client moves to another gateway, and
// teardown removes it all.
func TestEgressDataPath(t *testing.T) {
	tests := []struct {
		name               string
		gatewayA, gatewayB netip.Addr
		clientOuter        netip.Addr
	}{
		{"outer ipv4", gatewayAV4, gatewayBV4, clientV4},
		{"outer ipv6", gatewayAV6, gatewayBV6, clientV6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newEgressBed(t)
			// Without egress the client cannot get an answer.
			if seen, err := seenAs(b.client, b.server4, time.Second); err == nil {
				t.Fatalf("client reached the external host without egress, seen as %s", seen)
			}

			client := EgressClient{
				IPv4: clientV4, IPv6: clientV6, Bypass: podNets,
				Tunnels: []EgressTunnel{{VNI: testVNI, Destinations: extNets, Gateway: tt.gatewayA}},
			}
			gateway := func(v4, v6 netip.Addr, clients ...EgressGatewayClient) EgressGateway {
				return EgressGateway{VNI: testVNI, IPv4: v4, IPv6: v6, Clients: clients}
			}
			me := EgressGatewayClient{Outer: tt.clientOuter, IPv4: clientV4, IPv6: clientV6}
			// Three rounds: the second and third must change nothing.
			var first [2]EgressSummary
			for round := range 3 {
				if err := SyncEgressGateway(b.gwA.Path(), gateway(gatewayAV4, gatewayAV6, me)); err != nil {
					t.Fatal(err)
				}
				if err := SyncEgressGateway(b.gwB.Path(), gateway(gatewayBV4, gatewayBV6)); err != nil {
					t.Fatal(err)
				}
				if err := SyncEgressClient(b.client.Path(), client); err != nil {
					t.Fatal(err)
				}
				counts := [2]EgressSummary{countEgress(t, b.client), countEgress(t, b.gwA)}
				if round == 0 {
					first = counts
					continue
				}
				if counts != first {
					t.Fatalf("round %d changed the programmed state:\nclient  %+v then %+v\ngateway %+v then %+v", round+1, first[0], counts[0], first[1], counts[1])
				}
			}
			// Client: one device, one FDB entry, two next hops; rules:
			// per family the pod net, link-local, the gateway (its
			// family only) and the table; one route per destination.
			// One nftables rule tags new connections with the gateway.
			wantClient := EgressSummary{Links: 1, FDB: 1, Neighs: 2, Rules: 2*3 + 1, ClientRoutes: 2, ClientNFTRules: 1}
			if first[0] != wantClient {
				t.Errorf("client holds %+v, want %+v", first[0], wantClient)
			}
			// Gateway: a device per family, one FDB entry and two
			// neighbours (for the client's two addresses) on the one of
			// the client's outer family; a route per client address, a
			// rule per family, seven nftables rules (one per device, the
			// mark restore, the masquerade and its counter, a VXLAN
			// guard per family)
			// and the two client sets holding the client's outer
			// address.
			wantGateway := EgressSummary{Links: 2, FDB: 1, Neighs: 2, Rules: 2, GatewayRoutes: 2, NFTRules: 9, NFTSets: 2, NFTElements: 1, NFTTable: true}
			if first[1] != wantGateway {
				t.Errorf("gateway holds %+v, want %+v", first[1], wantGateway)
			}

			for _, srv := range []struct {
				target netip.AddrPort
				want   netip.Addr
			}{{b.server4, gatewayAV4}, {b.server6, gatewayAV6}} {
				seen, err := seenAs(b.client, srv.target, 5*time.Second)
				if err != nil {
					t.Fatalf("client cannot reach %s through the gateway: %v", srv.target, err)
				}
				if seen != srv.want {
					t.Errorf("external host saw the client as %s, want the gateway %s", seen, srv.want)
				}
			}
			// The gateway counted what it masqueraded, and conntrack
			// holds the connections; another sync keeps the counts, and
			// more traffic raises them.
			before, err := ReadEgressGatewayStats(b.gwA.Path())
			if err != nil {
				t.Fatal(err)
			}
			if before.MasqueradedPackets == 0 || before.MasqueradedBytes < before.MasqueradedPackets*20 ||
				before.ConntrackEntries == 0 || before.ConntrackMax < before.ConntrackEntries || before.ForeignDrops != 0 {
				t.Errorf("gateway counters after traffic: %+v", before)
			}
			if err := SyncEgressGateway(b.gwA.Path(), gateway(gatewayAV4, gatewayAV6, me)); err != nil {
				t.Fatal(err)
			}
			if _, err := seenAs(b.client, b.server4, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			after, err := ReadEgressGatewayStats(b.gwA.Path())
			if err != nil {
				t.Fatal(err)
			}
			if after.MasqueradedPackets <= before.MasqueradedPackets || after.MasqueradedBytes <= before.MasqueradedBytes {
				t.Errorf("masquerade counters went from %+v to %+v after a sync and a connection", before, after)
			}
			// Nothing masqueraded by the idle gateway B.
			if idle, err := ReadEgressGatewayStats(b.gwB.Path()); err != nil || idle.MasqueradedPackets != 0 {
				t.Errorf("idle gateway counters %+v, %v", idle, err)
			}
			// Destinations not claimed by the egress keep the normal path.
			if err := dial(b.client, listen(t, b.host, hostV4)); err != nil {
				t.Errorf("client cannot reach the node directly: %v", err)
			}
			if err := dial(b.client, listen(t, b.gwA, gatewayAV4)); err != nil {
				t.Errorf("client cannot reach the gateway pod directly: %v", err)
			}

			// The client moves to gateway B.
			client.Tunnels[0].Gateway = tt.gatewayB
			if err := SyncEgressGateway(b.gwB.Path(), gateway(gatewayBV4, gatewayBV6, me)); err != nil {
				t.Fatal(err)
			}
			if err := SyncEgressClient(b.client.Path(), client); err != nil {
				t.Fatal(err)
			}
			if err := SyncEgressGateway(b.gwA.Path(), gateway(gatewayAV4, gatewayAV6)); err != nil {
				t.Fatal(err)
			}
			if got := countEgress(t, b.client); got != wantClient {
				t.Errorf("client after the move holds %+v, want %+v", got, wantClient)
			}
			if got, want := countEgress(t, b.gwA), (EgressSummary{Links: 2, Rules: 2, NFTRules: 9, NFTSets: 2, NFTTable: true}); got != want {
				t.Errorf("old gateway holds %+v, want %+v", got, want)
			}
			seen, err := seenAs(b.client, b.server4, 5*time.Second)
			if err != nil || seen != gatewayBV4 {
				t.Errorf("after the move the external host saw %s (%v), want %s", seen, err, gatewayBV4)
			}

			// Teardown, twice.
			for range 2 {
				for _, n := range []ns.NetNS{b.gwA, b.gwB} {
					if err := TeardownEgressGateway(n.Path()); err != nil {
						t.Fatal(err)
					}
				}
				if err := TeardownEgressClient(b.client.Path()); err != nil {
					t.Fatal(err)
				}
			}
			for _, n := range []ns.NetNS{b.client, b.gwA, b.gwB} {
				if got := countEgress(t, n); got != (EgressSummary{}) {
					t.Errorf("teardown left %+v", got)
				}
			}
			if _, err := seenAs(b.client, b.server4, time.Second); err == nil {
				t.Errorf("client still reaches the external host after teardown")
			}
			if err := dial(b.client, listen(t, b.host, hostV4)); err != nil {
				t.Errorf("client cannot reach the node after teardown: %v", err)
			}
			assertRootUntouched(t)
		})
	}
}

// assertRootUntouched fails the test if the namespace the test runs in got
// an egress nftables table: everything must happen in the test's namespaces.
func assertRootUntouched(t *testing.T) {
	t.Helper()
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == EgressNFTable {
			t.Fatalf("the test's own network namespace has the nftables table %s", EgressNFTable)
		}
	}
}

// TestEgressFailClosed: while an egress has no gateway its destinations are
// unreachable, instead of leaving with the pod's own address.
func TestEgressFailClosed(t *testing.T) {
	b := newEgressBed(t)
	// Let the external host answer the client directly, so that a leak
	// would show as a success.
	inNS(t, b.external, func() error {
		return netlink.RouteAdd(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("10.1.0.0/24")), Gw: net.ParseIP("192.168.250.1")})
	})
	if seen, err := seenAs(b.client, b.server4, 5*time.Second); err != nil || seen != clientV4 {
		t.Fatalf("without egress the client should reach the external host as itself: %s, %v", seen, err)
	}
	cfg := EgressClient{IPv4: clientV4, Bypass: podNets, Tunnels: []EgressTunnel{{VNI: testVNI, Destinations: extNets}}}
	if err := SyncEgressClient(b.client.Path(), cfg); err != nil {
		t.Fatal(err)
	}
	_, err := seenAs(b.client, b.server4, 2*time.Second)
	if !errors.Is(err, unix.EHOSTUNREACH) {
		t.Errorf("connection without a gateway = %v, want host unreachable", err)
	}
	if got, want := countEgress(t, b.client), (EgressSummary{Rules: 3, ClientRoutes: 1}); got != want {
		t.Errorf("client holds %+v, want %+v (no device, an unreachable route)", got, want)
	}
	if err := dial(b.client, listen(t, b.host, hostV4)); err != nil {
		t.Errorf("client cannot reach the node: %v", err)
	}
}

// TestEgressTeardownGoneNetNS: a pod whose namespace is gone needs nothing.
func TestEgressTeardownGoneNetNS(t *testing.T) {
	n := newTestNS(t)
	path := n.Path()
	n.Close()
	if err := testutils.UnmountNS(n); err != nil {
		t.Fatal(err)
	}
	if err := TeardownEgressClient(path); err != nil {
		t.Errorf("client teardown of a gone netns: %v", err)
	}
	if err := TeardownEgressGateway(path); err != nil {
		t.Errorf("gateway teardown of a gone netns: %v", err)
	}
	if err := SyncEgressClient(path, EgressClient{IPv4: clientV4}); err == nil {
		t.Errorf("sync into a gone netns succeeded")
	}
}
