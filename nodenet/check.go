package nodenet

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// CheckPod verifies that a pod's links, addresses, routes and neighbour
// entries are as SetupPod makes them. A difference is reported as an error
// wrapping ErrMismatch that lists every missing or wrong item; a failure to
// look at the kernel state at all is returned as is.
func CheckPod(cfg PodConfig) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	var problems []string
	report := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf(format, args...))
	}

	host, err := netlink.LinkByName(cfg.HostVethName)
	if err != nil {
		if isLinkNotFound(err) {
			return fmt.Errorf("%w: host veth %q not found", ErrMismatch, cfg.HostVethName)
		}
		return fmt.Errorf("find host veth %q: %w", cfg.HostVethName, err)
	}
	checkLink(host, linkTypeVeth, cfg.MTU, "host veth "+cfg.HostVethName, report)
	hostIdx := host.Attrs().Index

	for _, a := range []netip.Addr{cfg.IPv4, cfg.IPv6} {
		if !a.IsValid() {
			continue
		}
		ok, err := hasRoute(hostRoute(hostIdx, a))
		if err != nil {
			return err
		}
		if !ok {
			report("host route %s dev %s missing", a, cfg.HostVethName)
		}
	}

	err = ns.WithNetNSPath(cfg.NetNSPath, func(ns.NetNS) error {
		return checkPodSide(cfg, hostIdx, host.Attrs().HardwareAddr, report)
	})
	if err != nil {
		return fmt.Errorf("check pod netns %q: %w", cfg.NetNSPath, err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrMismatch, strings.Join(problems, "; "))
	}
	return nil
}

// checkLink reports a link of the wrong type or MTU, or one that is down.
func checkLink(l netlink.Link, typ string, mtu int, what string, report func(string, ...any)) {
	if l.Type() != typ {
		report("%s is of type %s, not %s", what, l.Type(), typ)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		report("%s is down", what)
	}
	if mtu > 0 && l.Attrs().MTU != mtu {
		report("%s has MTU %d, not %d", what, l.Attrs().MTU, mtu)
	}
}

// checkPodSide runs inside the pod netns.
func checkPodSide(cfg PodConfig, hostIdx int, hostMAC net.HardwareAddr, report func(string, ...any)) error {
	link, err := netlink.LinkByName(cfg.IfName)
	if err != nil {
		if isLinkNotFound(err) {
			report("interface %s not found in pod", cfg.IfName)
			return nil
		}
		return fmt.Errorf("find %q: %w", cfg.IfName, err)
	}
	what := "pod interface " + cfg.IfName
	checkLink(link, linkTypeVeth, cfg.MTU, what, report)
	// IFLA_LINK of a veth is its peer's index in the peer's namespace.
	if link.Attrs().ParentIndex != hostIdx {
		report("%s is not paired with host veth %s", what, cfg.HostVethName)
	}
	idx := link.Attrs().Index

	addrs, err := retryDump("pod addresses", func() ([]netlink.Addr, error) {
		return netlink.AddrList(link, netlink.FAMILY_ALL)
	})
	if err != nil {
		return fmt.Errorf("list addresses of %q: %w", cfg.IfName, err)
	}
	have := make(map[netip.Prefix]bool, len(addrs))
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok {
			have[netip.PrefixFrom(p.Addr(), p.Bits())] = true
		}
	}
	for _, a := range []netip.Addr{cfg.IPv4, cfg.IPv6} {
		if !a.IsValid() {
			continue
		}
		a = a.Unmap()
		if !have[netip.PrefixFrom(a, a.BitLen())] {
			report("address %s/%d missing on %s", a, a.BitLen(), what)
		}
	}

	for _, pair := range []struct{ addr, gw netip.Addr }{{cfg.IPv4, GatewayIPv4}, {cfg.IPv6, GatewayIPv6}} {
		if !pair.addr.IsValid() {
			continue
		}
		var routes []*netlink.Route
		if !cfg.Secondary {
			routes = podRoutes(idx, pair.gw)
		}
		for _, r := range routes {
			ok, err := hasRoute(r)
			if err != nil {
				return err
			}
			if !ok {
				if r.Gw != nil {
					report("route %s via %s dev %s missing in pod", r.Dst, r.Gw, cfg.IfName)
				} else {
					report("route %s dev %s missing in pod", r.Dst, cfg.IfName)
				}
			}
		}
		ok, err := hasNeigh(podNeigh(idx, pair.gw, hostMAC))
		if err != nil {
			return err
		}
		if !ok {
			report("permanent neighbour %s lladdr %s missing in pod", pair.gw, hostMAC)
		}
	}
	return nil
}

// hasRoute reports whether the main table of the current netns has a route
// with the destination, gateway and link of want.
func hasRoute(want *netlink.Route) (bool, error) {
	family := netlink.FAMILY_V4
	if want.Dst.IP.To4() == nil {
		family = netlink.FAMILY_V6
	}
	wantDst, _ := prefixOf(want.Dst)
	if wantDst.IsSingleIP() && want.Gw == nil {
		// A host route (the node's to a pod): the kernel's answer for the
		// address settles it when it is that route, without listing a
		// table that holds a route per block of the cluster.
		if r, found, err := hostRouteTo(wantDst.Addr()); err == nil && found && r.LinkIndex == want.LinkIndex {
			return true, nil
		}
	}
	routes, err := retryDump("routes", func() ([]netlink.Route, error) {
		return listRoutes(family, &netlink.Route{LinkIndex: want.LinkIndex}, netlink.RT_FILTER_OIF)
	})
	if err != nil {
		return false, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		dst, ok := routeDst(r, family)
		if !ok || dst != wantDst {
			continue
		}
		if want.Gw != nil && !r.Gw.Equal(want.Gw) {
			continue
		}
		return true, nil
	}
	return false, nil
}

// hasNeigh reports whether the current netns has a permanent neighbour
// entry for want's address with want's hardware address.
func hasNeigh(want *netlink.Neigh) (bool, error) {
	neighs, err := retryDump("neighbours", func() ([]netlink.Neigh, error) {
		return netlink.NeighList(want.LinkIndex, want.Family)
	})
	if err != nil {
		return false, fmt.Errorf("list neighbours: %w", err)
	}
	for _, n := range neighs {
		if n.IP.Equal(want.IP) && bytes.Equal(n.HardwareAddr, want.HardwareAddr) && n.State&netlink.NUD_PERMANENT != 0 {
			return true, nil
		}
	}
	return false, nil
}
