package nodenet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// PeerRouter programs routes to other nodes' address blocks via those
// nodes' addresses, for flat L2 networks where no routing daemon runs.
type PeerRouter struct {
	// TableID is the table to install into; 0 means the main table.
	TableID int
	// Protocol marks the routes PeerRouter owns.
	Protocol netlink.RouteProtocol
}

func (pr *PeerRouter) table() int {
	if pr.TableID == 0 {
		return unix.RT_TABLE_MAIN
	}
	return pr.TableID
}

// Sync makes the table hold exactly one route "<block> via <node address>"
// for each entry of routes among routes of Protocol, replacing ones whose
// gateway changed and deleting the rest. It goes on after a failure and
// returns all failures joined.
func (pr *PeerRouter) Sync(routes map[netip.Prefix]netip.Addr) error {
	table := pr.table()
	existing, err := tableRoutes(table, pr.Protocol)
	if err != nil {
		return err
	}
	want := make(map[netip.Prefix]netip.Addr, len(routes))
	for p, gw := range routes {
		want[p.Masked()] = gw.Unmap()
	}

	var errs []error
	current := make(map[netip.Prefix]bool, len(existing))
	for _, r := range existing {
		dst, ok := routeDst(r, r.Family)
		gw, gwOK := addrOf(r.Gw)
		if ok && gwOK && len(r.MultiPath) == 0 && want[dst] == gw && !current[dst] {
			current[dst] = true
			continue
		}
		if err := deleteRoute(&r); err != nil {
			errs = append(errs, fmt.Errorf("delete peer route %s via %s: %w", r.Dst, r.Gw, err))
		}
	}
	for p, gw := range want {
		if current[p] {
			continue
		}
		if !gw.IsValid() || gw.Is4() != p.Addr().Unmap().Is4() {
			errs = append(errs, fmt.Errorf("peer route %s via %s: gateway of another address family", p, gw))
			continue
		}
		r := &netlink.Route{
			Table:    table,
			Dst:      ipNet(p),
			Gw:       net.IP(gw.AsSlice()),
			Protocol: pr.Protocol,
		}
		if err := netlink.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("add peer route %s via %s table %d: %w", p, gw, table, err))
		}
	}
	return errors.Join(errs...)
}
