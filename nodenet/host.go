package nodenet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"

	"github.com/vishvananda/netlink"
)

// coilVethName matches the host veth names HostVethName produces, so that
// coild never touches veths of another plugin running beside it.
var coilVethName = regexp.MustCompile(`^veth[0-9a-f]{11}$`)

// IsCoilVeth reports whether name has the shape of a Coil host veth name.
func IsCoilVeth(name string) bool { return coilVethName.MatchString(name) }

// EnsureHostRoutes restores the host routes to a pod's addresses through its
// host veth (after an operator flushed them, say). A missing veth is not an
// error: the pod is gone or not set up yet, and the CNI plugin owns that.
func EnsureHostRoutes(hostVeth string, addrs []netip.Addr) error {
	link, err := netlink.LinkByName(hostVeth)
	if err != nil {
		if isLinkNotFound(err) {
			return nil
		}
		return fmt.Errorf("find host veth %q: %w", hostVeth, err)
	}
	var errs []error
	for _, a := range addrs {
		if err := netlink.RouteReplace(hostRoute(link.Attrs().Index, a)); err != nil {
			errs = append(errs, fmt.Errorf("route %s via %s: %w", a, hostVeth, err))
		}
	}
	return errors.Join(errs...)
}

// NodeAddresses returns the global unicast addresses of the node's up,
// non-loopback, non-veth links: what other nodes route pod blocks through.
func NodeAddresses() ([]netip.Addr, error) {
	links, err := retryDump("links", netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netip.Addr
	for _, l := range links {
		attrs := l.Attrs()
		if attrs.Flags&net.FlagUp == 0 || l.Type() == linkTypeVeth || l.Type() == linkTypeVXLAN || attrs.Name == loopbackName {
			continue
		}
		addrs, err := retryDump("addresses", func() ([]netlink.Addr, error) { return netlink.AddrList(l, netlink.FAMILY_ALL) })
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", attrs.Name, err)
		}
		for _, a := range addrs {
			ip, ok := addrOf(a.IP)
			if ok && ip.IsGlobalUnicast() {
				out = append(out, ip)
			}
		}
	}
	return out, nil
}
