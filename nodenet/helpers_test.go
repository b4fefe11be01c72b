package nodenet

import (
	"net/netip"
	"testing"

	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// newTestNS creates a namespace for the test (see netnstest.New).
func newTestNS(t *testing.T) ns.NetNS { return netnstest.New(t) }

// inNS runs f inside n and fails the test on error.
func inNS(t *testing.T, n ns.NetNS, f func() error) { netnstest.Do(t, n, f) }

// addLoAddr puts a single address on lo of the current netns, as the
// "host's own address" pods talk to in tests.
func addLoAddr(a netip.Addr) error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	return netlink.AddrAdd(lo, &netlink.Addr{IPNet: hostNet(a), Flags: nodadFlag(a)})
}

func nodadFlag(a netip.Addr) int {
	if a.Is6() {
		return unix.IFA_F_NODAD
	}
	return 0
}

// listen opens a TCP listener on addr inside n (see netnstest.Listen).
func listen(t *testing.T, n ns.NetNS, addr netip.Addr) netip.AddrPort {
	return netnstest.Listen(t, n, addr, 0)
}

// dial connects to target from inside n.
func dial(n ns.NetNS, target netip.AddrPort) error { return netnstest.Dial(n, target) }

// linkExists reports whether a link of that name exists in n.
func linkExists(t *testing.T, n ns.NetNS, name string) bool {
	t.Helper()
	found := false
	inNS(t, n, func() error {
		_, err := netlink.LinkByName(name)
		if err == nil {
			found = true
			return nil
		}
		if isLinkNotFound(err) {
			return nil
		}
		return err
	})
	return found
}

// addVethPair creates a veth pair in the current netns, both ends up.
func addVethPair(name, peer string, mtu int) error {
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}, PeerName: peer}
	if err := netlink.LinkAdd(v); err != nil {
		return err
	}
	for _, n := range []string{name, peer} {
		l, err := netlink.LinkByName(n)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}
