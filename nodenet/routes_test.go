package nodenet

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func TestExporter(t *testing.T) {
	host := newTestNS(t)
	e := &Exporter{TableID: 119, Protocol: 30}
	other := &Exporter{TableID: 119, Protocol: 31}

	steps := []struct {
		name string
		do   func() error
		want []netip.Prefix
	}{
		{"empty", func() error { return nil }, nil},
		{"export v4", func() error { return e.Export(netip.MustParsePrefix("10.1.0.0/26")) }, prefixes("10.1.0.0/26")},
		{"export v6", func() error { return e.Export(netip.MustParsePrefix("fd00:1::/120")) }, prefixes("10.1.0.0/26", "fd00:1::/120")},
		{"export again", func() error { return e.Export(netip.MustParsePrefix("10.1.0.0/26")) }, prefixes("10.1.0.0/26", "fd00:1::/120")},
		{"unmasked prefix", func() error { return e.Export(netip.MustParsePrefix("10.1.0.70/26")) }, prefixes("10.1.0.0/26", "10.1.0.64/26", "fd00:1::/120")},
		{"withdraw", func() error { return e.Withdraw(netip.MustParsePrefix("10.1.0.0/26")) }, prefixes("10.1.0.64/26", "fd00:1::/120")},
		{"withdraw again", func() error { return e.Withdraw(netip.MustParsePrefix("10.1.0.0/26")) }, prefixes("10.1.0.64/26", "fd00:1::/120")},
		{"withdraw v6", func() error { return e.Withdraw(netip.MustParsePrefix("fd00:1::/120")) }, prefixes("10.1.0.64/26")},
		{"sync", func() error {
			return e.Sync(prefixes("10.1.1.0/26", "fd00:2::/120", "fd00:3::/120"))
		}, prefixes("10.1.1.0/26", "fd00:2::/120", "fd00:3::/120")},
		{"sync keeps other protocol", func() error {
			if err := other.Export(netip.MustParsePrefix("192.168.0.0/24")); err != nil {
				return err
			}
			return e.Sync(prefixes("10.1.1.0/26"))
		}, prefixes("10.1.1.0/26")},
		{"sync empty", func() error { return e.Sync(nil) }, nil},
	}
	for _, s := range steps {
		inNS(t, host, func() error {
			if err := s.do(); err != nil {
				t.Fatalf("%s: %v", s.name, err)
			}
			got, err := e.List()
			if err != nil {
				return err
			}
			if !slices.Equal(got, s.want) {
				t.Errorf("%s: List = %v, want %v", s.name, got, s.want)
			}
			return nil
		})
	}
	inNS(t, host, func() error {
		got, err := other.List()
		if err != nil {
			return err
		}
		if !slices.Equal(got, prefixes("192.168.0.0/24")) {
			t.Errorf("other protocol's routes = %v", got)
		}
		// Nothing leaked into the main table.
		main, err := tableRoutes(unix.RT_TABLE_MAIN, 30)
		if err != nil {
			return err
		}
		if len(main) != 0 {
			t.Errorf("main table has exported routes: %v", main)
		}
		return nil
	})
}

func TestExporterInvalidTable(t *testing.T) {
	for _, table := range []int{0, unix.RT_TABLE_MAIN, unix.RT_TABLE_LOCAL, unix.RT_TABLE_DEFAULT, -1} {
		e := &Exporter{TableID: table, Protocol: 30}
		if err := e.Export(netip.MustParsePrefix("10.0.0.0/24")); !errors.Is(err, ErrInvalidTable) {
			t.Errorf("table %d: Export error = %v, want ErrInvalidTable", table, err)
		}
		if err := e.Sync(nil); !errors.Is(err, ErrInvalidTable) {
			t.Errorf("table %d: Sync error = %v, want ErrInvalidTable", table, err)
		}
	}
}

// newFabricNS returns a test namespace with a link, fabric0, holding
// addrs: the peer nodes' addresses of those subnets are on-link.
func newFabricNS(t *testing.T, addrs ...string) ns.NetNS {
	t.Helper()
	host := newTestNS(t)
	inNS(t, host, func() error {
		if err := addVethPair("fabric0", "fabric1", 0); err != nil {
			return err
		}
		l, err := netlink.LinkByName("fabric0")
		if err != nil {
			return err
		}
		for _, p := range addrs {
			pfx := netip.MustParsePrefix(p)
			a := &netlink.Addr{IPNet: &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: ipNet(pfx).Mask}, Flags: unix.IFA_F_NODAD}
			if err := netlink.AddrAdd(l, a); err != nil {
				return err
			}
		}
		return nil
	})
	return host
}

func TestPeerRouter(t *testing.T) {
	host := newFabricNS(t, "192.168.50.1/24", "fd50::1/64")

	a := netip.MustParseAddr
	p := netip.MustParsePrefix
	tests := []struct {
		name   string
		routes map[netip.Prefix]netip.Addr
		table  int
	}{
		{"add", map[netip.Prefix]netip.Addr{p("10.2.0.0/26"): a("192.168.50.2"), p("fd00:2::/120"): a("fd50::2")}, 0},
		{"change gateway", map[netip.Prefix]netip.Addr{p("10.2.0.0/26"): a("192.168.50.3"), p("fd00:2::/120"): a("fd50::2")}, 0},
		{"remove one", map[netip.Prefix]netip.Addr{p("fd00:2::/120"): a("fd50::2")}, 0},
		{"empty", nil, 0},
		{"other table", map[netip.Prefix]netip.Addr{p("10.3.0.0/26"): a("192.168.50.4")}, 120},
	}
	for _, tt := range tests {
		inNS(t, host, func() error {
			pr := &PeerRouter{TableID: tt.table, Protocol: 31}
			if err := pr.Sync(tt.routes); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			routes, err := tableRoutes(pr.table(), 31)
			if err != nil {
				return err
			}
			got := map[netip.Prefix]netip.Addr{}
			for _, r := range routes {
				dst, _ := routeDst(r, r.Family)
				gw, _ := addrOf(r.Gw)
				got[dst] = gw
			}
			if len(got) != len(tt.routes) {
				t.Errorf("%s: routes = %v, want %v", tt.name, got, tt.routes)
			}
			for dst, gw := range tt.routes {
				if got[dst] != gw {
					t.Errorf("%s: route %s via %s, want via %s", tt.name, dst, got[dst], gw)
				}
			}
			return nil
		})
	}

	inNS(t, host, func() error {
		pr := &PeerRouter{Protocol: 31}
		err := pr.Sync(map[netip.Prefix]netip.Addr{p("10.4.0.0/26"): a("fd50::2")})
		if err == nil {
			t.Error("Sync accepted an IPv6 gateway for an IPv4 block")
		}
		return nil
	})
}

// TestPeerRouterWritesChanges: Sync writes only the routes that changed
// since it last wrote, and deletes only those it wrote that are no longer
// wanted; a comparison with the table (Resync, or Sync after an error)
// puts back what was changed behind its back.
func TestPeerRouterWritesChanges(t *testing.T) {
	host := newFabricNS(t, "192.168.50.1/24")
	a := netip.MustParseAddr
	p := netip.MustParsePrefix
	table := func() map[netip.Prefix]netip.Addr {
		t.Helper()
		got := map[netip.Prefix]netip.Addr{}
		inNS(t, host, func() error {
			routes, err := tableRoutes(unix.RT_TABLE_MAIN, 31)
			for _, r := range routes {
				dst, _ := routeDst(r, r.Family)
				gw, _ := addrOf(r.Gw)
				got[dst] = gw
			}
			return err
		})
		return got
	}
	sync := func(sync func(map[netip.Prefix]netip.Addr) error, routes map[netip.Prefix]netip.Addr) error {
		t.Helper()
		var err error
		inNS(t, host, func() error { err = sync(routes); return nil })
		return err
	}
	pr := &PeerRouter{Protocol: 31}
	want := map[netip.Prefix]netip.Addr{p("10.2.0.0/26"): a("192.168.50.2"), p("10.2.0.64/26"): a("192.168.50.3"), p("10.2.0.128/26"): a("192.168.50.4")}
	if err := sync(pr.Sync, want); err != nil {
		t.Fatal(err)
	}
	// Behind its back: one route deleted.
	inNS(t, host, func() error {
		return netlink.RouteDel(&netlink.Route{Dst: ipNet(p("10.2.0.0/26")), Protocol: 31})
	})
	// A new block, one moved to another node, one gone.
	want = map[netip.Prefix]netip.Addr{p("10.2.0.0/26"): a("192.168.50.2"), p("10.2.0.64/26"): a("192.168.50.5"), p("10.2.1.0/26"): a("192.168.50.6")}
	if err := sync(pr.Sync, want); err != nil {
		t.Fatal(err)
	}
	got := table()
	if _, ok := got[p("10.2.0.0/26")]; ok {
		t.Errorf("the route deleted behind its back is back before a comparison with the table: Sync listed the table")
	}
	if got[p("10.2.0.64/26")] != a("192.168.50.5") || got[p("10.2.1.0/26")] != a("192.168.50.6") || len(got) != 2 {
		t.Errorf("after a change: table %v, want the moved and the new block", got)
	}

	// An error (a gateway that is not on-link) makes the next Sync
	// compare with the table.
	broken := map[netip.Prefix]netip.Addr{p("10.2.2.0/26"): a("192.0.2.1")}
	maps.Copy(broken, want)
	if err := sync(pr.Sync, broken); err == nil {
		t.Fatal("Sync with a gateway that is not on-link succeeded")
	}
	if err := sync(pr.Sync, want); err != nil {
		t.Fatal(err)
	}
	if got := table(); !maps.Equal(got, want) {
		t.Errorf("after an error: table %v, want %v", got, want)
	}

	// So does Resync.
	inNS(t, host, func() error {
		return netlink.RouteDel(&netlink.Route{Dst: ipNet(p("10.2.1.0/26")), Protocol: 31})
	})
	if err := sync(pr.Sync, want); err != nil {
		t.Fatal(err)
	}
	if _, ok := table()[p("10.2.1.0/26")]; ok {
		t.Errorf("the route deleted behind its back is back after a Sync")
	}
	if err := sync(pr.Resync, want); err != nil {
		t.Fatal(err)
	}
	if got := table(); !maps.Equal(got, want) {
		t.Errorf("after Resync: table %v, want %v", got, want)
	}
}

func TestUplinkMTU(t *testing.T) {
	tests := []struct {
		name    string
		prepare func() error
		want    int
	}{
		{"nothing", func() error { return nil }, DefaultMTU},
		{"only veth", func() error { return addVethPair("v0", "v1", 1300) }, DefaultMTU},
		{"largest up link", func() error {
			for _, b := range []struct {
				name string
				mtu  int
				up   bool
			}{{"br0", 1450, true}, {"br1", 1400, true}, {"br2", 1480, false}} {
				link := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: b.name, MTU: b.mtu}}
				if err := netlink.LinkAdd(link); err != nil {
					return err
				}
				if b.up {
					if err := netlink.LinkSetUp(link); err != nil {
						return err
					}
				}
			}
			return nil
		}, 1450},
		{"ipv4 default route", func() error { return defaultVia("up0", "up1", 1380, "192.168.60.1/24", "192.168.60.2") }, 1380},
		{"ipv6 default route", func() error { return defaultVia("up0", "up1", 1280, "fd60::1/64", "fd60::2") }, 1280},
		// The default route is found by asking which route takes a
		// documentation address; these would mislead that question.
		{"a route covers the probe address", func() error {
			if err := defaultVia("up0", "up1", 1380, "192.168.60.1/24", "192.168.60.2"); err != nil {
				return err
			}
			return linkRoute("cv0", "cv1", 1300, "192.0.2.0/24", 0)
		}, 1380},
		{"policy routing sends the probe to another table", func() error {
			if err := defaultVia("up0", "up1", 1380, "192.168.60.1/24", "192.168.60.2"); err != nil {
				return err
			}
			if err := linkRoute("cv0", "cv1", 1300, "0.0.0.0/0", 100); err != nil {
				return err
			}
			rule := netlink.NewRule()
			rule.Priority, rule.Table, rule.Dst = 100, 100, ipNet(netip.MustParsePrefix("192.0.2.0/24"))
			return netlink.RuleAdd(rule)
		}, 1380},
		{"lowest metric default route", func() error {
			if err := defaultVia("up0", "up1", 1380, "192.168.60.1/24", "192.168.60.2"); err != nil {
				return err
			}
			l, err := netlink.LinkByName("up0")
			if err != nil {
				return err
			}
			if err := netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(defaultV4), Gw: net.IPv4(192, 168, 60, 2)}); err != nil {
				return err
			}
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(defaultV4), Gw: net.IPv4(192, 168, 60, 2), Priority: 200}); err != nil {
				return err
			}
			return linkRouteMetric("cv0", "cv1", 1300, "0.0.0.0/0", 0, 100)
		}, 1300},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newTestNS(t)
			inNS(t, host, func() error {
				if err := tt.prepare(); err != nil {
					return err
				}
				got, err := UplinkMTU()
				if err != nil {
					return err
				}
				if got != tt.want {
					t.Errorf("UplinkMTU = %d, want %d", got, tt.want)
				}
				return nil
			})
		})
	}
}

// defaultVia makes a veth pair with the given MTU and a default route over
// its first end. A veth stands in for the uplink: it is the only link type
// this kernel offers that has a carrier.
func defaultVia(name, peer string, mtu int, addr, gw string) error {
	if err := addVethPair(name, peer, mtu); err != nil {
		return err
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	pfx := netip.MustParsePrefix(addr)
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: ipNet(pfx).Mask}, Flags: unix.IFA_F_NODAD}); err != nil {
		return err
	}
	g := netip.MustParseAddr(gw)
	dst := defaultV4
	if g.Is6() {
		dst = defaultV6
	}
	return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(dst), Gw: g.AsSlice()})
}

// linkRoute makes a veth pair with the given MTU, up, and a route to dst
// through its first end in table (0: main).
func linkRoute(name, peer string, mtu int, dst string, table int) error {
	return linkRouteMetric(name, peer, mtu, dst, table, 0)
}

func linkRouteMetric(name, peer string, mtu int, dst string, table, metric int) error {
	if err := addVethPair(name, peer, mtu); err != nil {
		return err
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return err
	}
	return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(netip.MustParsePrefix(dst)),
		Scope: netlink.SCOPE_LINK, Table: table, Priority: metric})
}

// TestUplinkMTUDoesNotListTheTable: with flat-L2 or BGP routing a node's
// main table holds a route per block of the cluster, and the plugin looks
// up the uplink MTU on every ADD: it must cost one request, not a listing
// of the table (10 ms per ADD at 5,000 routes). The listing remains for
// when the quick answer is not the default route.
func TestUplinkMTUDoesNotListTheTable(t *testing.T) {
	listings := 0
	countListings(t, &listings)

	host := newTestNS(t)
	inNS(t, host, func() error {
		if err := defaultVia("up0", "up1", 1380, "192.168.60.1/24", "192.168.60.2"); err != nil {
			return err
		}
		if err := linkRoute("pv0", "pv1", 1500, "10.9.0.1/32", 0); err != nil {
			return err
		}
		l, err := netlink.LinkByName("pv0")
		if err != nil {
			return err
		}
		if err := addClusterRoutes(l.Attrs().Index, 2000); err != nil {
			return err
		}
		mtu, err := UplinkMTU()
		if err != nil || mtu != 1380 {
			t.Fatalf("UplinkMTU = %d, %v; want 1380", mtu, err)
		}
		if listings != 0 {
			t.Errorf("UplinkMTU listed the routing table %d times, want 0", listings)
		}
		// A route covering the probe address: the listing decides.
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(netip.MustParsePrefix("192.0.2.0/24")), Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
		if mtu, err := UplinkMTU(); err != nil || mtu != 1380 || listings != 1 {
			t.Errorf("with the probe covered: UplinkMTU = %d, %v after %d listings; want 1380 after 1", mtu, err, listings)
		}
		return nil
	})
}

// countListings counts the calls of listRoutes into n for the test.
func countListings(t *testing.T, n *int) {
	orig := listRoutes
	listRoutes = func(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
		*n++
		return orig(family, filter, mask)
	}
	t.Cleanup(func() { listRoutes = orig })
}

// TestRemoveHostRoutes: DEL's first step deletes the host routes to the
// pod's addresses through Coil veths, and only those, in one look-up per
// route rather than a listing of the main table, which holds a route per
// block of the cluster with flat-L2 or BGP routing.
func TestRemoveHostRoutes(t *testing.T) {
	const podVeth, otherVeth = "veth0123456789a", "cali0123456789"
	v4, v6 := netip.MustParseAddr("10.9.200.5"), netip.MustParseAddr("fd09::5")
	tests := []struct {
		name         string
		prepare      func(pod, other int) error
		addrs        []netip.Addr
		wantVeth     string
		wantLeft     int // host routes to the addresses left in main
		wantListings int
	}{
		{"dual-stack pod", func(pod, _ int) error {
			return addRoutes(hostRouteVia(pod, v4, 0), hostRouteVia(pod, v6, 0))
		}, []netip.Addr{v4, v6}, podVeth, 0, 0},
		{"no route", func(int, int) error { return nil }, []netip.Addr{v4}, "", 0, 0},
		{"only a block route covers it", func(pod, _ int) error {
			return addRoutes(&netlink.Route{LinkIndex: pod, Dst: ipNet(netip.MustParsePrefix("10.9.200.0/27")), Scope: netlink.SCOPE_LINK})
		}, []netip.Addr{v4}, "", 0, 0},
		{"two routes of Coil's, two metrics", func(pod, _ int) error {
			return addRoutes(hostRouteVia(pod, v4, 0), hostRouteVia(pod, v4, 50))
		}, []netip.Addr{v4}, podVeth, 0, 0},
		{"another plugin's route is left alone", func(_, other int) error {
			return addRoutes(hostRouteVia(other, v4, 0))
		}, []netip.Addr{v4}, "", 1, 1},
		{"another plugin's route in front of Coil's", func(pod, other int) error {
			return addRoutes(hostRouteVia(other, v4, 0), hostRouteVia(pod, v4, 50))
		}, []netip.Addr{v4}, podVeth, 1, 1},
		{"policy routing in front of main", func(pod, other int) error {
			rule := netlink.NewRule()
			rule.Priority, rule.Table, rule.Dst = 100, 100, ipNet(netip.MustParsePrefix("10.9.200.0/24"))
			if err := netlink.RuleAdd(rule); err != nil {
				return err
			}
			r := hostRouteVia(other, v4, 0)
			r.Table = 100
			return addRoutes(r, hostRouteVia(pod, v4, 0))
		}, []netip.Addr{v4}, podVeth, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newTestNS(t)
			inNS(t, host, func() error {
				if err := addVethPair(podVeth, "pod0", 1500); err != nil {
					return err
				}
				if err := addVethPair(otherVeth, "pod1", 1500); err != nil {
					return err
				}
				pod, err := netlink.LinkByName(podVeth)
				if err != nil {
					return err
				}
				other, err := netlink.LinkByName(otherVeth)
				if err != nil {
					return err
				}
				// The rest of the cluster's routes, which must not be read.
				if err := addClusterRoutes(other.Attrs().Index, 1000); err != nil {
					return err
				}
				if err := tt.prepare(pod.Attrs().Index, other.Attrs().Index); err != nil {
					return err
				}
				listings := 0
				countListings(t, &listings)
				index, name, err := RemoveHostRoutes(tt.addrs)
				if err != nil {
					t.Fatalf("RemoveHostRoutes = %v", err)
				}
				if name != tt.wantVeth || (name == "") != (index == 0) || name == podVeth && index != pod.Attrs().Index {
					t.Errorf("RemoveHostRoutes = %d %q, want veth %q", index, name, tt.wantVeth)
				}
				if listings != tt.wantListings {
					t.Errorf("listed the routing table %d times, want %d", listings, tt.wantListings)
				}
				left := 0
				for _, a := range tt.addrs {
					routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Dst: hostNet(a)}, netlink.RT_FILTER_DST)
					if err != nil {
						return err
					}
					for _, r := range routes {
						if r.LinkIndex == pod.Attrs().Index {
							t.Errorf("route to %s through the pod's veth left: %v", a, r)
						}
					}
					left += len(routes)
				}
				if left != tt.wantLeft {
					t.Errorf("%d host routes left in main, want %d", left, tt.wantLeft)
				}
				return nil
			})
		})
	}
}

func hostRouteVia(link int, a netip.Addr, metric int) *netlink.Route {
	return &netlink.Route{LinkIndex: link, Dst: hostNet(a), Scope: netlink.SCOPE_LINK, Priority: metric}
}

func addRoutes(routes ...*netlink.Route) error {
	for _, r := range routes {
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("add route %v: %w", r, err)
		}
	}
	return nil
}

// TestHasHostRouteDoesNotListTheTable: CHECK's look for the node's host
// route to a pod asks the kernel for that address rather than listing the
// main table; a route it does not find is still looked for in the list.
func TestHasHostRouteDoesNotListTheTable(t *testing.T) {
	host := newTestNS(t)
	inNS(t, host, func() error {
		if err := linkRoute("veth0123456789a", "pod0", 1500, "10.9.200.5/32", 0); err != nil {
			return err
		}
		if err := addVethPair("cluster0", "cluster1", 1500); err != nil {
			return err
		}
		pod, err := netlink.LinkByName("veth0123456789a")
		if err != nil {
			return err
		}
		cluster, err := netlink.LinkByName("cluster0")
		if err != nil {
			return err
		}
		if err := addClusterRoutes(cluster.Attrs().Index, 1000); err != nil {
			return err
		}
		listings := 0
		countListings(t, &listings)
		ok, err := hasRoute(hostRoute(pod.Attrs().Index, netip.MustParseAddr("10.9.200.5")))
		if err != nil || !ok || listings != 0 {
			t.Errorf("present host route: hasRoute = %v, %v after %d listings; want true after 0", ok, err, listings)
		}
		ok, err = hasRoute(hostRoute(pod.Attrs().Index, netip.MustParseAddr("10.9.200.6")))
		if err != nil || ok {
			t.Errorf("missing host route: hasRoute = %v, %v; want false", ok, err)
		}
		ok, err = hasRoute(hostRoute(cluster.Attrs().Index, netip.MustParseAddr("10.9.200.5")))
		if err != nil || ok {
			t.Errorf("host route through another link: hasRoute = %v, %v; want false", ok, err)
		}
		return nil
	})
}

// addClusterRoutes adds n /27 routes in 10.10.0.0/16 through link, as
// flat-L2 or BGP routing puts one per block of the other nodes into the
// main table.
func addClusterRoutes(link, n int) error {
	for i := range n {
		dst := netip.AddrFrom4([4]byte{10, 10, byte(i / 8), byte(i % 8 * 32)})
		if err := addRoutes(&netlink.Route{LinkIndex: link, Dst: ipNet(netip.PrefixFrom(dst, 27)), Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
	}
	return nil
}
