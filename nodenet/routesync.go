package nodenet

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeSync owns the routes of one protocol in one kernel routing table.
// Routes of other protocols in the table are never touched, so the table
// can be shared with an operator or another program.
type routeSync struct {
	// table is the routing table id.
	table int
	// protocol marks the routes owned.
	protocol netlink.RouteProtocol
	// same reports whether have, a route of the table, already is want;
	// both have the same destination. nil means any owned route to the
	// destination will do.
	same func(have netlink.Route, want *netlink.Route) bool
}

// apply makes the owned routes of the table exactly want, one route per
// destination: a destination given twice is an error and only its first
// route is used. Stale owned routes and extra routes to a wanted
// destination are deleted first; then each wanted route that is missing
// or differs is written with RouteReplace, which overwrites a differing
// route of the same metric in place, so traffic to it never finds no
// route. apply sets Table and Protocol on the routes of want. It goes on
// after a failure and returns all failures joined.
func (s routeSync) apply(want []*netlink.Route) error {
	var errs []error
	wanted := make(map[netip.Prefix]*netlink.Route, len(want))
	order := make([]netip.Prefix, 0, len(want))
	for _, r := range want {
		dst, ok := prefixOf(r.Dst)
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("route %v table %d: no destination", r.Dst, s.table))
			continue
		case wanted[dst] != nil:
			errs = append(errs, fmt.Errorf("route %s table %d: destination given twice", dst, s.table))
			continue
		}
		r.Table, r.Protocol = s.table, s.protocol
		wanted[dst] = r
		order = append(order, dst)
	}

	have, err := tableRoutes(s.table, s.protocol)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	var drop []netlink.Route
	byDst := make(map[netip.Prefix][]netlink.Route, len(have))
	for _, r := range have {
		dst, ok := routeDst(r, r.Family)
		if !ok || wanted[dst] == nil {
			drop = append(drop, r)
			continue
		}
		byDst[dst] = append(byDst[dst], r)
	}
	var write []*netlink.Route
	for _, dst := range order {
		w := wanted[dst]
		rs := byDst[dst]
		keep := -1
		for i := range rs {
			if s.same == nil || s.same(rs[i], w) {
				keep = i
				break
			}
		}
		if keep < 0 {
			// Not there yet. A route RouteReplace will overwrite
			// stays until then; any other goes.
			write = append(write, w)
			for i := range rs {
				if sameSlot(rs[i], w) {
					keep = i
					break
				}
			}
		}
		for i := range rs {
			if i != keep {
				drop = append(drop, rs[i])
			}
		}
	}

	for i := range drop {
		if err := deleteRoute(&drop[i]); err != nil {
			errs = append(errs, fmt.Errorf("delete route %s: %w", describeRoute(&drop[i]), err))
		}
	}
	for _, r := range write {
		if err := netlink.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("replace route %s: %w", describeRoute(r), err))
		}
	}
	return errors.Join(errs...)
}

// sameSlot reports whether RouteReplace of want overwrites have: the kernel
// replaces the route of the same destination, TOS and metric.
func sameSlot(have netlink.Route, want *netlink.Route) bool {
	return have.Tos == want.Tos && routeMetric(&have) == routeMetric(want)
}

// routeMetric is the metric the kernel gives a route: IPv6 routes
// without one get 1024.
func routeMetric(r *netlink.Route) int {
	if r.Priority != 0 {
		return r.Priority
	}
	if p, ok := prefixOf(r.Dst); ok && p.Addr().Is6() || r.Dst == nil && r.Family == netlink.FAMILY_V6 {
		return 1024
	}
	return 0
}

// describeRoute names a route for an error message.
func describeRoute(r *netlink.Route) string {
	s := "default"
	if r.Dst != nil {
		s = r.Dst.String()
	}
	if r.Type != 0 && r.Type != unix.RTN_UNICAST {
		s = fmt.Sprintf("type %d %s", r.Type, s)
	}
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	if r.LinkIndex != 0 {
		s += fmt.Sprintf(" dev %d", r.LinkIndex)
	}
	return s + fmt.Sprintf(" table %d protocol %d", r.Table, r.Protocol)
}
