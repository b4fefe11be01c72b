package nodenet

import (
	"bufio"
	"context"
	"net/netip"
	"testing"
	"time"

	netnstest "github.com/coil-project/coil/internal/testenv/netns"
)

// TestEgressEstablishedKeepGateway moves a client from gateway A to B while
// A stays alive (listed in Established), as when A drains: a TCP
// connection opened through A goes on through A, a new one goes through B;
// once A is no longer listed, the old connection's packets go to B too.
func TestEgressEstablishedKeepGateway(t *testing.T) {
	tests := []struct {
		name               string
		gatewayA, gatewayB netip.Addr
		clientOuter        netip.Addr
		server             func(b *egressBed) netip.Addr
	}{
		{"outer ipv4", gatewayAV4, gatewayBV4, clientV4, func(*egressBed) netip.Addr { return externalV4 }},
		{"outer ipv6", gatewayAV6, gatewayBV6, clientV6, func(*egressBed) netip.Addr { return externalV6 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newEgressBed(t)
			me := EgressGatewayClient{Outer: tt.clientOuter, IPv4: clientV4, IPv6: clientV6}
			for _, gw := range []struct {
				path   string
				v4, v6 netip.Addr
			}{{b.gwA.Path(), gatewayAV4, gatewayAV6}, {b.gwB.Path(), gatewayBV4, gatewayBV6}} {
				// Both serve the client, as every gateway of an egress does.
				if err := SyncEgressGateway(gw.path, EgressGateway{VNI: testVNI, IPv4: gw.v4, IPv6: gw.v6, Clients: []EgressGatewayClient{me}}); err != nil {
					t.Fatal(err)
				}
			}
			client := func(gw netip.Addr, established ...netip.Addr) EgressClient {
				return EgressClient{IPv4: clientV4, IPv6: clientV6, Bypass: podNets,
					Tunnels: []EgressTunnel{{VNI: testVNI, Destinations: extNets, Gateway: gw, Established: established}}}
			}
			if err := SyncEgressClient(b.client.Path(), client(tt.gatewayA, tt.gatewayB)); err != nil {
				t.Fatal(err)
			}
			echo := netnstest.PeerEchoServer(t, b.external, tt.server(b))
			// Seen from outside: the gateway's address of the family of
			// the server.
			seenA, seenB := gatewayAV4, gatewayBV4
			if echo.Addr().Is6() {
				seenA, seenB = gatewayAV6, gatewayBV6
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := netnstest.DialIn(ctx, b.client.Path(), "tcp", echo.String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			r := bufio.NewReader(conn)
			ask := func(want netip.Addr, when string) {
				t.Helper()
				if seen, err := netnstest.AskPeer(conn, r, 3*time.Second); err != nil || seen != want {
					t.Fatalf("%s: the long-lived connection is seen as %s (%v), want %s", when, seen, err, want)
				}
			}
			ask(seenA, "through A")

			// B takes new connections; A stays alive.
			if err := SyncEgressClient(b.client.Path(), client(tt.gatewayB, tt.gatewayA)); err != nil {
				t.Fatal(err)
			}
			if got := countEgress(t, b.client); got.ClientNFTRules != 3 || got.FDB != 1 {
				t.Errorf("client holds %+v, want one FDB entry and three nftables rules (tag, mark, redirect)", got)
			}
			for range 3 {
				ask(seenA, "after the move, while A is alive")
			}
			if seen, err := seenAs(b.client, pickServer(b, echo), 3*time.Second); err != nil || seen != seenB {
				t.Fatalf("a new connection is seen as %s (%v), want through B %s", seen, err, seenB)
			}
			// Again: one copy of everything.
			before := countEgress(t, b.client)
			if err := SyncEgressClient(b.client.Path(), client(tt.gatewayB, tt.gatewayA)); err != nil {
				t.Fatal(err)
			}
			if got := countEgress(t, b.client); got != before {
				t.Errorf("a second sync changed the client from %+v to %+v", before, got)
			}
			ask(seenA, "after a second sync")

			// A is gone: nothing steers to it any more.
			if err := SyncEgressClient(b.client.Path(), client(tt.gatewayB)); err != nil {
				t.Fatal(err)
			}
			if got := countEgress(t, b.client); got.ClientNFTRules != 1 {
				t.Errorf("client holds %d nftables rules, want the tagging one", got.ClientNFTRules)
			}
			if err := TeardownEgressClient(b.client.Path()); err != nil {
				t.Fatal(err)
			}
			if got := countEgress(t, b.client); got != (EgressSummary{}) {
				t.Errorf("teardown left %+v", got)
			}
		})
	}
}

// pickServer returns the bed's peer server of the family of echo.
func pickServer(b *egressBed, echo netip.AddrPort) netip.AddrPort {
	if echo.Addr().Is6() {
		return b.server6
	}
	return b.server4
}
