package nodenet

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Links that never carry the node's own address, whatever routes say:
// bridges (docker0, cni0), dummies (kube-ipvs0 and nodelocaldns on a real
// node), pod veths and tunnels hold addresses of something else; so do
// kube-proxy's IPVS service addresses on kube-ipvs0, and lo.
var (
	notUplinkTypes = []string{"bridge", "dummy", linkTypeVeth, linkTypeVXLAN}
	notUplinkNames = []string{loopbackName, "kube-ipvs0"}
)

// IsUplinkCandidate reports whether a link of this name and type may carry
// the node's address.
func IsUplinkCandidate(name, linkType string) bool {
	return !slices.Contains(notUplinkTypes, linkType) && !slices.Contains(notUplinkNames, name)
}

// UplinkAddress is an address of the node found on the link its default
// route of the address's family leaves through.
type UplinkAddress struct {
	Addr netip.Addr
	Link string
}

// UplinkAddresses returns, for each family that has a default route in
// the main table through an up link that may carry the node's address
// (IsUplinkCandidate), that link's address: the route's preferred source
// if the link holds it, else the link's first global address of the
// family (not tentative, deprecated or temporary). The default route of
// the lowest metric that yields an address wins. IPv4 comes first.
func UplinkAddresses() ([]UplinkAddress, error) {
	links, err := retryDump("links", netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	infos := map[int]uplinkLink{}
	for _, l := range links {
		attrs := l.Attrs()
		info := uplinkLink{Name: attrs.Name, Type: l.Type(), Up: attrs.Flags&net.FlagUp != 0}
		if info.Up && IsUplinkCandidate(info.Name, info.Type) {
			addrs, err := retryDump("addresses", func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_ALL) })
			if err != nil {
				return nil, fmt.Errorf("list addresses of %s: %w", attrs.Name, err)
			}
			info.Addrs = usableAddrs(addrs)
		}
		infos[attrs.Index] = info
	}
	var defaults []defaultRoute
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := retryDump("routes", func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			dst, ok := routeDst(r, family)
			if !ok || dst.Bits() != 0 || r.Type != unix.RTN_UNICAST {
				continue
			}
			d := defaultRoute{V6: family == netlink.FAMILY_V6, Priority: r.Priority}
			d.Src, _ = addrOf(r.Src)
			if r.LinkIndex > 0 {
				d.Links = append(d.Links, r.LinkIndex)
			}
			for _, nh := range r.MultiPath {
				d.Links = append(d.Links, nh.LinkIndex)
			}
			defaults = append(defaults, d)
		}
	}
	return pickUplinkAddresses(infos, defaults), nil
}

// uplinkLink is what pickUplinkAddresses needs of a link: Addrs are its
// usable global addresses, in the kernel's order.
type uplinkLink struct {
	Name, Type string
	Up         bool
	Addrs      []netip.Addr
}

// defaultRoute is a default route of the main table: its preferred
// source (if any), metric, and the links of its next hops.
type defaultRoute struct {
	V6       bool
	Src      netip.Addr
	Priority int
	Links    []int
}

// pickUplinkAddresses is the choice UplinkAddresses makes, given the
// links by index and the default routes of both families.
func pickUplinkAddresses(links map[int]uplinkLink, routes []defaultRoute) []UplinkAddress {
	routes = slices.Clone(routes)
	slices.SortStableFunc(routes, func(a, b defaultRoute) int { return cmp.Compare(a.Priority, b.Priority) })
	var out []UplinkAddress
	for _, v6 := range []bool{false, true} {
		found := false
		for _, r := range routes {
			if r.V6 != v6 || found {
				continue
			}
			for _, idx := range r.Links {
				l, ok := links[idx]
				if !ok || !l.Up || !IsUplinkCandidate(l.Name, l.Type) {
					continue
				}
				var pick netip.Addr
				if r.Src.IsValid() && slices.Contains(l.Addrs, r.Src) {
					pick = r.Src
				} else if i := slices.IndexFunc(l.Addrs, func(a netip.Addr) bool { return a.Is6() == v6 }); i >= 0 {
					pick = l.Addrs[i]
				}
				if pick.IsValid() {
					out = append(out, UplinkAddress{Addr: pick, Link: l.Name})
					found = true
					break
				}
			}
		}
	}
	return out
}

// usableAddrs are the global unicast addresses among addrs that can stand
// for the node: not tentative or failed (DAD), deprecated, or temporary
// (IPv6 privacy addresses change over time).
func usableAddrs(addrs []netlink.Addr) []netip.Addr {
	const unusable = unix.IFA_F_TENTATIVE | unix.IFA_F_DADFAILED | unix.IFA_F_DEPRECATED
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := addrOf(a.IP)
		// IFA_F_TEMPORARY has the value of IFA_F_SECONDARY, which on
		// IPv4 only marks an address beyond a subnet's first.
		temporary := ip.Is6() && a.Flags&unix.IFA_F_TEMPORARY != 0
		if ok && ip.IsGlobalUnicast() && a.Flags&unusable == 0 && !temporary {
			out = append(out, ip)
		}
	}
	return out
}
