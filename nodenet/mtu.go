package nodenet

import (
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

// defaultRouteLink returns the index of the link of the preferred (lowest
// metric) unicast default route of family in the main table, 0 if none.
func defaultRouteLink(family int) (int, error) {
	routes, err := retryDump("routes", func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
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
		li := r.LinkIndex
		if li == 0 && len(r.MultiPath) > 0 {
			li = r.MultiPath[0].LinkIndex
		}
		if li == 0 {
			continue
		}
		if metric < 0 || r.Priority < metric {
			idx, metric = li, r.Priority
		}
	}
	return idx, nil
}
