package nodenet

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// ipNet converts a prefix to the net.IPNet netlink wants. IPv4 prefixes keep
// a 4-byte IP so the kernel sees family AF_INET.
func ipNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	addr := p.Addr().Unmap()
	return &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(p.Bits(), addr.BitLen())}
}

// hostNet returns the single-address prefix (/32 or /128) of addr.
func hostNet(addr netip.Addr) *net.IPNet {
	addr = addr.Unmap()
	return ipNet(netip.PrefixFrom(addr, addr.BitLen()))
}

// prefixOf converts a net.IPNet from netlink to a netip.Prefix; ok is false
// for nil or malformed values.
func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	addr = addr.Unmap()
	if bits != addr.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(addr, ones).Masked(), true
}

// addrOf converts a net.IP from netlink to a netip.Addr (IPv4 unmapped).
func addrOf(ip net.IP) (netip.Addr, bool) {
	addr, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}, false
	}
	return addr.Unmap(), true
}

// Default route destinations of both families.
var (
	defaultV4 = netip.MustParsePrefix("0.0.0.0/0")
	defaultV6 = netip.MustParsePrefix("::/0")
)

// routeDst returns a route's destination as a prefix, mapping the nil
// destination netlink may use for default routes to 0.0.0.0/0 or ::/0.
func routeDst(r netlink.Route, family int) (netip.Prefix, bool) {
	if r.Dst == nil {
		if family == netlink.FAMILY_V6 {
			return defaultV6, true
		}
		return defaultV4, true
	}
	return prefixOf(r.Dst)
}
