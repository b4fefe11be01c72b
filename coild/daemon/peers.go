package daemon

import (
	"net/netip"

	"github.com/coil-project/coil/model"
)

// peerRoutes computes the routes of flat-L2 mode: every block owned by
// another node, via that node's address of the block's family. Blocks of
// nodes without a record or without an address of the family are left
// out: a route to nowhere would only black-hole traffic.
func peerRoutes(self string, topo model.Topology) map[netip.Prefix]netip.Addr {
	gateways := make(map[string][2]netip.Addr, len(topo.Nodes)) // node -> IPv4, IPv6
	for _, n := range topo.Nodes {
		var gw [2]netip.Addr
		for _, a := range n.Addresses {
			switch {
			case a.Is4() && !gw[0].IsValid():
				gw[0] = a
			case a.Is6() && !gw[1].IsValid():
				gw[1] = a
			}
		}
		gateways[n.Name] = gw
	}
	routes := make(map[netip.Prefix]netip.Addr, len(topo.Blocks))
	for _, b := range topo.Blocks {
		if b.Node == self {
			continue
		}
		gw, ok := gateways[b.Node]
		if !ok {
			continue
		}
		if b.IPv4.IsValid() && gw[0].IsValid() {
			routes[b.IPv4] = gw[0]
		}
		if b.IPv6.IsValid() && gw[1].IsValid() {
			routes[b.IPv6] = gw[1]
		}
	}
	return routes
}
