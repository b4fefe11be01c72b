package nodenet

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestRouteSync(t *testing.T) {
	const (
		table  = 150
		ours   = 40
		theirs = 41
	)
	type route struct {
		proto  netlink.RouteProtocol
		dst    string
		gw     string // "" for an unreachable route
		metric int
	}
	// show renders a route as the test compares it.
	show := func(r netlink.Route) string {
		dst, _ := routeDst(r, r.Family)
		s := fmt.Sprintf("p%d %s", r.Protocol, dst)
		if r.Type == unix.RTN_UNREACHABLE {
			s += " unreachable"
		}
		if gw, ok := addrOf(r.Gw); ok {
			s += " via " + gw.String()
		}
		if m := routeMetric(&r); m != 0 && m != 1024 {
			s += fmt.Sprintf(" metric %d", m)
		}
		return s
	}
	// toNetlink returns r as a route through link, which must be given
	// for routeKey to compare it.
	toNetlink := func(r route, link int) *netlink.Route {
		nr := &netlink.Route{Dst: ipNet(netip.MustParsePrefix(r.dst)), Priority: r.metric}
		if r.gw == "" {
			nr.Type = unix.RTN_UNREACHABLE
		} else {
			nr.Gw = net.IP(netip.MustParseAddr(r.gw).AsSlice())
			nr.LinkIndex = link
		}
		return nr
	}
	sameFuncs := map[string]func(netlink.Route, *netlink.Route) bool{
		"":        func(have netlink.Route, want *netlink.Route) bool { return routeKey(&have) == routeKey(want) },
		"gateway": sameGateway,
		"dst":     nil,
	}

	tests := []struct {
		name string
		// before are routes added before the sync, of any protocol.
		before []route
		want   []route
		// same picks the comparison of routes to one destination:
		// "" is egress's routeKey, "gateway" PeerRouter's, "dst" none
		// (any route to the destination will do, as for Exporter).
		same    string
		wantErr bool
		// after is every route of the table after the sync.
		after []string
	}{
		{
			name:  "empty stays empty",
			after: nil,
		},
		{
			name: "add to empty",
			want: []route{{dst: "10.9.0.0/24", gw: "192.0.2.2"}, {dst: "fd09::/64", gw: "2001:db8::2"}},
			after: []string{
				"p40 10.9.0.0/24 via 192.0.2.2",
				"p40 fd09::/64 via 2001:db8::2",
			},
		},
		{
			name:   "stale route removed",
			before: []route{{ours, "10.9.0.0/24", "192.0.2.2", 0}, {ours, "10.8.0.0/24", "192.0.2.2", 0}, {ours, "fd08::/64", "2001:db8::2", 0}},
			want:   []route{{dst: "10.9.0.0/24", gw: "192.0.2.2"}},
			after:  []string{"p40 10.9.0.0/24 via 192.0.2.2"},
		},
		{
			name:   "everything removed",
			before: []route{{ours, "10.9.0.0/24", "192.0.2.2", 0}, {ours, "fd09::/64", "2001:db8::2", 0}},
			after:  nil,
		},
		{
			name: "routes of other protocols untouched",
			before: []route{
				{theirs, "10.8.0.0/24", "192.0.2.3", 0},
				{theirs, "10.9.0.0/24", "192.0.2.3", 100},
				{theirs, "fd09::/64", "2001:db8::3", 100},
				{ours, "10.7.0.0/24", "192.0.2.2", 0},
			},
			want: []route{{dst: "10.9.0.0/24", gw: "192.0.2.2"}, {dst: "fd09::/64", gw: "2001:db8::2"}},
			after: []string{
				"p41 10.8.0.0/24 via 192.0.2.3",
				"p40 10.9.0.0/24 via 192.0.2.2",
				"p41 10.9.0.0/24 via 192.0.2.3 metric 100",
				"p40 fd09::/64 via 2001:db8::2",
				"p41 fd09::/64 via 2001:db8::3 metric 100",
			},
		},
		{
			name:   "changed gateway replaced",
			before: []route{{ours, "10.9.0.0/24", "192.0.2.2", 0}, {ours, "fd09::/64", "2001:db8::2", 0}},
			want:   []route{{dst: "10.9.0.0/24", gw: "192.0.2.3"}, {dst: "fd09::/64", gw: "2001:db8::3"}},
			after: []string{
				"p40 10.9.0.0/24 via 192.0.2.3",
				"p40 fd09::/64 via 2001:db8::3",
			},
		},
		{
			name:   "changed gateway kept when any route will do",
			before: []route{{ours, "10.9.0.0/24", "192.0.2.2", 0}},
			want:   []route{{dst: "10.9.0.0/24", gw: "192.0.2.3"}},
			same:   "dst",
			after:  []string{"p40 10.9.0.0/24 via 192.0.2.2"},
		},
		{
			name:   "changed gateway replaced, comparing gateways",
			before: []route{{ours, "10.9.0.0/24", "192.0.2.2", 0}, {ours, "fd09::/64", "2001:db8::2", 0}, {ours, "fd08::/64", "2001:db8::2", 0}},
			want:   []route{{dst: "10.9.0.0/24", gw: "192.0.2.3"}, {dst: "fd09::/64", gw: "2001:db8::3"}, {dst: "fd08::/64", gw: "2001:db8::2"}},
			same:   "gateway",
			after: []string{
				"p40 10.9.0.0/24 via 192.0.2.3",
				"p40 fd08::/64 via 2001:db8::2",
				"p40 fd09::/64 via 2001:db8::3",
			},
		},
		{
			name:   "route to unreachable and back",
			before: []route{{ours, "10.9.0.0/24", "192.0.2.2", 0}, {ours, "fd09::/64", "", 0}},
			want:   []route{{dst: "10.9.0.0/24"}, {dst: "fd09::/64", gw: "2001:db8::2"}},
			after: []string{
				"p40 10.9.0.0/24 unreachable",
				"p40 fd09::/64 via 2001:db8::2",
			},
		},
		{
			name: "extra routes to a wanted destination removed",
			before: []route{
				{ours, "10.9.0.0/24", "192.0.2.3", 50},
				{ours, "10.9.0.0/24", "192.0.2.2", 0},
				{ours, "fd09::/64", "2001:db8::3", 50},
			},
			want: []route{{dst: "10.9.0.0/24", gw: "192.0.2.2"}, {dst: "fd09::/64", gw: "2001:db8::2"}},
			after: []string{
				"p40 10.9.0.0/24 via 192.0.2.2",
				"p40 fd09::/64 via 2001:db8::2",
			},
		},
		{
			name:  "default routes",
			want:  []route{{dst: "0.0.0.0/0", gw: "192.0.2.2"}, {dst: "::/0", gw: "2001:db8::2"}},
			after: []string{"p40 0.0.0.0/0 via 192.0.2.2", "p40 ::/0 via 2001:db8::2"},
		},
		{
			name:    "destination given twice",
			before:  []route{{ours, "10.8.0.0/24", "192.0.2.2", 0}},
			want:    []route{{dst: "10.9.0.0/24", gw: "192.0.2.2"}, {dst: "10.9.0.0/24", gw: "192.0.2.3"}},
			wantErr: true,
			after:   []string{"p40 10.9.0.0/24 via 192.0.2.2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newTestNS(t)
			rs := routeSync{table: table, protocol: ours, same: sameFuncs[tt.same]}
			link := 0
			want := func() []*netlink.Route {
				var out []*netlink.Route
				for _, r := range tt.want {
					out = append(out, toNetlink(r, link))
				}
				return out
			}
			list := func() []string {
				var got []string
				inNS(t, host, func() error {
					routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
					if err != nil {
						return err
					}
					for _, r := range routes {
						got = append(got, show(r))
					}
					return nil
				})
				slices.Sort(got)
				return got
			}

			inNS(t, host, func() error {
				if err := addVethPair("rs0", "rs1", 0); err != nil {
					return err
				}
				l, err := netlink.LinkByName("rs0")
				if err != nil {
					return err
				}
				link = l.Attrs().Index
				for _, a := range []string{"192.0.2.1/24", "2001:db8::1/64"} {
					p := netip.MustParsePrefix(a)
					if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: ipNet(p).Mask}, Flags: unix.IFA_F_NODAD}); err != nil {
						return err
					}
				}
				for _, r := range tt.before {
					nr := toNetlink(r, link)
					nr.Table, nr.Protocol = table, r.proto
					if err := netlink.RouteAdd(nr); err != nil {
						return fmt.Errorf("add %+v: %w", r, err)
					}
				}
				return nil
			})

			inNS(t, host, func() error {
				err := rs.apply(want())
				if tt.wantErr != (err != nil) {
					t.Errorf("apply error = %v, want error %v", err, tt.wantErr)
				}
				return nil
			})
			after := slices.Clone(tt.after)
			slices.Sort(after)
			got := list()
			if !slices.Equal(got, after) {
				t.Fatalf("table after sync:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(after, "\n  "))
			}

			// A second run finds nothing to do: no route of the table
			// is written or deleted.
			changes := watchTable(t, host, table, func() {
				if err := rs.apply(want()); (err != nil) != tt.wantErr {
					t.Errorf("second apply error = %v", err)
				}
			})
			if len(changes) > 0 {
				t.Errorf("second run changed the table: %v", changes)
			}
			if got := list(); !slices.Equal(got, after) {
				t.Errorf("table after second sync = %v", got)
			}
		})
	}
}

// watchTable runs fn inside n and returns the changes to routes of table
// that it caused. To know when every change has been seen, it then adds a
// marker route to the table and reads events up to the marker's.
func watchTable(t *testing.T, n ns.NetNS, table int, fn func()) []string {
	t.Helper()
	marker := &netlink.Route{
		Table:    table,
		Dst:      ipNet(netip.MustParsePrefix("198.51.100.0/24")),
		Type:     unix.RTN_UNREACHABLE,
		Protocol: 99,
	}
	updates := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	inNS(t, n, func() error {
		// The socket belongs to the namespace it is opened in.
		if err := netlink.RouteSubscribe(updates, done); err != nil {
			return err
		}
		fn()
		return netlink.RouteAdd(marker)
	})
	var changes []string
	timeout := time.After(10 * time.Second)
	for {
		select {
		case u, ok := <-updates:
			if !ok {
				t.Fatal("route subscription ended")
			}
			if u.Table != table {
				continue // the kernel's own routes, of other tables
			}
			if u.Protocol == marker.Protocol {
				inNS(t, n, func() error { return netlink.RouteDel(marker) })
				return changes
			}
			changes = append(changes, fmt.Sprintf("event %d: %s", u.Type, u.Route))
		case <-timeout:
			t.Fatal("no event for the marker route")
		}
	}
}
