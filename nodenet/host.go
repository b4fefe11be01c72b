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
		family := netlink.FAMILY_V4
		if a.Is6() {
			family = netlink.FAMILY_V6
		}
		routes, err := retryDump("routes", func() ([]netlink.Route, error) {
			return netlink.RouteListFiltered(family, &netlink.Route{Dst: hostNet(a), Table: unix.RT_TABLE_MAIN},
				netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("list host routes to %s: %w", a, err))
			continue
		}
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
