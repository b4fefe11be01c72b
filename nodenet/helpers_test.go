package nodenet

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// newTestNS creates a fresh network namespace with lo up, removed when the
// test ends whatever its outcome. Tests never touch the root namespace.
func newTestNS(t *testing.T) ns.NetNS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		_ = testutils.UnmountNS(n)
	})
	inNS(t, n, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return n
}

// inNS runs f inside n and fails the test on error.
func inNS(t *testing.T, n ns.NetNS, f func() error) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

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

// listen opens a TCP listener on addr inside n that accepts connections and
// closes them at once. The socket stays in n after Do returns.
func listen(t *testing.T, n ns.NetNS, addr netip.Addr) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	inNS(t, n, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// dial connects to target from inside n, returning the error if any.
func dial(n ns.NetNS, target netip.AddrPort) error {
	return n.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", target.String())
		if err != nil {
			return err
		}
		return c.Close()
	})
}

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
