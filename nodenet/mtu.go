package nodenet

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultMTU is what UplinkMTU returns when no link tells anything better.
const DefaultMTU = 1500

// UplinkMTU returns the MTU pods on this node should use: that of the link
// carrying the IPv4 default route of the current netns, else that of the
// IPv6 default route. Without a default route it falls back to the largest
// MTU among up, non-loopback, non-veth links (a node routed by BGP may learn
// its default route later than pods start), and to DefaultMTU if there is
// none.
func UplinkMTU() (int, error) {
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		idx, err := defaultRouteLink(family)
		if err != nil {
			return 0, err
		}
		if idx == 0 {
			continue
		}
		link, err := netlink.LinkByIndex(idx)
		if err != nil {
			return 0, fmt.Errorf("find link %d of default route: %w", idx, err)
		}
		return link.Attrs().MTU, nil
	}

	links, err := retryDump("links", netlink.LinkList)
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	best := 0
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagUp == 0 || a.Flags&net.FlagLoopback != 0 || l.Type() == linkTypeVeth {
			continue
		}
		best = max(best, a.MTU)
	}
	if best == 0 {
		return DefaultMTU, nil
	}
	return best, nil
}

// Probe destinations for the default route: documentation addresses
// (RFC 5737, RFC 3849) that no node routes more specifically.
var (
	probeV4 = net.IPv4(192, 0, 2, 1)
	probeV6 = net.ParseIP("2001:db8::1")
)

// defaultRouteLink returns the index of the link of the preferred (lowest
// metric) unicast default route of family in the main table, 0 if none.
// It asks the kernel which FIB entry routes a documentation address, one
// request whatever the size of the table: a node's main table holds a
// route per pod, and with flat-L2 or BGP routing one per block of the
// whole cluster (thousands), which a dump on every ADD would read (10 ms
// per ADD at 5,000 routes). Only when that entry is not a unicast default
// route of the main table (policy routing, a route covering the probe)
// does it list the table.
func defaultRouteLink(family int) (int, error) {
	probe := probeV4
	if family == netlink.FAMILY_V6 {
		probe = probeV6
	}
	routes, err := netlink.RouteGetWithOptions(probe, &netlink.RouteGetOptions{FIBMatch: true})
	switch {
	case errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH):
		// No route at all, so no default route either.
		return 0, nil
	case err == nil && len(routes) == 1:
		r := routes[0]
		if dst, ok := routeDst(r, family); ok && dst.Bits() == 0 && r.Type == unix.RTN_UNICAST && r.Table == unix.RT_TABLE_MAIN {
			if li := routeLink(r); li != 0 {
				return li, nil
			}
		}
	}
	return defaultRouteLinkFromTable(family)
}

// listRoutes lists routes: netlink.RouteListFiltered, which reads the
// whole table whatever the filter. A variable so that tests can count the
// listings of the paths that should not need one.
var listRoutes = netlink.RouteListFiltered

// defaultRouteLinkFromTable finds the default route by listing the main
// table: the slow path of defaultRouteLink.
func defaultRouteLinkFromTable(family int) (int, error) {
	routes, err := retryDump("routes", func() ([]netlink.Route, error) {
		return listRoutes(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	idx, metric := 0, -1
	for _, r := range routes {
		dst, ok := routeDst(r, family)
		if !ok || dst.Bits() != 0 || r.Type != unix.RTN_UNICAST {
			continue
		}
		li := routeLink(r)
		if li == 0 {
			continue
		}
		if metric < 0 || r.Priority < metric {
			idx, metric = li, r.Priority
		}
	}
	return idx, nil
}

// routeLink is the link of a route: its own, or its first next hop's.
func routeLink(r netlink.Route) int {
	if r.LinkIndex == 0 && len(r.MultiPath) > 0 {
		return r.MultiPath[0].LinkIndex
	}
	return r.LinkIndex
}
