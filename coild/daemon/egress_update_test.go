package daemon_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/coil-project/coil/internal/testenv"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	nodetest "github.com/coil-project/coil/internal/testenv/node"
	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/nodenet"
)

// TestEgressUpdate changes the destinations of an egress in place: a
// destination added is reached through the gateway within seconds without
// a new ADD, one removed no longer goes through the tunnel, and a TCP
// connection to an unchanged destination opened before the changes keeps
// working, over the same tunnel device.
func TestEgressUpdate(t *testing.T) {
	n, ext, eg := newEgressNode(t)
	ctx := context.Background()

	// A second network of the external host, not in the egress at first.
	// Like the first it answers only the egress pool, so a client reaches
	// it only through a gateway.
	second := netip.MustParseAddr("192.168.78.2")
	secondNet := netip.MustParsePrefix("192.168.78.0/24")
	netnstest.Do(t, ext.ns, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		a, err := netlink.ParseAddr(second.String() + "/24")
		if err != nil {
			return err
		}
		a.Flags = unix.IFA_F_NODAD
		return netlink.AddrAdd(l, a)
	})
	netnstest.Do(t, n.NS, func() error { return netnstest.AddRoute(secondNet.String(), "192.168.77.2") })
	server2 := netnstest.PeerServer(t, ext.ns, second)
	// An echo server on the first network that first tells the client
	// the address it sees.
	echo := netnstest.Serve(t, ext.ns, externalV4, 0, func(c net.Conn) {
		fmt.Fprintln(c, netip.MustParseAddrPort(c.RemoteAddr().String()).Addr().Unmap())
		io.Copy(c, c)
	})

	gw := nodetest.NewPod(t, "internet", "gw")
	var gwIP netip.Addr
	for _, ip := range n.StartPod(gw, map[string]string{model.EgressGatewayLabel: "nat"}, nil) {
		if ip.Is4() {
			gwIP = ip
		}
	}
	c := nodetest.NewPod(t, "app", "client")
	n.StartPod(c, nil, map[string]string{model.EgressClientAnnotationPrefix + "internet": "nat"})
	if seen, err := netnstest.SeenAs(c.NS, ext.server4, 5*time.Second); err != nil || seen != gwIP {
		t.Fatalf("client seen as %s (%v), want the gateway %s", seen, err, gwIP)
	}
	if seen, err := netnstest.SeenAs(c.NS, server2, time.Second); err == nil {
		t.Fatalf("client reached %s (seen as %s) before it was a destination", server2, seen)
	}

	// The long-lived connection, opened before any update.
	var conn net.Conn
	err := c.NS.Do(func(ns.NetNS) error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, "tcp", echo.String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	roundTrip := func(msg string) error {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintln(conn, msg); err != nil {
			return err
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if got := strings.TrimSpace(line); got != msg {
			return fmt.Errorf("echo of %q is %q", msg, got)
		}
		return nil
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if line, err := r.ReadString('\n'); err != nil || strings.TrimSpace(line) != gwIP.String() {
		t.Fatalf("long-lived connection seen as %q (%v), want the gateway %s", line, err, gwIP)
	}
	if err := roundTrip("before"); err != nil {
		t.Fatal(err)
	}

	tunnelIndex := func() int {
		t.Helper()
		var idx int
		netnstest.Do(t, c.NS, func() error {
			l, err := netlink.LinkByName(nodenet.EgressClientLinkName(eg.VNI))
			if err != nil {
				return err
			}
			idx = l.Attrs().Index
			return nil
		})
		return idx
	}
	before := summary(t, c)
	idx := tunnelIndex()
	if before.ClientRoutes != 2 {
		t.Fatalf("client holds %+v, want two routes", before)
	}
	update := func(change model.DestinationChange) time.Time {
		t.Helper()
		start := time.Now()
		if _, _, err := n.Store.UpdateEgress(ctx, eg.Namespace, eg.Name, change); err != nil {
			t.Fatal(err)
		}
		return start
	}
	sameTunnel := func(when string, routes int) {
		t.Helper()
		want := before
		want.ClientRoutes = routes
		if got := summary(t, c); got != want {
			t.Errorf("%s the client holds %+v, want %+v", when, got, want)
		}
		if got := tunnelIndex(); got != idx {
			t.Errorf("%s the tunnel device was recreated (index %d, was %d)", when, got, idx)
		}
		if err := roundTrip(when); err != nil {
			t.Errorf("%s the connection opened before the update is broken: %v", when, err)
		}
	}

	t.Run("added destination", func(t *testing.T) {
		start := update(model.DestinationChange{Add: []netip.Prefix{secondNet}})
		testenv.Eventually(t, 5*time.Second, "route of the added destination", func() error {
			if s := summary(t, c); s.ClientRoutes != 3 {
				return fmt.Errorf("client holds %+v", s)
			}
			return nil
		})
		t.Logf("egress update: the route of an added destination is in place %v after the update", time.Since(start).Round(time.Millisecond))
		// No new ADD: the first connection after the route goes through.
		if seen, err := netnstest.SeenAs(c.NS, server2, 5*time.Second-time.Since(start)); err != nil || seen != gwIP {
			t.Fatalf("added destination seen as %s (%v), want the gateway %s", seen, err, gwIP)
		}
		t.Logf("egress update: an added destination is reached through the gateway %v after the update", time.Since(start).Round(time.Millisecond))
		sameTunnel("after the addition", 3)
	})

	t.Run("removed destination", func(t *testing.T) {
		start := update(model.DestinationChange{Remove: []netip.Prefix{secondNet}})
		testenv.Eventually(t, 5*time.Second, "route of the removed destination gone", func() error {
			if s := summary(t, c); s.ClientRoutes != 2 {
				return fmt.Errorf("client holds %+v", s)
			}
			return nil
		})
		t.Logf("egress update: the route of a removed destination is gone %v after the update", time.Since(start).Round(time.Millisecond))
		// Off the tunnel, the client's own address is not answered.
		if seen, err := netnstest.SeenAs(c.NS, server2, time.Second); err == nil {
			t.Errorf("client still reaches the removed destination (seen as %s)", seen)
		}
		sameTunnel("after the removal", 2)
		if seen, err := netnstest.SeenAs(c.NS, ext.server4, 5*time.Second); err != nil || seen != gwIP {
			t.Errorf("unchanged destination seen as %s (%v), want the gateway %s", seen, err, gwIP)
		}
	})
}
