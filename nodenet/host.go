package nodenet

import (
	"errors"
	"fmt"
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
