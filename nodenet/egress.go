package nodenet

// Egress NAT data path: what the two ends of a tunnel share. The client
// side is in egress_client.go, the gateway side in egress_gateway.go, and
// docs/egress.md draws the whole path.
//
// Addressing is deterministic so that nothing has to be resolved across the
// tunnel: the gateway's inner MAC derives from the VNI, a client's inner MAC
// from the client's outer address, and every neighbour and FDB entry is
// programmed permanent on both sides.

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Fixed parts of the egress data path. Tables, priorities and the mark live
// in pod network namespaces, which are Coil's alone, so they are constants.
const (
	// EgressVXLANPort is the UDP port of the tunnels (IANA's VXLAN port).
	EgressVXLANPort = 4789
	// MaxVNI is the largest VXLAN network identifier (24 bits).
	MaxVNI = 1<<24 - 1

	// EgressClientTable holds a client pod's routes to egress
	// destinations through the tunnels.
	EgressClientTable = 2010
	// EgressGatewayTable holds a gateway pod's routes back to its clients
	// through the tunnel.
	EgressGatewayTable = 1990

	// EgressGatewayPriority is the gateway's rule sending de-NATed replies
	// to EgressGatewayTable. It precedes the client rules so that a
	// gateway that is also a client of another egress still returns
	// replies through its own tunnel.
	EgressGatewayPriority = 1990
	// EgressBypassPriority is the client's rules keeping pod networks,
	// link-local addresses and the gateways on the normal path.
	EgressBypassPriority = 2000
	// EgressClientPriority is the client's rule consulting
	// EgressClientTable; a destination not in it falls through to main.
	EgressClientPriority = 2010

	// EgressMark marks, in a gateway pod, the connections that entered
	// through the tunnel (conntrack mark) and their replies (packet mark).
	EgressMark = 0xc011

	// egressProtocol marks the routes and rules egress owns in pod
	// namespaces, so that a sync never touches anything else.
	egressProtocol = 30

	// vxlanOverhead4 and vxlanOverhead6 are the bytes a VXLAN tunnel adds
	// over an IPv4 or IPv6 outer header: outer IP, UDP (8), VXLAN (8) and
	// inner Ethernet (14).
	vxlanOverhead4 = 20 + 8 + 8 + 14
	vxlanOverhead6 = 40 + 8 + 8 + 14
)

// Inner next hops a client routes egress destinations through. No interface
// holds them: a permanent neighbour entry maps them to the gateway's MAC.
var (
	EgressNextHopIPv4 = netip.MustParseAddr("169.254.255.1")
	EgressNextHopIPv6 = netip.MustParseAddr("fe80::ffff:1")
)

// Link-local ranges, which always stay on a client's normal path.
var (
	linkLocalV4 = netip.MustParsePrefix("169.254.0.0/16")
	linkLocalV6 = netip.MustParsePrefix("fe80::/10")
)

// Sentinel errors of the egress functions.
var (
	// ErrInvalidEgress is returned for a client or gateway configuration
	// that cannot be programmed.
	ErrInvalidEgress = errors.New("invalid egress configuration")
	// ErrForeignLink is returned when a pod's namespace holds a link under
	// a name coil uses that coil did not make (a pod with CAP_NET_ADMIN
	// can create any link in its own namespace): coil neither uses nor
	// deletes it.
	ErrForeignLink = errors.New("link of the wrong type under a name coil uses")
	// ErrPanic wraps a panic recovered while working in a pod's namespace.
	ErrPanic = errors.New("recovered panic")
)

// EgressClientLinkName is the name of a client pod's tunnel device of the
// egress with id vni.
func EgressClientLinkName(vni uint32) string {
	return fmt.Sprintf("%s%06x", EgressClientLinkPrefix, vni)
}

// EgressGatewayLinkName is the name of a gateway pod's tunnel device of the
// egress with id vni, for clients whose outer address is of the family of
// outer (a gateway has one device per family of its addresses).
func EgressGatewayLinkName(vni uint32, outer netip.Addr) string {
	if outer.Unmap().Is4() {
		return fmt.Sprintf("%s4-%06x", EgressGatewayLinkPrefix, vni)
	}
	return fmt.Sprintf("%s6-%06x", EgressGatewayLinkPrefix, vni)
}

// EgressGatewayMAC is the MAC of every gateway device of the egress with id
// vni: locally administered, unicast, and the same on every gateway pod, so
// that moving a client to another gateway only changes the FDB entry that
// says where to send the frames.
func EgressGatewayMAC(vni uint32) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0xc0, 0x11, byte(vni >> 16), byte(vni >> 8), byte(vni)}
}

// EgressClientMAC is the MAC of a client's tunnel device whose outer
// address is outer. For IPv4 the address itself is in the MAC, so two
// clients never share one; for IPv6, 40 bits of a hash of the address are
// (a clash needs two of a gateway's clients to collide in 2^40).
func EgressClientMAC(outer netip.Addr) net.HardwareAddr {
	outer = outer.Unmap()
	if outer.Is4() {
		b := outer.As4()
		return net.HardwareAddr{0x06, 0x00, b[0], b[1], b[2], b[3]}
	}
	b := outer.As16()
	sum := sha256.Sum256(b[:])
	return net.HardwareAddr{0x0a, sum[0], sum[1], sum[2], sum[3], sum[4]}
}

// vxlanSpec is a tunnel device as egress wants it.
type vxlanSpec struct {
	name  string
	vni   uint32
	local netip.Addr
	mac   net.HardwareAddr
	mtu   int
}

// ensureVXLAN makes the current netns hold the device spec describes, up,
// and returns it. A device of that name that differs in what cannot be
// changed in place (type, VNI, local address, port, learning) is replaced.
func ensureVXLAN(spec vxlanSpec) (netlink.Link, error) {
	link, err := netlink.LinkByName(spec.name)
	if err != nil && !isLinkNotFound(err) {
		return nil, fmt.Errorf("find %s: %w", spec.name, err)
	}
	if err == nil {
		vx, ok := link.(*netlink.Vxlan)
		if !ok {
			return nil, fmt.Errorf("%w: %s is a %s, not a vxlan device", ErrForeignLink, spec.name, link.Type())
		}
		src, _ := addrOf(vx.SrcAddr)
		if vx.VxlanId != int(spec.vni) || src != spec.local || vx.Port != EgressVXLANPort || vx.Learning {
			if err := netlink.LinkDel(link); err != nil && !isLinkNotFound(err) {
				return nil, fmt.Errorf("replace %s: %w", spec.name, err)
			}
			link = nil
		}
	} else {
		link = nil
	}
	if link == nil {
		vx := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{Name: spec.name, MTU: spec.mtu, HardwareAddr: spec.mac},
			VxlanId:   int(spec.vni),
			SrcAddr:   net.IP(spec.local.AsSlice()),
			Port:      EgressVXLANPort,
			// Frames go only where the FDB entries Coil programs say:
			// no learning, and no flooding (no all-zero entry).
			Learning: false,
		}
		if err := netlink.LinkAdd(vx); err != nil {
			return nil, fmt.Errorf("create vxlan %s id %d local %s: %w", spec.name, spec.vni, spec.local, err)
		}
		if link, err = netlink.LinkByName(spec.name); err != nil {
			return nil, fmt.Errorf("find %s after creating it: %w", spec.name, err)
		}
	}
	attrs := link.Attrs()
	if attrs.MTU != spec.mtu {
		if err := netlink.LinkSetMTU(link, spec.mtu); err != nil {
			return nil, fmt.Errorf("set MTU of %s to %d: %w", spec.name, spec.mtu, err)
		}
	}
	if attrs.HardwareAddr.String() != spec.mac.String() {
		if err := netlink.LinkSetHardwareAddr(link, spec.mac); err != nil {
			return nil, fmt.Errorf("set MAC of %s to %s: %w", spec.name, spec.mac, err)
		}
	}
	if attrs.Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("set %s up: %w", spec.name, err)
		}
	}
	return link, nil
}

// vxlanLinks returns the vxlan devices of the current netns whose name
// starts with prefix.
func vxlanLinks(prefix string) ([]netlink.Link, error) {
	links, err := retryDump("links", netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netlink.Link
	for _, l := range links {
		if l.Type() == linkTypeVXLAN && strings.HasPrefix(l.Attrs().Name, prefix) {
			out = append(out, l)
		}
	}
	return out, nil
}

// uplinkMTU returns the MTU of the pod interface that carries the tunnel.
func uplinkMTU(name string) (int, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("find uplink %q: %w", name, err)
	}
	return l.Attrs().MTU, nil
}

// tunnelMTU is the MTU of a tunnel over an uplink of MTU mtu whose outer
// packets are of the family of outer.
func tunnelMTU(mtu int, outer netip.Addr) int {
	if outer.Unmap().Is4() {
		return mtu - vxlanOverhead4
	}
	return mtu - vxlanOverhead6
}

// fdbEntry says where the frames for one inner MAC go.
type fdbEntry struct {
	mac net.HardwareAddr
	dst netip.Addr
}

// syncFDB makes the FDB of the vxlan device link hold exactly want.
func syncFDB(link netlink.Link, want []fdbEntry) error {
	idx := link.Attrs().Index
	have, err := retryDump("fdb", func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, unix.AF_BRIDGE) })
	if err != nil {
		return fmt.Errorf("list fdb of %s: %w", link.Attrs().Name, err)
	}
	wanted := map[string]netip.Addr{}
	for _, e := range want {
		wanted[e.mac.String()] = e.dst.Unmap()
	}
	ok := map[string]bool{}
	var errs []error
	for _, n := range have {
		dst, _ := addrOf(n.IP)
		mac := n.HardwareAddr.String()
		if w, found := wanted[mac]; found && w == dst && !ok[mac] {
			ok[mac] = true
			continue
		}
		n := n
		if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete fdb %s dst %s dev %s: %w", mac, dst, link.Attrs().Name, err))
		}
	}
	for _, e := range want {
		if ok[e.mac.String()] {
			continue
		}
		n := &netlink.Neigh{
			LinkIndex:    idx,
			Family:       unix.AF_BRIDGE,
			Flags:        netlink.NTF_SELF,
			State:        netlink.NUD_PERMANENT | netlink.NUD_NOARP,
			HardwareAddr: e.mac,
			IP:           net.IP(e.dst.Unmap().AsSlice()),
		}
		if err := netlink.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("add fdb %s dst %s dev %s: %w", e.mac, e.dst, link.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// neighEntry is one permanent neighbour.
type neighEntry struct {
	ip  netip.Addr
	mac net.HardwareAddr
}

// syncNeighs makes the permanent neighbour entries of link exactly want.
// Entries the kernel made itself (not permanent) are left to it.
func syncNeighs(link netlink.Link, want []neighEntry) error {
	idx := link.Attrs().Index
	have, err := retryDump("neighbours", func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list neighbours of %s: %w", link.Attrs().Name, err)
	}
	wanted := map[netip.Addr]string{}
	for _, e := range want {
		wanted[e.ip.Unmap()] = e.mac.String()
	}
	ok := map[netip.Addr]bool{}
	var errs []error
	for _, n := range have {
		if n.State&netlink.NUD_PERMANENT == 0 || (n.Family != unix.AF_INET && n.Family != unix.AF_INET6) {
			continue
		}
		ip, _ := addrOf(n.IP)
		if w, found := wanted[ip]; found && w == n.HardwareAddr.String() {
			ok[ip] = true
			continue
		}
		n := n
		if err := netlink.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete neighbour %s dev %s: %w", ip, link.Attrs().Name, err))
		}
	}
	for _, e := range want {
		if ok[e.ip.Unmap()] {
			continue
		}
		n := &netlink.Neigh{
			LinkIndex:    idx,
			Family:       familyOf(e.ip),
			State:        netlink.NUD_PERMANENT,
			IP:           net.IP(e.ip.Unmap().AsSlice()),
			HardwareAddr: e.mac,
		}
		if err := netlink.NeighSet(n); err != nil {
			errs = append(errs, fmt.Errorf("add neighbour %s lladdr %s dev %s: %w", e.ip, e.mac, link.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

func familyOf(a netip.Addr) int {
	if a.Unmap().Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// routeKey identifies a route by everything egress sets on it, so that a
// sync rewrites only routes that differ.
func routeKey(r *netlink.Route) string {
	family := r.Family
	if family == 0 && r.Dst != nil {
		if p, ok := prefixOf(r.Dst); ok {
			family = familyOf(p.Addr())
		}
	}
	dst, _ := routeDst(*r, family)
	typ := r.Type
	if typ == 0 {
		typ = unix.RTN_UNICAST
	}
	link := r.LinkIndex
	if typ != unix.RTN_UNICAST {
		link = 0 // the kernel puts unreachable IPv6 routes on lo
	}
	gw, _ := addrOf(r.Gw)
	src, _ := addrOf(r.Src)
	return fmt.Sprintf("%s type %d dev %d via %s src %s", dst, typ, link, gw, src)
}

// syncTableRoutes makes the routes of egressProtocol in table exactly want,
// which must have one route per destination. A route that differs is
// replaced in place, so traffic to it never misses a route.
func syncTableRoutes(table int, want []*netlink.Route) error {
	rs := routeSync{table: table, protocol: egressProtocol, same: func(have netlink.Route, want *netlink.Route) bool {
		return routeKey(&have) == routeKey(want)
	}}
	return rs.apply(want)
}

// ruleKey identifies a rule by everything egress sets on it.
func ruleKey(r *netlink.Rule) string {
	dst := ""
	if r.Dst != nil {
		if p, ok := prefixOf(r.Dst); ok {
			dst = p.String()
		}
	}
	return fmt.Sprintf("%d prio %d to %s mark %#x iif %s table %d", r.Family, r.Priority, dst, r.Mark, r.IifName, r.Table)
}

// syncRules makes the rules of egressProtocol whose priority is one of
// prios exactly want.
func syncRules(prios []int, want []*netlink.Rule) error {
	have, err := retryDump("rules", func() ([]netlink.Rule, error) { return netlink.RuleList(netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list rules: %w", err)
	}
	wanted := map[string]bool{}
	for _, r := range want {
		wanted[ruleKey(r)] = true
	}
	current := map[string]bool{}
	var errs []error
	for _, r := range have {
		if r.Protocol != egressProtocol || !slices.Contains(prios, r.Priority) {
			continue
		}
		k := ruleKey(&r)
		if wanted[k] && !current[k] {
			current[k] = true
			continue
		}
		if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete rule %s: %w", k, err))
		}
	}
	for _, r := range want {
		if current[ruleKey(r)] {
			continue
		}
		r.Protocol = egressProtocol
		if err := netlink.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("add rule %s: %w", ruleKey(r), err))
		}
	}
	return errors.Join(errs...)
}

// newRule returns a rule of family with the fields netlink's zero Rule
// would send wrongly (priority, flow, goto) set to "none".
func newRule(family, priority, table int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Priority = priority
	r.Table = table
	return r
}

// inPodNS runs fn inside the network namespace at path, passing fn that
// namespace (ns.Do would pass the caller's). A namespace that no longer
// exists makes an error netnsGone recognises.
func inPodNS(path string, fn func(podNS ns.NetNS) error) error {
	if path == "" {
		return fmt.Errorf("%w: empty netns path", ErrInvalidEgress)
	}
	podNS, err := ns.GetNS(path)
	if err != nil {
		return err
	}
	defer podNS.Close()
	// ns.Do runs fn on a goroutine of its own, where no caller's recover
	// reaches: whatever a pod put in its namespace must not take coild
	// down, so a panic becomes this pod's error.
	return podNS.Do(func(ns.NetNS) (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("%w: panic in netns %s: %v", ErrPanic, path, r)
			}
		}()
		return fn(podNS)
	})
}
