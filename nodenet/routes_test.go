package nodenet

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

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

func TestPeerRouter(t *testing.T) {
	host := newTestNS(t)
	inNS(t, host, func() error {
		// A link on which the peer nodes' addresses are on-link.
		if err := addVethPair("fabric0", "fabric1", 0); err != nil {
			return err
		}
		l, err := netlink.LinkByName("fabric0")
		if err != nil {
			return err
		}
		for _, p := range []string{"192.168.50.1/24", "fd50::1/64"} {
			pfx := netip.MustParsePrefix(p)
			a := &netlink.Addr{IPNet: &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: ipNet(pfx).Mask}, Flags: unix.IFA_F_NODAD}
			if err := netlink.AddrAdd(l, a); err != nil {
				return err
			}
		}
		return nil
	})

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
