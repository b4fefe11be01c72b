package nodenet

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ErrInvalidTable is returned for a routing table id Coil must not manage.
var ErrInvalidTable = errors.New("invalid routing table")

// Exporter keeps the address blocks of this node in a dedicated kernel
// routing table, as routes to lo, so that a routing daemon (BIRD's kernel
// protocol with "learn") can import and advertise them. Nothing routes
// with that table itself: no rule points to it.
//
// Only routes of Protocol in TableID are ever changed, so an operator or
// another program can share the table using another protocol id.
type Exporter struct {
	// TableID is the routing table; Coil's default is 119.
	TableID int
	// Protocol marks Coil's routes; Coil's default is 30.
	Protocol netlink.RouteProtocol
}

func (e *Exporter) validate() error {
	switch e.TableID {
	case unix.RT_TABLE_UNSPEC, unix.RT_TABLE_DEFAULT, unix.RT_TABLE_MAIN, unix.RT_TABLE_LOCAL:
		// Routes to lo in a table that is used for lookups would
		// black-hole the node's own pods.
		return fmt.Errorf("%w: export table %d is a table the kernel routes with", ErrInvalidTable, e.TableID)
	}
	if e.TableID < 0 {
		return fmt.Errorf("%w: export table %d", ErrInvalidTable, e.TableID)
	}
	return nil
}

// route returns the exported route for p.
func (e *Exporter) route(p netip.Prefix, loIndex int) *netlink.Route {
	r := &netlink.Route{
		Table:     e.TableID,
		Dst:       ipNet(p),
		LinkIndex: loIndex,
		Protocol:  e.Protocol,
	}
	if p.Addr().Unmap().Is4() {
		r.Scope = netlink.SCOPE_LINK
	}
	return r
}

// loIndex returns the index of the loopback link (1 in practice, but looked
// up rather than assumed).
func loIndex() (int, error) {
	lo, err := netlink.LinkByName(loopbackName)
	if err != nil {
		return 0, fmt.Errorf("find %s: %w", loopbackName, err)
	}
	return lo.Attrs().Index, nil
}

// Export adds (or keeps) the route of p in the export table.
func (e *Exporter) Export(p netip.Prefix) error {
	if err := e.validate(); err != nil {
		return err
	}
	lo, err := loIndex()
	if err != nil {
		return err
	}
	r := e.route(p, lo)
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("export %s to table %d: %w", p, e.TableID, err)
	}
	return nil
}

// Withdraw removes the route of p from the export table; a route that is
// not there is success.
func (e *Exporter) Withdraw(p netip.Prefix) error {
	if err := e.validate(); err != nil {
		return err
	}
	routes, err := e.routes()
	if err != nil {
		return err
	}
	p = p.Masked()
	for _, r := range routes {
		if dst, ok := routeDst(r, r.Family); ok && dst == p {
			if err := deleteRoute(&r); err != nil {
				return fmt.Errorf("withdraw %s from table %d: %w", p, e.TableID, err)
			}
		}
	}
	return nil
}

// List returns the prefixes exported now, sorted.
func (e *Exporter) List() ([]netip.Prefix, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	routes, err := e.routes()
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, r := range routes {
		if dst, ok := routeDst(r, r.Family); ok {
			out = append(out, dst)
		}
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out), nil
}

// Sync makes the export table hold exactly want among routes of Protocol:
// missing ones are added, others of Protocol removed. It goes on after a
// failure so one bad prefix does not keep the rest stale, and returns all
// failures joined.
func (e *Exporter) Sync(want []netip.Prefix) error {
	if err := e.validate(); err != nil {
		return err
	}
	lo, err := loIndex()
	if err != nil {
		return err
	}
	seen := make(map[netip.Prefix]bool, len(want))
	routes := make([]*netlink.Route, 0, len(want))
	for _, p := range want {
		if p = p.Masked(); !seen[p] {
			seen[p] = true
			routes = append(routes, e.route(p, lo))
		}
	}
	// Any route of ours to an exported prefix will do: the routing daemon
	// only looks at destinations.
	if err := e.table().apply(routes); err != nil {
		return fmt.Errorf("sync export table %d: %w", e.TableID, err)
	}
	return nil
}

func (e *Exporter) table() routeSync {
	return routeSync{table: e.TableID, protocol: e.Protocol}
}

// routes lists the routes of Protocol in TableID, both families.
func (e *Exporter) routes() ([]netlink.Route, error) {
	return tableRoutes(e.TableID, e.Protocol)
}

// tableRoutes lists the routes of one protocol in one table, both families.
func tableRoutes(table int, proto netlink.RouteProtocol) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: table, Protocol: proto}
	routes, err := retryDump("routes", func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes of protocol %d in table %d: %w", proto, table, err)
	}
	return routes, nil
}

// deleteRoute deletes a route as listed; one already gone is success.
func deleteRoute(r *netlink.Route) error {
	if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
		return err
	}
	return nil
}

// comparePrefix orders IPv4 before IPv6, then by address, then by length.
func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
