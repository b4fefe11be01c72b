// Package netnstest gives tests throw-away network namespaces and TCP
// reachability checks between them. Tests never touch the namespace they
// run in; everything they build lives in namespaces made here and removed
// when the test ends, whatever its outcome.
package netnstest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// New creates a network namespace with lo up, removed when t ends. It skips
// the test when not run as root.
func New(t testing.TB) ns.NetNS {
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
		remove(t, n.Path())
	})
	Do(t, n, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return n
}

// remove unmounts and deletes the namespace bind-mounted at path. The
// unmount is lazy: coild may still hold the namespace open for a moment
// (its background deletion of a released pod's links enters it), and a
// plain unmount would then fail with EBUSY and leave the namespace
// behind. A namespace the test removed itself (to see a pod's namespace
// go) is fine.
func remove(t testing.TB, path string) {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		t.Errorf("unmount netns %s: %v", path, err)
		return
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("remove netns %s: %v", path, err)
	}
}

// Do runs f inside n and fails the test on error.
func Do(t testing.TB, n ns.NetNS, f func() error) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}

// Listen opens a TCP listener on addr:port (port 0 picks one) inside n that
// accepts connections and closes them at once.
func Listen(t testing.TB, n ns.NetNS, addr netip.Addr, port uint16) netip.AddrPort {
	t.Helper()
	return Serve(t, n, addr, port, func(net.Conn) {})
}

// PeerServer listens on addr inside n and writes each client's address, as
// the server sees it, back to the client: what a host outside sees of a
// pod behind NAT.
func PeerServer(t testing.TB, n ns.NetNS, addr netip.Addr) netip.AddrPort {
	t.Helper()
	return Serve(t, n, addr, 0, func(c net.Conn) {
		fmt.Fprintln(c, netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap())
	})
}

// SeenAs connects from n to a PeerServer and returns the address it saw.
func SeenAs(n ns.NetNS, target netip.AddrPort, timeout time.Duration) (netip.Addr, error) {
	var seen netip.Addr
	err := n.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", target.String())
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		seen, err = netip.ParseAddr(strings.TrimSpace(line))
		return err
	})
	return seen, err
}

// Serve opens a TCP listener on addr:port inside n and calls handle for
// each connection, closing it afterwards. The socket is created inside n
// and stays there; Accept may run on any thread.
func Serve(t testing.TB, n ns.NetNS, addr netip.Addr, port uint16, handle func(net.Conn)) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	Do(t, n, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, port).String())
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		// Ends when the cleanup above closes the listener.
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			handle(c)
			c.Close()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// Dial connects to target over TCP from inside n, within 5 seconds.
func Dial(n ns.NetNS, target netip.AddrPort) error {
	return n.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", target.String())
		if err != nil {
			return fmt.Errorf("dial %s: %w", target, err)
		}
		return c.Close()
	})
}

// DialIn opens a connection from inside the network namespace at path, as
// a dial function for HTTP transports and the like. The socket is created
// inside the namespace and stays there whichever thread later uses it.
func DialIn(ctx context.Context, path, network, addr string) (net.Conn, error) {
	target, err := ns.GetNS(path)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	var conn net.Conn
	err = target.Do(func(ns.NetNS) error {
		var d net.Dialer
		var derr error
		conn, derr = d.DialContext(ctx, network, addr)
		return derr
	})
	return conn, err
}

// ListenIn opens a TCP listener inside the network namespace at path.
func ListenIn(path, addr string) (net.Listener, error) {
	target, err := ns.GetNS(path)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	var l net.Listener
	err = target.Do(func(ns.NetNS) error {
		var lerr error
		l, lerr = net.Listen("tcp", addr)
		return lerr
	})
	return l, err
}

// LinkUp sets the link name of the current netns up with the given
// addresses, without duplicate address detection (also for its link-local
// address): a test bed must not wait a second before it can talk.
func LinkUp(name string, cidrs ...string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+name+"/accept_dad", []byte("0"), 0o644); err != nil {
		return err
	}
	for _, c := range cidrs {
		a, err := netlink.ParseAddr(c)
		if err != nil {
			return err
		}
		a.Flags = unix.IFA_F_NODAD
		if err := netlink.AddrAdd(l, a); err != nil {
			return fmt.Errorf("add %s to %s: %w", c, name, err)
		}
	}
	return netlink.LinkSetUp(l)
}

// AddRoute adds a route to dst (a CIDR) via the gateway via in the current
// netns.
func AddRoute(dst, via string) error {
	_, n, err := net.ParseCIDR(dst)
	if err != nil {
		return err
	}
	if err := netlink.RouteAdd(&netlink.Route{Dst: n, Gw: net.ParseIP(via)}); err != nil {
		return fmt.Errorf("route %s via %s: %w", dst, via, err)
	}
	return nil
}

// PeerEchoServer listens on addr inside n and answers every line a client
// sends with the client's address as the server sees it. Connections are
// served at once and stay open until the client closes them: a long-lived
// connection can ask, at any time, which address it arrives from.
func PeerEchoServer(t testing.TB, n ns.NetNS, addr netip.Addr) netip.AddrPort {
	t.Helper()
	var ln net.Listener
	Do(t, n, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		// Ends when the cleanup above closes the listener.
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				peer := netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap()
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					if _, err := fmt.Fprintln(c, peer); err != nil {
						return
					}
				}
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// AskPeer sends a line on a connection to a PeerEchoServer and returns the
// address the server answers it saw, within timeout.
func AskPeer(c net.Conn, r *bufio.Reader, timeout time.Duration) (netip.Addr, error) {
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintln(c, "?"); err != nil {
		return netip.Addr{}, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return netip.Addr{}, err
	}
	return netip.ParseAddr(strings.TrimSpace(line))
}
