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

	// installed is what the owned routes of the table are, as of the last
	// Sync or Resync that went without error; nil before the first and
	// after an error, so that the next call compares with the table.
	installed map[netip.Prefix]netip.Addr
}

func (pr *PeerRouter) table() int {
	if pr.TableID == 0 {
		return unix.RT_TABLE_MAIN
	}
	return pr.TableID
}

// Sync makes the table hold exactly one route "<block> via <node address>"
// for each entry of routes among routes of Protocol, replacing ones whose
// gateway changed and deleting the rest. It writes only what differs from
// what it wrote last: listing a table of one route per block of the
// cluster cost a node 82 ms of CPU at 5,000 nodes (20,000 routes), on
// every change of any node's blocks. The first call, and one after an
// error, compares with the table as Resync does. It goes on after a
// failure and returns all failures joined. A PeerRouter is for one
// goroutine at a time.
func (pr *PeerRouter) Sync(routes map[netip.Prefix]netip.Addr) error {
	return pr.sync(routes, false)
}

// Resync is Sync comparing with a listing of the table, which puts back
// what was changed behind the PeerRouter's back (a route deleted by hand,
// or flushed by the kernel when its link went down).
func (pr *PeerRouter) Resync(routes map[netip.Prefix]netip.Addr) error {
	return pr.sync(routes, true)
}

func (pr *PeerRouter) sync(routes map[netip.Prefix]netip.Addr, full bool) error {
	var errs []error
	want := make(map[netip.Prefix]netip.Addr, len(routes))
	for p, gw := range routes {
		p, gw = p.Masked(), gw.Unmap()
		if _, ok := want[p]; ok {
			continue
		}
		if !gw.IsValid() || gw.Is4() != p.Addr().Unmap().Is4() {
			// Left out of want, so a route of ours to p goes too.
			errs = append(errs, fmt.Errorf("peer route %s via %s: gateway of another address family", p, gw))
			continue
		}
		want[p] = gw
	}
	var err error
	if full || pr.installed == nil {
		err = pr.syncTable(want)
	} else {
		err = pr.syncChanges(want)
	}
	pr.installed = want
	if err != nil {
		pr.installed = nil
		errs = append(errs, fmt.Errorf("sync peer routes: %w", err))
	}
	return errors.Join(errs...)
}

// syncTable makes the table's owned routes want, comparing with a listing
// of the table.
func (pr *PeerRouter) syncTable(want map[netip.Prefix]netip.Addr) error {
	routes := make([]*netlink.Route, 0, len(want))
	for p, gw := range want {
		routes = append(routes, pr.route(p, gw))
	}
	rs := routeSync{table: pr.table(), protocol: pr.Protocol, same: sameGateway}
	return rs.apply(routes)
}

// syncChanges writes the routes of want that differ from those installed,
// and deletes the installed ones want no longer has.
func (pr *PeerRouter) syncChanges(want map[netip.Prefix]netip.Addr) error {
	var errs []error
	for p, gw := range pr.installed {
		if _, ok := want[p]; ok {
			continue
		}
		r := pr.route(p, gw)
		if err := deleteRoute(r); err != nil {
			errs = append(errs, fmt.Errorf("delete route %s: %w", describeRoute(r), err))
		}
	}
	for p, gw := range want {
		if have, ok := pr.installed[p]; ok && have == gw {
			continue
		}
		r := pr.route(p, gw)
		if err := netlink.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("replace route %s: %w", describeRoute(r), err))
		}
	}
	return errors.Join(errs...)
}

// route is the owned route to block p via gw.
func (pr *PeerRouter) route(p netip.Prefix, gw netip.Addr) *netlink.Route {
	return &netlink.Route{Dst: ipNet(p), Gw: net.IP(gw.AsSlice()), Table: pr.table(), Protocol: pr.Protocol}
}

// sameGateway reports whether have goes through want's gateway alone.
func sameGateway(have netlink.Route, want *netlink.Route) bool {
	hgw, ok := addrOf(have.Gw)
	wgw, _ := addrOf(want.Gw)
	return ok && len(have.MultiPath) == 0 && hgw == wgw
}
