package nodenet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// PeerRouter programs routes to other nodes' address blocks via those
// nodes' addresses, for flat L2 networks where no routing daemon runs.
type PeerRouter struct {
	// TableID is the table to install into; 0 means the main table.
	TableID int
	// Protocol marks the routes PeerRouter owns.
	Protocol netlink.RouteProtocol
}

func (pr *PeerRouter) table() int {
	if pr.TableID == 0 {
		return unix.RT_TABLE_MAIN
	}
	return pr.TableID
}

// Sync makes the table hold exactly one route "<block> via <node address>"
// for each entry of routes among routes of Protocol, replacing ones whose
// gateway changed and deleting the rest. It goes on after a failure and
// returns all failures joined.
func (pr *PeerRouter) Sync(routes map[netip.Prefix]netip.Addr) error {
	table := pr.table()
	var errs []error
	want := make([]*netlink.Route, 0, len(routes))
	seen := make(map[netip.Prefix]bool, len(routes))
	for p, gw := range routes {
		p, gw = p.Masked(), gw.Unmap()
		if seen[p] {
			continue
		}
		seen[p] = true
		if !gw.IsValid() || gw.Is4() != p.Addr().Unmap().Is4() {
			// Left out of want, so a route of ours to p goes too.
			errs = append(errs, fmt.Errorf("peer route %s via %s: gateway of another address family", p, gw))
			continue
		}
		want = append(want, &netlink.Route{Dst: ipNet(p), Gw: net.IP(gw.AsSlice())})
	}
	rs := routeSync{table: table, protocol: pr.Protocol, same: sameGateway}
	if err := rs.apply(want); err != nil {
		errs = append(errs, fmt.Errorf("sync peer routes: %w", err))
	}
	return errors.Join(errs...)
}

// sameGateway reports whether have goes through want's gateway alone.
func sameGateway(have netlink.Route, want *netlink.Route) bool {
	hgw, ok := addrOf(have.Gw)
	wgw, _ := addrOf(want.Gw)
	return ok && len(have.MultiPath) == 0 && hgw == wgw
}
