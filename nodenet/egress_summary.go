package nodenet

import (
	"fmt"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EgressSummary counts what egress has programmed in one pod's network
// namespace; the zero value means nothing. Tests and diagnostics compare
// it before and after a restart or a second run: programming is
// idempotent, so the counts never grow.
type EgressSummary struct {
	// Links are the egress tunnel devices (client and gateway).
	Links int
	// FDB and Neighs are the FDB entries and permanent neighbours on them.
	FDB, Neighs int
	// Rules are the policy rules egress owns (protocol 30).
	Rules int
	// ClientRoutes and GatewayRoutes are the routes of EgressClientTable
	// and EgressGatewayTable.
	ClientRoutes, GatewayRoutes int
	// NFTTable tells whether the table EgressNFTable exists; NFTRules
	// counts the rules in its chains, NFTSets its named sets and
	// NFTElements the elements of those sets.
	NFTTable                       bool
	NFTRules, NFTSets, NFTElements int
	// ClientNFTRules counts the rules of a client's table
	// EgressClientNFTable (steering established connections).
	ClientNFTRules int
}

// SummarizeEgress counts the egress settings in the namespace at netnsPath.
// coild rewrites a pod's settings in place while it runs (a client's
// nftables table is replaced in one transaction on every resync), and a
// reading is several dumps, which can straddle such a rewrite, count a
// table twice or fail on an object gone in between: the summary is read
// until two readings in a row agree, a failed reading tried again.
func SummarizeEgress(netnsPath string) (EgressSummary, error) {
	var prev EgressSummary
	have := false
	var lastErr error
	for range maxSummaryReads {
		cur, err := summarizeEgressOnce(netnsPath)
		switch {
		case err != nil:
			// Something went between two dumps of the reading (the
			// nftables library does not keep the errno to tell), or
			// the namespace is gone, which the next readings tell.
			have, lastErr = false, err
			continue
		case have && cur == prev:
			return cur, nil
		}
		prev, have, lastErr = cur, true, nil
	}
	if lastErr != nil {
		return prev, lastErr
	}
	return prev, fmt.Errorf("egress settings in %s changed on each of %d readings", netnsPath, maxSummaryReads)
}

// maxSummaryReads bounds the readings SummarizeEgress makes.
const maxSummaryReads = 10

// summarizeEgressOnce is one reading of SummarizeEgress.
func summarizeEgressOnce(netnsPath string) (EgressSummary, error) {
	var sum EgressSummary
	err := inPodNS(netnsPath, func(podNS ns.NetNS) error {
		links, err := retryDump("links", netlink.LinkList)
		if err != nil {
			return err
		}
		for _, l := range links {
			name := l.Attrs().Name
			if l.Type() != linkTypeVXLAN || !strings.HasPrefix(name, EgressClientLinkPrefix) && !strings.HasPrefix(name, EgressGatewayLinkPrefix) {
				continue
			}
			sum.Links++
			idx := l.Attrs().Index
			fdb, err := retryDump("fdb", func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, unix.AF_BRIDGE) })
			if err != nil {
				return err
			}
			sum.FDB += len(fdb)
			neighs, err := retryDump("neighbours", func() ([]netlink.Neigh, error) { return netlink.NeighList(idx, netlink.FAMILY_ALL) })
			if err != nil {
				return err
			}
			for _, n := range neighs {
				if n.State&netlink.NUD_PERMANENT != 0 && (n.Family == unix.AF_INET || n.Family == unix.AF_INET6) {
					sum.Neighs++
				}
			}
		}
		rules, err := retryDump("rules", func() ([]netlink.Rule, error) { return netlink.RuleList(netlink.FAMILY_ALL) })
		if err != nil {
			return err
		}
		for _, r := range rules {
			if r.Protocol == egressProtocol {
				sum.Rules++
			}
		}
		for table, count := range map[int]*int{EgressClientTable: &sum.ClientRoutes, EgressGatewayTable: &sum.GatewayRoutes} {
			routes, err := retryDump("routes", func() ([]netlink.Route, error) {
				return netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
			})
			if err != nil {
				return err
			}
			*count = len(routes)
		}
		return summarizeNFT(int(podNS.Fd()), &sum)
	})
	if err != nil {
		return EgressSummary{}, fmt.Errorf("summarize egress in %s: %w", netnsPath, err)
	}
	return sum, nil
}

func summarizeNFT(nsFd int, sum *EgressSummary) error {
	conn, err := nftables.New(nftables.WithNetNSFd(nsFd))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == EgressClientNFTable {
			chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
			if err != nil {
				return fmt.Errorf("list nftables chains: %w", err)
			}
			for _, c := range chains {
				if c.Table.Name == EgressClientNFTable {
					rules, err := conn.GetRules(t, c)
					if err != nil {
						return fmt.Errorf("list rules of chain %s: %w", c.Name, err)
					}
					sum.ClientNFTRules += len(rules)
				}
			}
		}
		if t.Name != EgressNFTable {
			continue
		}
		sum.NFTTable = true
		chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return fmt.Errorf("list nftables chains: %w", err)
		}
		for _, c := range chains {
			if c.Table.Name != EgressNFTable {
				continue
			}
			rules, err := conn.GetRules(t, c)
			if err != nil {
				return fmt.Errorf("list rules of chain %s: %w", c.Name, err)
			}
			sum.NFTRules += len(rules)
		}
		sets, err := conn.GetSets(t)
		if err != nil {
			return fmt.Errorf("list nftables sets: %w", err)
		}
		for _, s := range sets {
			if s.Anonymous {
				continue
			}
			sum.NFTSets++
			elems, err := conn.GetSetElements(s)
			if err != nil {
				return fmt.Errorf("list elements of set %s: %w", s.Name, err)
			}
			sum.NFTElements += len(elems)
		}
	}
	return nil
}

// EgressGatewayDrops returns how many VXLAN packets the gateway pod whose
// namespace is at netnsPath has dropped because they came from an address
// that was not one of its clients (the counter EgressGuardCounter). The
// count grows across syncs; it is 0 where no gateway is programmed.
func EgressGatewayDrops(netnsPath string) (uint64, error) {
	st, err := ReadEgressGatewayStats(netnsPath)
	return st.ForeignDrops, err
}

// EgressGatewayStats is what a gateway pod's namespace counts.
type EgressGatewayStats struct {
	// ForeignDrops: VXLAN packets dropped because they came from no
	// client (EgressGuardCounter).
	ForeignDrops uint64
	// MasqueradedPackets and MasqueradedBytes: what the gateway sent out
	// for its clients, after source NAT (EgressMasqueradeCounter).
	MasqueradedPackets, MasqueradedBytes uint64
	// ConntrackEntries is the number of connections the namespace's
	// conntrack table holds; ConntrackMax the most it may hold (the
	// host's nf_conntrack_max, which every namespace shares as its
	// limit). A full table drops new connections.
	ConntrackEntries, ConntrackMax uint64
}

// ReadEgressGatewayStats reads the counters of the gateway pod whose
// namespace is at netnsPath. The nftables counters are 0 where no gateway
// is programmed; they grow across syncs.
func ReadEgressGatewayStats(netnsPath string) (EgressGatewayStats, error) {
	var st EgressGatewayStats
	err := inPodNS(netnsPath, func(podNS ns.NetNS) error {
		conn, err := nftables.New(nftables.WithNetNSFd(int(podNS.Fd())))
		if err != nil {
			return fmt.Errorf("nftables: %w", err)
		}
		t := &nftables.Table{Family: nftables.TableFamilyINet, Name: EgressNFTable}
		got, err := listGatewayNFT(conn, t)
		if err != nil {
			return err
		}
		for _, o := range got.objects {
			c, ok := o.Obj.(*expr.Counter)
			if !ok {
				continue
			}
			switch o.Name {
			case EgressGuardCounter:
				st.ForeignDrops = c.Packets
			case EgressMasqueradeCounter:
				st.MasqueradedPackets, st.MasqueradedBytes = c.Packets, c.Bytes
			}
		}
		// /proc/sys/net shows the namespace of the thread that opens it:
		// this one, inside the pod's namespace.
		if st.ConntrackEntries, err = readSysctlUint("net/netfilter/nf_conntrack_count"); err != nil {
			return err
		}
		st.ConntrackMax, err = readSysctlUint("net/netfilter/nf_conntrack_max")
		return err
	})
	if err != nil {
		return EgressGatewayStats{}, fmt.Errorf("egress gateway counters in %s: %w", netnsPath, err)
	}
	return st, nil
}
