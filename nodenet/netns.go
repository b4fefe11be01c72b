package nodenet

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Errors of CheckPodNetNS and CheckPodAddresses, for callers to answer
// "bad request" with.
var (
	// ErrNotNetNS: the path does not name a network namespace.
	ErrNotNetNS = errors.New("not a network namespace")
	// ErrHostNetNS: the path names the host's own network namespace
	// (for example /proc/self/ns/net); coil configures only pods.
	ErrHostNetNS = errors.New("the host's own network namespace, not a pod's")
	// ErrAddressNotInNetNS: the namespace does not hold the pod interface
	// with the addresses allocated to it.
	ErrAddressNotInNetNS = errors.New("the namespace does not hold the pod's addresses")
)

// NetNSID identifies a network namespace: the device and inode of its nsfs
// file, the same whatever path names it.
type NetNSID struct{ Dev, Ino uint64 }

// NetNSIDOf returns the identity of the namespace at path. For coild's own
// namespace use /proc/thread-self/ns/net, read by a goroutine not locked
// into another namespace: /proc/self names the main thread, which may be
// running a goroutine that entered a pod's namespace at that moment.
func NetNSIDOf(path string) (NetNSID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return NetNSID{}, fmt.Errorf("netns %q: %w", path, err)
	}
	return NetNSID{Dev: st.Dev, Ino: st.Ino}, nil
}

// CheckPodNetNS accepts path only if it names a network namespace other
// than host. A path comes from a request, so it is not trusted: it may
// name the host's own namespace, which coild would then program as if it
// were a pod's, or a file that is no namespace at all.
func CheckPodNetNS(path string, host NetNSID) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("netns %q: %w: not an absolute path", path, ErrNotNetNS)
	}
	// statfs first, without opening: a FIFO or a device would block or
	// act on open.
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return fmt.Errorf("netns %q: %w: %v", path, ErrNotNetNS, err)
	}
	if fs.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("netns %q: %w: not on nsfs", path, ErrNotNetNS)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns %q: %w: %v", path, ErrNotNetNS, err)
	}
	defer unix.Close(fd)
	if t, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE); err != nil || t != unix.CLONE_NEWNET {
		return fmt.Errorf("netns %q: %w: another kind of namespace", path, ErrNotNetNS)
	}
	var pod unix.Stat_t
	if err := unix.Fstat(fd, &pod); err != nil {
		return fmt.Errorf("netns %q: %w", path, err)
	}
	if (NetNSID{Dev: pod.Dev, Ino: pod.Ino}) == host {
		return fmt.Errorf("netns %q: %w", path, ErrHostNetNS)
	}
	return nil
}

// CheckPodAddresses accepts the namespace at path only if its interface
// ifName holds every address of addrs: the proof that it is the namespace
// of the pod these addresses were allocated to.
func CheckPodAddresses(path, ifName string, addrs []netip.Addr) error {
	err := inPodNS(path, func(ns.NetNS) error {
		link, err := netlink.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("%w: find %q: %v", ErrAddressNotInNetNS, ifName, err)
		}
		have, err := netlink.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list addresses of %q: %w", ifName, err)
		}
		for _, a := range addrs {
			if !slices.ContainsFunc(have, func(h netlink.Addr) bool {
				ha, ok := netip.AddrFromSlice(h.IP)
				return ok && ha.Unmap() == a.Unmap()
			}) {
				return fmt.Errorf("%w: %s has no %s", ErrAddressNotInNetNS, ifName, a)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("netns %q: %w", path, err)
	}
	return nil
}
