package nodenet

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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

// RemoveHostRoutes deletes the host routes to a pod's addresses (main
// table, through a Coil host veth), which is what stops traffic to the pod
// at once, and returns the index and name of the host veth they went
// through, or 0 and "" when there were none. Deleting the veth itself is slow (the kernel waits
// for in-flight packets: 30-50 ms), so coild does that afterwards
// (DeleteHostLink), off the DEL's critical path.
func RemoveHostRoutes(addrs []netip.Addr) (int, string, error) {
	index, name := 0, ""
	var errs []error
	for _, a := range addrs {
		i, n, err := removeHostRoutesTo(a)
		if err != nil {
			errs = append(errs, err)
		}
		if i != 0 {
			index, name = i, n
		}
	}
	return index, name, errors.Join(errs...)
}

// maxHostRoutes bounds how many host routes to one address the quick path
// deletes before it hands over to the listing; one is the rule.
const maxHostRoutes = 4

// removeHostRoutesTo deletes the host routes to a through Coil host veths
// in the main table. It asks the kernel which route takes a, one request
// whatever the size of the table (a node's main table holds a route per
// pod, and with flat-L2 or BGP routing one per block of the cluster:
// listing it on every DEL would cost coild milliseconds at a few thousand
// nodes), deletes it if it is such a host route, and asks again. Only an
// answer it cannot act on (another table, someone else's host route in
// front) makes it list the table.
func removeHostRoutesTo(a netip.Addr) (int, string, error) {
	index, name := 0, ""
	for range maxHostRoutes {
		r, found, err := hostRouteTo(a)
		if err != nil || !found {
			if err == nil {
				return index, name, nil
			}
			break
		}
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil || link.Type() != linkTypeVeth || !IsCoilVeth(link.Attrs().Name) {
			break
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return index, name, fmt.Errorf("delete host route to %s via %s: %w", a, link.Attrs().Name, err)
		}
		index, name = r.LinkIndex, link.Attrs().Name
	}
	i, n, err := removeListedHostRoutes(a)
	if i != 0 {
		index, name = i, n
	}
	return index, name, err
}

// hostRouteTo returns the route the kernel picks for a (its FIB entry)
// when that is a gateway-less host route (/32, /128) of the main table
// through a link; found is false when a is not routed that way at all.
// An error means the answer is not conclusive: another table answered
// (policy routing, a local address), or the request failed.
func hostRouteTo(a netip.Addr) (netlink.Route, bool, error) {
	a = a.Unmap()
	routes, err := netlink.RouteGetWithOptions(a.AsSlice(), &netlink.RouteGetOptions{FIBMatch: true})
	if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) {
		return netlink.Route{}, false, nil
	}
	if err != nil {
		return netlink.Route{}, false, fmt.Errorf("look up the route to %s: %w", a, err)
	}
	if len(routes) != 1 {
		return netlink.Route{}, false, fmt.Errorf("look up the route to %s: %d answers", a, len(routes))
	}
	r := routes[0]
	if r.Table != unix.RT_TABLE_MAIN {
		return netlink.Route{}, false, fmt.Errorf("route to %s is in table %d", a, r.Table)
	}
	dst, ok := prefixOf(r.Dst)
	if !ok || dst.Bits() != a.BitLen() {
		// The main table has no route to a alone: the longest match
		// is a shorter prefix (a block, the default route).
		return netlink.Route{}, false, nil
	}
	if r.LinkIndex <= 0 || r.Gw != nil || r.Type != unix.RTN_UNICAST {
		return netlink.Route{}, false, fmt.Errorf("route to %s is not a host route through a link", a)
	}
	return r, true, nil
}

// removeListedHostRoutes is the slow path of removeHostRoutesTo: it lists
// the main table and deletes every host route to a through a Coil veth.
func removeListedHostRoutes(a netip.Addr) (int, string, error) {
	index, name := 0, ""
	family := netlink.FAMILY_V4
	if a.Is6() {
		family = netlink.FAMILY_V6
	}
	routes, err := retryDump("routes", func() ([]netlink.Route, error) {
		return listRoutes(family, &netlink.Route{Dst: hostNet(a), Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return 0, "", fmt.Errorf("list host routes to %s: %w", a, err)
	}
	var errs []error
	for _, r := range routes {
		if r.LinkIndex <= 0 || r.Gw != nil {
			continue
		}
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil || link.Type() != linkTypeVeth || !IsCoilVeth(link.Attrs().Name) {
			// Not a pod route of Coil's: left alone.
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete host route to %s via %s: %w", a, link.Attrs().Name, err))
			continue
		}
		index, name = r.LinkIndex, link.Attrs().Name
	}
	return index, name, errors.Join(errs...)
}

// DeleteHostLink deletes the host link at index, provided it still has the
// name it had when found: the kernel does not hand an index out again for
// a long time, and the name guards against the rest. A link already gone
// is success.
func DeleteHostLink(index int, name string) error {
	link, err := netlink.LinkByIndex(index)
	if err != nil {
		if isLinkNotFound(err) {
			return nil
		}
		return fmt.Errorf("find link %d: %w", index, err)
	}
	if link.Attrs().Name != name {
		return nil
	}
	if err := netlink.LinkDel(link); err != nil && !isLinkNotFound(err) {
		return fmt.Errorf("delete host link %q: %w", name, err)
	}
	return nil
}
