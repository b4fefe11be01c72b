package nodenet

import (
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func TestPickUplinkAddresses(t *testing.T) {
	// A real node: eth0 is the uplink, the rest carry addresses that are
	// not the node's.
	links := map[int]uplinkLink{
		1:  {Name: "lo", Type: "device", Up: true, Addrs: addrs("10.200.0.1")},
		2:  {Name: "docker0", Type: "bridge", Up: true, Addrs: addrs("172.17.0.1", "fd00:17::1")},
		3:  {Name: "kube-ipvs0", Type: "dummy", Up: true, Addrs: addrs("10.96.0.1", "fd00:96::1")},
		4:  {Name: "eth0", Type: "device", Up: true, Addrs: addrs("192.0.2.10", "192.0.2.11", "2001:db8:1::10")},
		5:  {Name: "eth1", Type: "device", Up: true, Addrs: addrs("198.51.100.10", "2001:db8:2::10")},
		6:  {Name: "eth2", Type: "device", Up: false, Addrs: addrs("203.0.113.10")},
		7:  {Name: "vethabc", Type: "veth", Up: true, Addrs: addrs("10.1.0.1")},
		8:  {Name: "flannel.1", Type: "vxlan", Up: true, Addrs: addrs("10.244.0.0")},
		9:  {Name: "nodelocaldns", Type: "dummy", Up: true, Addrs: addrs("169.254.20.10", "10.96.0.10")},
		10: {Name: "kube-ipvs0", Type: "bridge", Up: true, Addrs: addrs("10.96.0.2")},
		11: {Name: "bond0", Type: "bond", Up: true, Addrs: addrs("2001:db8:3::10")},
	}
	v4 := func(prio int, src string, links ...int) defaultRoute {
		r := defaultRoute{Priority: prio, Links: links}
		if src != "" {
			r.Src = netip.MustParseAddr(src)
		}
		return r
	}
	v6 := func(prio int, src string, links ...int) defaultRoute {
		r := v4(prio, src, links...)
		r.V6 = true
		return r
	}
	for _, tc := range []struct {
		name   string
		routes []defaultRoute
		want   []UplinkAddress
	}{
		{"no default route", nil, nil},
		{"both families via eth0: its first address of each",
			[]defaultRoute{v6(0, "", 4), v4(0, "", 4)},
			[]UplinkAddress{{netip.MustParseAddr("192.0.2.10"), "eth0"}, {netip.MustParseAddr("2001:db8:1::10"), "eth0"}}},
		{"preferred source on the link wins",
			[]defaultRoute{v4(0, "192.0.2.11", 4)},
			[]UplinkAddress{{netip.MustParseAddr("192.0.2.11"), "eth0"}}},
		{"preferred source not on the link (lo) is not taken",
			[]defaultRoute{v4(0, "10.200.0.1", 4)},
			[]UplinkAddress{{netip.MustParseAddr("192.0.2.10"), "eth0"}}},
		{"lowest metric first",
			[]defaultRoute{v4(200, "", 4), v4(100, "", 5)},
			[]UplinkAddress{{netip.MustParseAddr("198.51.100.10"), "eth1"}}},
		{"a default route via a bridge is skipped",
			[]defaultRoute{v4(0, "", 2), v4(100, "", 4)},
			[]UplinkAddress{{netip.MustParseAddr("192.0.2.10"), "eth0"}}},
		{"never a bridge, dummy, veth, vxlan, kube-ipvs0, lo or down link",
			[]defaultRoute{v4(0, "", 1, 2, 3, 6, 7, 8, 9, 10), v6(0, "", 2, 3, 7)},
			nil},
		{"multipath: the first usable next hop",
			[]defaultRoute{v4(0, "", 2, 5, 4)},
			[]UplinkAddress{{netip.MustParseAddr("198.51.100.10"), "eth1"}}},
		{"a link without an address of the family is passed over",
			[]defaultRoute{v6(0, "", 6), v6(10, "", 11), v4(0, "", 11), v4(5, "", 4)},
			[]UplinkAddress{{netip.MustParseAddr("192.0.2.10"), "eth0"}, {netip.MustParseAddr("2001:db8:3::10"), "bond0"}}},
		{"unknown link index", []defaultRoute{v4(0, "", 99)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := pickUplinkAddresses(links, tc.routes); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestUsableAddrs(t *testing.T) {
	a := func(s string, flags int) netlink.Addr {
		p := netip.MustParsePrefix(s)
		return netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Flags: flags}
	}
	got := usableAddrs([]netlink.Addr{
		a("192.0.2.10/24", 0),
		a("192.0.2.11/24", unix.IFA_F_SECONDARY), // same bit as IFA_F_TEMPORARY
		a("127.0.0.1/8", 0),
		a("169.254.1.1/16", 0),
		a("fe80::1/64", 0),
		a("2001:db8::1/64", unix.IFA_F_TENTATIVE),
		a("2001:db8::2/64", unix.IFA_F_DADFAILED),
		a("2001:db8::3/64", unix.IFA_F_DEPRECATED),
		a("2001:db8::4/64", unix.IFA_F_TEMPORARY),
		a("2001:db8::5/64", unix.IFA_F_PERMANENT),
	})
	if want := addrs("192.0.2.10", "192.0.2.11", "2001:db8::5"); !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}
