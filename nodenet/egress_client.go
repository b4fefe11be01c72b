package nodenet

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EgressTunnel is one egress a client pod uses.
type EgressTunnel struct {
	// VNI identifies the egress (1..MaxVNI).
	VNI uint32
	// Destinations are the prefixes sent through the tunnel.
	Destinations []netip.Prefix
	// Gateway is the address of the gateway pod the tunnel leads to. The
	// zero Addr means the egress has no usable gateway right now: its
	// destinations are then unreachable rather than sent on the normal
	// path with the pod's own address (fail closed).
	Gateway netip.Addr
	// Established are the addresses of the egress's other gateways that
	// are still alive (draining ones included): connections the pod
	// opened through one of them go on through it, while new ones take
	// Gateway (egress_sticky.go).
	Established []netip.Addr
}

// EgressClient is the whole egress configuration of one client pod.
type EgressClient struct {
	// IPv4 and IPv6 are the pod's addresses (either may be zero).
	IPv4, IPv6 netip.Addr
	// Uplink is the pod interface the tunnels run over; DefaultEgressUplink if empty.
	Uplink string
	// Bypass are destinations that stay on the normal path even when an
	// egress claims them: pod networks, service and node networks. The
	// link-local ranges and the gateways' addresses are always added.
	Bypass []netip.Prefix
	// Tunnels are the egresses of the pod; none removes everything.
	Tunnels []EgressTunnel
}

func (c *EgressClient) defaults() {
	if c.Uplink == "" {
		c.Uplink = DefaultEgressUplink
	}
	c.IPv4, c.IPv6 = c.IPv4.Unmap(), c.IPv6.Unmap()
}

// podAddr returns the pod's address of the family of a, if it has one.
func (c *EgressClient) podAddr(a netip.Addr) netip.Addr {
	if a.Unmap().Is4() {
		return c.IPv4
	}
	return c.IPv6
}

func (c *EgressClient) validate() error {
	var problems []string
	if len(c.Tunnels) > 0 && !c.IPv4.IsValid() && !c.IPv6.IsValid() {
		problems = append(problems, "the pod has no address")
	}
	if c.IPv4.IsValid() && !c.IPv4.Is4() {
		problems = append(problems, fmt.Sprintf("%s is not IPv4", c.IPv4))
	}
	if c.IPv6.IsValid() && (!c.IPv6.Is6() || c.IPv6.Is4In6()) {
		problems = append(problems, fmt.Sprintf("%s is not IPv6", c.IPv6))
	}
	seen := map[uint32]bool{}
	for _, t := range c.Tunnels {
		if t.VNI == 0 || t.VNI > MaxVNI {
			problems = append(problems, fmt.Sprintf("VNI %d not in 1..%d", t.VNI, MaxVNI))
		}
		if seen[t.VNI] {
			problems = append(problems, fmt.Sprintf("VNI %d given twice", t.VNI))
		}
		seen[t.VNI] = true
		if t.Gateway.IsValid() && !c.podAddr(t.Gateway).IsValid() {
			problems = append(problems, fmt.Sprintf("gateway %s of VNI %d is of a family the pod has no address of", t.Gateway, t.VNI))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %v", ErrInvalidEgress, problems)
	}
	return nil
}

// SyncEgressClient makes the egress configuration of the pod whose network
// namespace is at netnsPath exactly cfg: tunnel devices, routes and rules
// (docs/egress.md, "What each side programs"). It changes only what
// differs from cfg, so that a client moving to another gateway keeps its
// routes and only its FDB entry (and a bypass rule) changes.
func SyncEgressClient(netnsPath string, cfg EgressClient) error {
	cfg.defaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	tunnels := slices.Clone(cfg.Tunnels)
	slices.SortFunc(tunnels, func(a, b EgressTunnel) int { return cmp.Compare(a.VNI, b.VNI) })
	err := inPodNS(netnsPath, func(podNS ns.NetNS) error { return syncClient(podNS, &cfg, tunnels) })
	if err != nil {
		return fmt.Errorf("sync egress client in %s: %w", netnsPath, err)
	}
	return nil
}

// TeardownEgressClient removes every egress client setting from the pod's
// namespace. A namespace that is gone already is success.
func TeardownEgressClient(netnsPath string) error {
	err := inPodNS(netnsPath, func(podNS ns.NetNS) error { return syncClient(podNS, &EgressClient{}, nil) })
	if err != nil && !netnsGone(err) {
		return fmt.Errorf("tear down egress client in %s: %w", netnsPath, err)
	}
	return nil
}

// syncClient runs inside the pod's namespace.
func syncClient(podNS ns.NetNS, cfg *EgressClient, tunnels []EgressTunnel) error {
	mtu := 0
	if len(tunnels) > 0 {
		var err error
		if mtu, err = uplinkMTU(cfg.Uplink); err != nil {
			return err
		}
	}
	var errs []error
	links := map[string]netlink.Link{}
	for _, t := range tunnels {
		if !t.Gateway.IsValid() {
			continue
		}
		link, err := ensureClientTunnel(cfg, t, mtu)
		if err != nil {
			// Without its device the egress's routes fall back to
			// unreachable below: failing closed.
			errs = append(errs, fmt.Errorf("tunnel of VNI %d: %w", t.VNI, err))
			continue
		}
		links[link.Attrs().Name] = link
	}

	routes := clientRoutes(cfg, tunnels, links)
	if err := syncTableRoutes(EgressClientTable, routes); err != nil {
		errs = append(errs, err)
	}
	if err := syncRules([]int{EgressBypassPriority, EgressClientPriority}, clientRules(cfg, tunnels)); err != nil {
		errs = append(errs, err)
	}
	// Only tunnels whose device is there steer connections.
	var live []EgressTunnel
	for _, t := range tunnels {
		if _, ok := links[EgressClientLinkName(t.VNI)]; ok {
			live = append(live, t)
		}
	}
	if err := programClientNFT(int(podNS.Fd()), live); err != nil {
		errs = append(errs, err)
	}

	// Devices of egresses the pod no longer uses go last, once no route
	// points at them.
	existing, err := vxlanLinks(EgressClientLinkPrefix)
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range existing {
		if _, keep := links[l.Attrs().Name]; keep {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !isLinkNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// ensureClientTunnel programs the device, FDB entry and neighbours of one
// tunnel.
func ensureClientTunnel(cfg *EgressClient, t EgressTunnel, uplinkMTU int) (netlink.Link, error) {
	local := cfg.podAddr(t.Gateway)
	link, err := ensureVXLAN(vxlanSpec{
		name:  EgressClientLinkName(t.VNI),
		vni:   t.VNI,
		local: local,
		mac:   EgressClientMAC(local),
		mtu:   tunnelMTU(uplinkMTU, t.Gateway),
	})
	if err != nil {
		return nil, err
	}
	gwMAC := EgressGatewayMAC(t.VNI)
	if err := syncFDB(link, []fdbEntry{{mac: gwMAC, dst: t.Gateway}}); err != nil {
		return nil, err
	}
	var neighs []neighEntry
	if cfg.IPv4.IsValid() {
		neighs = append(neighs, neighEntry{ip: EgressNextHopIPv4, mac: gwMAC})
	}
	if cfg.IPv6.IsValid() {
		neighs = append(neighs, neighEntry{ip: EgressNextHopIPv6, mac: gwMAC})
	}
	if err := syncNeighs(link, neighs); err != nil {
		return nil, err
	}
	return link, nil
}

// clientRoutes returns the routes of EgressClientTable. When two egresses
// claim the same destination, the one with the lower VNI has it.
func clientRoutes(cfg *EgressClient, tunnels []EgressTunnel, links map[string]netlink.Link) []*netlink.Route {
	var routes []*netlink.Route
	seen := map[netip.Prefix]bool{}
	for _, t := range tunnels {
		link := links[EgressClientLinkName(t.VNI)]
		for _, d := range t.Destinations {
			d = netip.PrefixFrom(d.Addr().Unmap(), d.Bits()).Masked()
			src := cfg.podAddr(d.Addr())
			if !src.IsValid() || seen[d] {
				continue
			}
			seen[d] = true
			if link == nil {
				routes = append(routes, &netlink.Route{Dst: ipNet(d), Type: unix.RTN_UNREACHABLE})
				continue
			}
			r := &netlink.Route{
				Dst:       ipNet(d),
				LinkIndex: link.Attrs().Index,
				Src:       net.IP(src.AsSlice()),
			}
			if d.Addr().Is4() {
				r.Gw = net.IP(EgressNextHopIPv4.AsSlice())
				// The next hop is in no subnet of the device.
				r.Flags = int(netlink.FLAG_ONLINK)
			} else {
				r.Gw = net.IP(EgressNextHopIPv6.AsSlice())
			}
			routes = append(routes, r)
		}
	}
	return routes
}

// clientRules returns the policy rules of a client, none without tunnels.
func clientRules(cfg *EgressClient, tunnels []EgressTunnel) []*netlink.Rule {
	if len(tunnels) == 0 {
		return nil
	}
	bypass := slices.Clone(cfg.Bypass)
	bypass = append(bypass, linkLocalV4, linkLocalV6)
	for _, t := range tunnels {
		if t.Gateway.IsValid() {
			// The outer packets, to the gateway and to those that
			// keep established connections, stay out of the tunnels.
			for _, g := range append([]netip.Addr{t.Gateway}, t.Established...) {
				if g = g.Unmap(); g.IsValid() {
					bypass = append(bypass, netip.PrefixFrom(g, g.BitLen()))
				}
			}
		}
	}
	var rules []*netlink.Rule
	seen := map[netip.Prefix]bool{}
	for _, p := range bypass {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked()
		if seen[p] || !cfg.podAddr(p.Addr()).IsValid() {
			continue
		}
		seen[p] = true
		r := newRule(familyOf(p.Addr()), EgressBypassPriority, unix.RT_TABLE_MAIN)
		r.Dst = ipNet(p)
		rules = append(rules, r)
	}
	for _, a := range []netip.Addr{cfg.IPv4, cfg.IPv6} {
		if a.IsValid() {
			rules = append(rules, newRule(familyOf(a), EgressClientPriority, EgressClientTable))
		}
	}
	return rules
}
