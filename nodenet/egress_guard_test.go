package nodenet

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// datagram is what a udpSink received: the payload and the address it
// came from.
type datagram struct {
	from    netip.Addr
	payload string
}

// udpSink opens a UDP socket on addr inside n and hands every datagram it
// receives to the returned channel until the test ends.
func udpSink(t *testing.T, n ns.NetNS, addr netip.Addr) (netip.AddrPort, <-chan datagram) {
	t.Helper()
	var conn *net.UDPConn
	inNS(t, n, func() error {
		var err error
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, 0)))
		return err
	})
	t.Cleanup(func() { conn.Close() })
	got := make(chan datagram, 64)
	go func() {
		buf := make([]byte, 2048)
		for {
			// Ends when the cleanup above closes the socket.
			k, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			select {
			case got <- datagram{from: from.Addr().Unmap(), payload: string(buf[:k])}:
			default:
			}
		}
	}()
	return netip.MustParseAddrPort(conn.LocalAddr().String()), got
}

// sendUDP sends payload from inside n to target with an ordinary socket.
func sendUDP(t *testing.T, n ns.NetNS, target netip.AddrPort, payload []byte) {
	t.Helper()
	inNS(t, n, func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return err
	})
}

// vxlanFrame builds by hand what a client's tunnel device would send for
// an IPv4/UDP packet from innerSrc to innerDst: the VXLAN header with vni,
// an Ethernet header to the egress's gateway MAC, the IPv4 header (with its
// checksum, which the gateway checks) and the UDP header (checksum 0, "none").
func vxlanFrame(vni uint32, innerSrc netip.Addr, innerDst netip.AddrPort, payload []byte) []byte {
	var f []byte
	// VXLAN: flags (VNI present), 3 reserved, VNI, 1 reserved.
	f = append(f, 0x08, 0, 0, 0, byte(vni>>16), byte(vni>>8), byte(vni), 0)
	// Ethernet.
	f = append(f, EgressGatewayMAC(vni)...)
	f = append(f, 0x02, 0, 0, 0, 0xee, 0x01)
	f = binary.BigEndian.AppendUint16(f, 0x0800)
	// IPv4.
	ip := make([]byte, 20)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+len(payload)))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // don't fragment
	ip[8] = 64
	ip[9] = 17 // UDP
	src, dst := innerSrc.As4(), innerDst.Addr().As4()
	copy(ip[12:], src[:])
	copy(ip[16:], dst[:])
	var sum uint32
	for i := 0; i < len(ip); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	f = append(f, ip...)
	// UDP.
	f = binary.BigEndian.AppendUint16(f, 40000)
	f = binary.BigEndian.AppendUint16(f, innerDst.Port())
	f = binary.BigEndian.AppendUint16(f, uint16(8+len(payload)))
	f = binary.BigEndian.AppendUint16(f, 0)
	return append(f, payload...)
}

func gatewayDrops(t *testing.T, n ns.NetNS) uint64 {
	t.Helper()
	d, err := EgressGatewayDrops(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// waitDrops waits up to two seconds for the gateway's drop counter to
// reach want, and fails the test if it does not, or goes past it.
func waitDrops(t *testing.T, n ns.NetNS, want uint64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := gatewayDrops(t, n)
		if got == want {
			return
		}
		if got > want || time.Now().After(deadline) {
			t.Fatalf("gateway dropped %d foreign VXLAN packets, want %d", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// expectDatagram waits for the datagram with payload on sink, failing the
// test if another arrives first, or none does within five seconds, or it
// does not come from the address from.
func expectDatagram(t *testing.T, sink <-chan datagram, payload string, from netip.Addr) {
	t.Helper()
	select {
	case d := <-sink:
		if d.payload != payload {
			t.Fatalf("external host received %q from %s, want %q first", d.payload, d.from, payload)
		}
		if d.from != from {
			t.Errorf("external host saw %q come from %s, want %s", payload, d.from, from)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("external host did not receive %q", payload)
	}
}

// expectNothing fails the test if sink receives anything within wait.
func expectNothing(t *testing.T, sink <-chan datagram, wait time.Duration) {
	t.Helper()
	select {
	case d := <-sink:
		t.Fatalf("external host received %q from %s", d.payload, d.from)
	case <-time.After(wait):
	}
}

// TestEgressGatewayGuard: a gateway takes VXLAN of its egress only from
// its current clients. A pod that is no client (gwB) sends the gateway a
// well-formed tunnel frame by hand; the same frame sent from the client is
// relayed (so the frame is good), the intruder's is counted and dropped and
// the external host never sees it. The client keeps its way out until it
// is removed from the gateway's clients; from then on its tunnel traffic
// is dropped too. The counter survives syncs, and teardown removes it all.
func TestEgressGatewayGuard(t *testing.T) {
	tests := []struct {
		name        string
		gateway     netip.Addr
		clientOuter netip.Addr
	}{
		{"outer ipv4", gatewayAV4, clientV4},
		{"outer ipv6", gatewayAV6, clientV6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newEgressBed(t)
			sink, received := udpSink(t, b.external, externalV4)
			me := EgressGatewayClient{Outer: tt.clientOuter, IPv4: clientV4, IPv6: clientV6}
			gateway := EgressGateway{VNI: testVNI, IPv4: gatewayAV4, IPv6: gatewayAV6, Clients: []EgressGatewayClient{me}}
			if err := SyncEgressGateway(b.gwA.Path(), gateway); err != nil {
				t.Fatal(err)
			}
			client := EgressClient{
				IPv4: clientV4, IPv6: clientV6, Bypass: podNets,
				Tunnels: []EgressTunnel{{VNI: testVNI, Destinations: extNets, Gateway: tt.gateway}},
			}
			if err := SyncEgressClient(b.client.Path(), client); err != nil {
				t.Fatal(err)
			}
			if got := gatewayDrops(t, b.gwA); got != 0 {
				t.Fatalf("a new gateway counts %d drops", got)
			}

			// The client gets out, as the gateway.
			if seen, err := seenAs(b.client, b.server4, 5*time.Second); err != nil || seen != gatewayAV4 {
				t.Fatalf("client reached the external host as %s (%v), want %s", seen, err, gatewayAV4)
			}
			tunnelPort := netip.AddrPortFrom(tt.gateway, EgressVXLANPort)
			// The hand-made frame from the client's own address is
			// relayed: it is a good frame.
			sendUDP(t, b.client, tunnelPort, vxlanFrame(testVNI, clientV4, sink, []byte("crafted by the client")))
			expectDatagram(t, received, "crafted by the client", gatewayAV4)
			if got := gatewayDrops(t, b.gwA); got != 0 {
				t.Fatalf("the gateway dropped %d packets of its client", got)
			}

			// The same frame from a pod that is no client is dropped
			// and counted, whatever inner source it claims.
			const sent = 3
			for i := range sent {
				src := []netip.Addr{gatewayBV4, clientV4, gatewayAV4}[i]
				sendUDP(t, b.gwB, tunnelPort, vxlanFrame(testVNI, src, sink, []byte("crafted by an intruder")))
			}
			// The client, after the intruder: had the gateway relayed
			// the intruder's frames, they would most likely arrive
			// first, else within the wait after.
			sendUDP(t, b.client, sink, []byte("client after intruder"))
			expectDatagram(t, received, "client after intruder", gatewayAV4)
			expectNothing(t, received, 300*time.Millisecond)
			waitDrops(t, b.gwA, sent)
			// Other VNIs are not the guard's (a gateway may be the
			// client of another egress, whose replies come by VXLAN).
			sendUDP(t, b.gwB, tunnelPort, vxlanFrame(testVNI+1, gatewayBV4, sink, []byte("other VNI")))
			time.Sleep(100 * time.Millisecond)
			if got := gatewayDrops(t, b.gwA); got != sent {
				t.Errorf("a frame of another VNI changed the drop count to %d", got)
			}
			if seen, err := seenAs(b.client, b.server4, 5*time.Second); err != nil || seen != gatewayAV4 {
				t.Errorf("after the intrusion the client reached the external host as %s (%v), want %s", seen, err, gatewayAV4)
			}

			// Syncing again keeps one copy of everything and the count.
			before := countEgress(t, b.gwA)
			if err := SyncEgressGateway(b.gwA.Path(), gateway); err != nil {
				t.Fatal(err)
			}
			if got := countEgress(t, b.gwA); got != before {
				t.Errorf("a second sync changed the gateway from %+v to %+v", before, got)
			}
			if got := gatewayDrops(t, b.gwA); got != sent {
				t.Errorf("after a second sync the gateway counts %d drops, want %d", got, sent)
			}

			// The client is no longer one: its tunnel traffic is
			// dropped, though its tunnel still points at the gateway.
			gateway.Clients = nil
			if err := SyncEgressGateway(b.gwA.Path(), gateway); err != nil {
				t.Fatal(err)
			}
			if got, want := countEgress(t, b.gwA), (EgressSummary{Links: 2, Rules: 2, NFTRules: 9, NFTSets: 2, NFTTable: true}); got != want {
				t.Errorf("gateway without clients holds %+v, want %+v", got, want)
			}
			sendUDP(t, b.client, sink, []byte("removed client"))
			waitDrops(t, b.gwA, sent+1)
			expectNothing(t, received, 500*time.Millisecond)

			// Back in the list, it gets out again.
			gateway.Clients = []EgressGatewayClient{me}
			if err := SyncEgressGateway(b.gwA.Path(), gateway); err != nil {
				t.Fatal(err)
			}
			sendUDP(t, b.client, sink, []byte("client again"))
			expectDatagram(t, received, "client again", gatewayAV4)
			if got := gatewayDrops(t, b.gwA); got != sent+1 {
				t.Errorf("gateway counts %d drops, want %d", got, sent+1)
			}

			if err := TeardownEgressGateway(b.gwA.Path()); err != nil {
				t.Fatal(err)
			}
			if got := countEgress(t, b.gwA); got != (EgressSummary{}) {
				t.Errorf("teardown left %+v", got)
			}
			if got := gatewayDrops(t, b.gwA); got != 0 {
				t.Errorf("after teardown the gateway counts %d drops", got)
			}
		})
	}
}
