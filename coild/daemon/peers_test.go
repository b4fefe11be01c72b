package daemon

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/coil-project/coil/model"
)

func TestPeerRoutes(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	topo := model.Topology{
		Nodes: []model.Node{
			{Name: "self", Addresses: []netip.Addr{a("192.168.0.1")}},
			{Name: "v4", Addresses: []netip.Addr{a("192.168.0.2")}},
			{Name: "dual", Addresses: []netip.Addr{a("fd00::3"), a("192.168.0.3")}},
		},
		Blocks: []model.Block{
			{Node: "self", IPv4: p("10.0.0.0/28")},
			{Node: "v4", IPv4: p("10.0.0.16/28"), IPv6: p("fd01::10/124")},
			{Node: "dual", IPv4: p("10.0.0.32/28"), IPv6: p("fd01::20/124")},
			{Node: "gone", IPv4: p("10.0.0.48/28")},
		},
	}
	got := peerRoutes("self", topo)
	want := map[netip.Prefix]netip.Addr{
		p("10.0.0.16/28"): a("192.168.0.2"),
		p("10.0.0.32/28"): a("192.168.0.3"),
		p("fd01::20/124"): a("fd00::3"),
	}
	if len(got) != len(want) {
		t.Fatalf("routes = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("route %s via %s, want %s", k, got[k], v)
		}
	}
}

// BenchmarkPeerRoutes: what computing the wanted routes costs a node on
// every change of the cluster's blocks in --flat-l2 mode, at 5,000 nodes
// of 4 blocks each (the part of a change that still grows with the
// cluster, beside comparing them with what was written).
func BenchmarkPeerRoutes(b *testing.B) {
	var topo model.Topology
	for n := range 5000 {
		name := fmt.Sprintf("node-%d", n)
		topo.Nodes = append(topo.Nodes, model.Node{Name: name, Addresses: []netip.Addr{netip.AddrFrom4([4]byte{192, 168, byte(n >> 8), byte(n)})}})
		for k := range 4 {
			i := n*4 + k
			topo.Blocks = append(topo.Blocks, model.Block{Node: name, IPv4: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 11), byte(i >> 3), byte(i&7) << 5}), 27)})
		}
	}
	for b.Loop() {
		if len(peerRoutes("node-0", topo)) != 4*4999 {
			b.Fatal("wrong routes")
		}
	}
}
