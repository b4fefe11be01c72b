package nodenet

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EgressNFTable is the nftables table (family inet) of a gateway pod.
const EgressNFTable = "coil-egress"

// EgressGatewayClient is one client pod a gateway serves.
type EgressGatewayClient struct {
	// Outer is the client's address its tunnel packets come from.
	Outer netip.Addr
	// IPv4 and IPv6 are the client's addresses replies return to (either
	// may be zero).
	IPv4, IPv6 netip.Addr
}

// EgressGateway is the whole egress configuration of one gateway pod.
type EgressGateway struct {
	// VNI identifies the egress the pod is a gateway of.
	VNI uint32
	// IPv4 and IPv6 are the gateway pod's addresses; it gets a tunnel
	// device per family it has.
	IPv4, IPv6 netip.Addr
	// Uplink is the pod interface traffic leaves and replies arrive by;
	// DefaultEgressUplink if empty.
	Uplink string
	// Clients are the client pods the gateway serves now.
	Clients []EgressGatewayClient
}

func (g *EgressGateway) defaults() {
	if g.Uplink == "" {
		g.Uplink = DefaultEgressUplink
	}
	g.IPv4, g.IPv6 = g.IPv4.Unmap(), g.IPv6.Unmap()
}

func (g *EgressGateway) validate() error {
	var problems []string
	if g.VNI == 0 || g.VNI > MaxVNI {
		problems = append(problems, fmt.Sprintf("VNI %d not in 1..%d", g.VNI, MaxVNI))
	}
	if !g.IPv4.IsValid() && !g.IPv6.IsValid() {
		problems = append(problems, "the gateway has no address")
	}
	if g.IPv4.IsValid() && !g.IPv4.Is4() || g.IPv6.IsValid() && (!g.IPv6.Is6() || g.IPv6.Is4In6()) {
		problems = append(problems, fmt.Sprintf("addresses %s and %s are not IPv4 and IPv6", g.IPv4, g.IPv6))
	}
	for _, c := range g.Clients {
		if !g.local(c.Outer).IsValid() {
			problems = append(problems, fmt.Sprintf("client %s is of a family the gateway has no address of", c.Outer))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %v", ErrInvalidEgress, problems)
	}
	return nil
}

// local returns the gateway's address of the family of a.
func (g *EgressGateway) local(a netip.Addr) netip.Addr {
	if !a.IsValid() {
		return netip.Addr{}
	}
	if a.Unmap().Is4() {
		return g.IPv4
	}
	return g.IPv6
}

// SyncEgressGateway makes the gateway pod whose network namespace is at
// netnsPath serve exactly cfg: tunnel devices, return routes and rule, and
// the NAT table (docs/egress.md, "What each side programs"). Running it
// again leaves one copy of everything: the contents of the nftables table
// (but the drop counter, EgressGuardCounter) are replaced in one
// transaction, the rest is diffed.
func SyncEgressGateway(netnsPath string, cfg EgressGateway) error {
	cfg.defaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	err := inPodNS(netnsPath, func(podNS ns.NetNS) error { return syncGateway(podNS, &cfg) })
	if err != nil {
		return fmt.Errorf("sync egress gateway in %s: %w", netnsPath, err)
	}
	return nil
}

// TeardownEgressGateway removes every egress gateway setting from the
// pod's namespace (forwarding stays on). A namespace that is gone already
// is success.
func TeardownEgressGateway(netnsPath string) error {
	err := inPodNS(netnsPath, func(podNS ns.NetNS) error {
		var errs []error
		if err := syncRules([]int{EgressGatewayPriority}, nil); err != nil {
			errs = append(errs, err)
		}
		if err := syncTableRoutes(EgressGatewayTable, nil); err != nil {
			errs = append(errs, err)
		}
		if err := deleteVXLANs(EgressGatewayLinkPrefix, nil); err != nil {
			errs = append(errs, err)
		}
		if err := deleteGatewayNFT(int(podNS.Fd())); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	if err != nil && !netnsGone(err) {
		return fmt.Errorf("tear down egress gateway in %s: %w", netnsPath, err)
	}
	return nil
}

// syncGateway runs inside the gateway pod's namespace.
func syncGateway(podNS ns.NetNS, cfg *EgressGateway) error {
	if err := EnableForwarding(); err != nil {
		return err
	}
	// Effective rp_filter is the larger of "all" and the device's.
	if err := writeSysctl("net/ipv4/conf/all/rp_filter", "0"); err != nil {
		return err
	}
	mtu, err := uplinkMTU(cfg.Uplink)
	if err != nil {
		return err
	}

	var errs []error
	var routes []*netlink.Route
	keep := map[string]bool{}
	var devices []string
	for _, local := range []netip.Addr{cfg.IPv4, cfg.IPv6} {
		if !local.IsValid() {
			continue
		}
		name := EgressGatewayLinkName(cfg.VNI, local)
		link, err := ensureVXLAN(vxlanSpec{
			name:  name,
			vni:   cfg.VNI,
			local: local,
			mac:   EgressGatewayMAC(cfg.VNI),
			mtu:   tunnelMTU(mtu, local),
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		keep[name] = true
		devices = append(devices, name)
		if err := writeSysctl(filepath.Join("net/ipv4/conf", name, "rp_filter"), "0"); err != nil {
			errs = append(errs, err)
		}
		var fdb []fdbEntry
		var neighs []neighEntry
		seen := map[netip.Addr]bool{}
		for _, c := range cfg.Clients {
			if cfg.local(c.Outer) != local {
				continue
			}
			mac := EgressClientMAC(c.Outer)
			fdb = append(fdb, fdbEntry{mac: mac, dst: c.Outer})
			for _, a := range []netip.Addr{c.IPv4.Unmap(), c.IPv6.Unmap()} {
				if !a.IsValid() || seen[a] {
					continue
				}
				seen[a] = true
				neighs = append(neighs, neighEntry{ip: a, mac: mac})
				routes = append(routes, &netlink.Route{
					Dst:       hostNet(a),
					LinkIndex: link.Attrs().Index,
					Scope:     netlink.SCOPE_LINK,
				})
			}
		}
		if err := syncFDB(link, fdb); err != nil {
			errs = append(errs, err)
		}
		if err := syncNeighs(link, neighs); err != nil {
			errs = append(errs, err)
		}
	}
	if err := syncTableRoutes(EgressGatewayTable, dedupRoutes(routes)); err != nil {
		errs = append(errs, err)
	}
	var rules []*netlink.Rule
	for _, a := range []netip.Addr{cfg.IPv4, cfg.IPv6} {
		if !a.IsValid() {
			continue
		}
		r := newRule(familyOf(a), EgressGatewayPriority, EgressGatewayTable)
		r.Mark = EgressMark
		r.IifName = cfg.Uplink
		rules = append(rules, r)
	}
	if err := syncRules([]int{EgressGatewayPriority}, rules); err != nil {
		errs = append(errs, err)
	}
	if err := programGatewayNFT(int(podNS.Fd()), cfg, devices); err != nil {
		errs = append(errs, err)
	}
	if err := deleteVXLANs(EgressGatewayLinkPrefix, keep); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// dedupRoutes keeps the first route per destination: an address cannot
// return through two tunnels.
func dedupRoutes(routes []*netlink.Route) []*netlink.Route {
	seen := map[string]bool{}
	return slices.DeleteFunc(routes, func(r *netlink.Route) bool {
		k := r.Dst.String()
		if seen[k] {
			return true
		}
		seen[k] = true
		return false
	})
}

// deleteVXLANs deletes the vxlan devices named prefix* that keep lacks.
func deleteVXLANs(prefix string, keep map[string]bool) error {
	links, err := vxlanLinks(prefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range links {
		if keep[l.Attrs().Name] {
			continue
		}
		if err := netlink.LinkDel(l); err != nil && !isLinkNotFound(err) {
			errs = append(errs, fmt.Errorf("delete %s: %w", l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// nftIfName is an interface name as nftables compares it: IFNAMSIZ bytes,
// NUL-padded.
func nftIfName(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

// Names inside the gateway's nftables table.
const (
	// EgressGuardCounter is the named counter of the VXLAN packets of the
	// gateway's VNI that came from no client and were dropped. It survives
	// every sync (only teardown removes it), so it only grows.
	EgressGuardCounter = "foreign-vxlan"
	// EgressMasqueradeCounter is the named counter of the packets (and
	// bytes) the gateway sent out masqueraded: those of connections that
	// came in through the tunnel, leaving by the uplink after source NAT.
	// Like the guard's counter it survives syncs.
	EgressMasqueradeCounter = "masqueraded"
	// egressClientSet4 and egressClientSet6 hold the outer addresses of
	// the gateway's current clients, the only sources its VXLAN device
	// takes packets from.
	egressClientSet4 = "clients4"
	egressClientSet6 = "clients6"
)

// programGatewayNFT makes the gateway's nftables table exactly this, in a
// single transaction:
//
//	table inet coil-egress {
//	  set clients4 { type ipv4_addr; elements = { <IPv4 client outers> } }
//	  set clients6 { type ipv6_addr; elements = { <IPv6 client outers> } }
//	  counter foreign-vxlan {}
//	  chain input { type filter hook input priority filter;
//	    meta nfproto ipv4 meta l4proto udp udp dport 4789 @th,96,24 <vni>
//	      ip saddr != @clients4 counter name foreign-vxlan drop
//	    meta nfproto ipv6 meta l4proto udp udp dport 4789 @th,96,24 <vni>
//	      ip6 saddr != @clients6 counter name foreign-vxlan drop
//	    icmp type echo-request @th,64,32 <probe magic> @th,96,32 set <vni>
//	    icmpv6 type echo-request @th,64,32 <probe magic> @th,96,32 set <vni> }
//	  chain prerouting { type filter hook prerouting priority mangle;
//	    iifname "egg4-…" ct mark set 0xc011
//	    iifname "eth0" ct mark 0xc011 meta mark set 0xc011 }
//	  chain postrouting { type nat hook postrouting priority srcnat;
//	    oifname "eth0" ct mark 0xc011 masquerade }
//	  counter masqueraded {}
//	  chain masqueraded { type filter hook postrouting priority srcnat + 1;
//	    oifname "eth0" ct mark 0xc011 counter name masqueraded }
//	}
//
// The NAT chain sees only the first packet of a connection, so the packets
// and bytes masqueraded are counted in a filter chain right after it.
//
// The input chain is the guard: the kernel hands a VXLAN packet to the
// tunnel device only after the input hook, so a packet of this VNI from an
// address that is no client never gets decapsulated, let alone NATed.
// Packets of other VNIs (the pod's own client tunnels of other egresses)
// are left alone.
func programGatewayNFT(nsFd int, cfg *EgressGateway, devices []string) error {
	conn, err := nftables.New(nftables.WithNetNSFd(nsFd))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: EgressNFTable}
	old, err := listGatewayNFT(conn, t)
	if err != nil {
		return err
	}
	// Add the table (a no-op if it exists), delete every chain, set and
	// object an earlier run or crash left in it but the counters, and add
	// them afresh: the transaction leaves exactly this, and the counters
	// keep their counts. Deleting a chain deletes its rules first, which
	// frees the sets for deletion.
	conn.AddTable(t)
	for _, c := range old.chains {
		conn.DelChain(c)
	}
	for _, s := range old.sets {
		conn.DelSet(s)
	}
	for _, o := range old.objects {
		if o.Name != EgressGuardCounter && o.Name != EgressMasqueradeCounter {
			conn.DeleteObject(o)
		}
	}
	conn.AddObj(&nftables.CounterObj{Table: t, Name: EgressGuardCounter})
	conn.AddObj(&nftables.CounterObj{Table: t, Name: EgressMasqueradeCounter})
	sets, err := addClientSets(conn, t, cfg.Clients)
	if err != nil {
		return err
	}

	input := conn.AddChain(&nftables.Chain{
		Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter,
	})
	pre := conn.AddChain(&nftables.Chain{
		Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle,
	})
	post := conn.AddChain(&nftables.Chain{
		Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	counted := conn.AddChain(&nftables.Chain{
		Name: "masqueraded", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityNATSource + 1),
	})

	vni := binaryutil.BigEndian.PutUint32(cfg.VNI)[1:]
	for _, g := range []struct {
		nfproto   byte
		srcOffset uint32
		srcLen    uint32
		set       *nftables.Set
	}{
		{unix.NFPROTO_IPV4, 12, 4, sets[0]},
		{unix.NFPROTO_IPV6, 8, 16, sets[1]},
	} {
		conn.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{g.nfproto}},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
			// UDP destination port.
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(EgressVXLANPort)},
			// The VNI: bytes 4-6 of the VXLAN header after the 8 of UDP.
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 8 + 4, Len: 3},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: vni},
			// The outer source address, looked up in the client set.
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: g.srcOffset, Len: g.srcLen},
			&expr.Lookup{SourceRegister: 1, SetName: g.set.Name, SetID: g.set.ID, Invert: true},
			&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: EgressGuardCounter},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
	}

	// Probe stamp: an echo request opening with EgressProbeMagic gets the
	// VNI written after the magic, and the kernel's reply carries it back
	// (egress_probe.go). The ICMP checksum is updated with the data.
	for _, p := range []struct{ nfproto, l4proto, echo byte }{
		{unix.NFPROTO_IPV4, unix.IPPROTO_ICMP, 8},
		{unix.NFPROTO_IPV6, unix.IPPROTO_ICMPV6, 128},
	} {
		conn.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p.nfproto}},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p.l4proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p.echo}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 8, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint32(EgressProbeMagic)},
			&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint32(cfg.VNI)},
			&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: 1, Base: expr.PayloadBaseTransportHeader,
				Offset: 12, Len: 4, CsumType: expr.CsumTypeInet, CsumOffset: 2},
		}})
	}

	mark := binaryutil.NativeEndian.PutUint32(EgressMark)
	for _, dev := range devices {
		conn.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nftIfName(dev)},
			&expr.Immediate{Register: 1, Data: mark},
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
		}})
	}
	conn.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nftIfName(cfg.Uplink)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: mark},
		&expr.Immediate{Register: 1, Data: mark},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}})
	conn.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nftIfName(cfg.Uplink)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: mark},
		&expr.Masq{},
	}})
	conn.AddRule(&nftables.Rule{Table: t, Chain: counted, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: nftIfName(cfg.Uplink)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: mark},
		&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: EgressMasqueradeCounter},
	}})
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("program nftables table %s: %w", EgressNFTable, err)
	}
	return nil
}

// addClientSets queues the two client sets (IPv4, then IPv6) with the
// clients' outer addresses.
func addClientSets(conn *nftables.Conn, t *nftables.Table, clients []EgressGatewayClient) ([2]*nftables.Set, error) {
	sets := [2]*nftables.Set{
		{Table: t, Name: egressClientSet4, KeyType: nftables.TypeIPAddr},
		{Table: t, Name: egressClientSet6, KeyType: nftables.TypeIP6Addr},
	}
	var elems [2][]nftables.SetElement
	seen := map[netip.Addr]bool{}
	for _, c := range clients {
		a := c.Outer.Unmap()
		if seen[a] {
			continue
		}
		seen[a] = true
		i := 0
		if a.Is6() {
			i = 1
		}
		elems[i] = append(elems[i], nftables.SetElement{Key: a.AsSlice()})
	}
	for i, s := range sets {
		if err := conn.AddSet(s, elems[i]); err != nil {
			return sets, fmt.Errorf("nftables set %s: %w", s.Name, err)
		}
	}
	return sets, nil
}

// gatewayNFT is what a gateway's nftables table holds.
type gatewayNFT struct {
	chains  []*nftables.Chain
	sets    []*nftables.Set
	objects []*nftables.NamedObj
}

// listGatewayNFT lists the chains, sets and objects of table t; all empty
// if t does not exist.
func listGatewayNFT(conn *nftables.Conn, t *nftables.Table) (gatewayNFT, error) {
	var got gatewayNFT
	tables, err := conn.ListTablesOfFamily(t.Family)
	if err != nil {
		return got, fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(x *nftables.Table) bool { return x.Name == t.Name }) {
		return got, nil
	}
	chains, err := conn.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return got, fmt.Errorf("list nftables chains: %w", err)
	}
	for _, c := range chains {
		if c.Table.Name == t.Name {
			got.chains = append(got.chains, c)
		}
	}
	sets, err := conn.GetSets(t)
	if err != nil {
		return got, fmt.Errorf("list nftables sets of %s: %w", t.Name, err)
	}
	for _, s := range sets {
		// Anonymous sets belong to a rule and go with it.
		if !s.Anonymous {
			got.sets = append(got.sets, s)
		}
	}
	objs, err := conn.GetNamedObjects(t)
	if err != nil {
		return got, fmt.Errorf("list nftables objects of %s: %w", t.Name, err)
	}
	for _, o := range objs {
		if no, ok := o.(*nftables.NamedObj); ok {
			got.objects = append(got.objects, no)
		}
	}
	return got, nil
}

// deleteGatewayNFT removes the gateway's nftables table if it exists.
func deleteGatewayNFT(nsFd int) error {
	conn, err := nftables.New(nftables.WithNetNSFd(nsFd))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == EgressNFTable {
			conn.DelTable(t)
			if err := conn.Flush(); err != nil {
				return fmt.Errorf("delete nftables table %s: %w", EgressNFTable, err)
			}
		}
	}
	return nil
}
