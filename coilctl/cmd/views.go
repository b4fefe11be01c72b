package cmd

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/coil-project/coil/model"
)

// The types in this file are coilctl's JSON output. They are a documented,
// stable interface (docs/coilctl.md) and deliberately separate from the
// model's records, which are etcd's storage format and may change with the
// schema version. Add fields; never rename or remove them.

// subnetJSON is one subnet of a pool; a dual-stack pair has both fields.
// Drained is present when the subnet itself is drained; Removed marks the
// place of a removed subnet (positions are the "subnet" of blocks).
type subnetJSON struct {
	IPv4    string `json:"ipv4,omitempty"`
	IPv6    string `json:"ipv6,omitempty"`
	Drained bool   `json:"drained,omitempty"`
	Removed bool   `json:"removed,omitempty"`
}

// blockCountJSON counts blocks owned by nodes against the pool's total.
type blockCountJSON struct {
	Used  int `json:"used"`
	Total int `json:"total"`
}

// addressCountJSON counts addresses of a pool. A dual-stack pair counts
// once: it is one allocation.
type addressCountJSON struct {
	Used int `json:"used"`
	// Free is every address not allocated, in owned blocks or not.
	Free int `json:"free"`
	// FreeInOwnedBlocks is what nodes can hand out without taking a
	// new block.
	FreeInOwnedBlocks int `json:"freeInOwnedBlocks"`
	Capacity          int `json:"capacity"`
}

// poolJSON is a pool with its usage: an element of "pool list" and the
// body of "pool show".
type poolJSON struct {
	Name          string       `json:"name"`
	Family        string       `json:"family"`
	BlockSizeBits int          `json:"blockSizeBits"`
	BlockSize     int          `json:"blockSize"`
	Subnets       []subnetJSON `json:"subnets"`
	// Drained is present when the whole pool is drained.
	Drained   bool             `json:"drained,omitempty"`
	Blocks    blockCountJSON   `json:"blocks"`
	Addresses addressCountJSON `json:"addresses"`
}

// poolListJSON is the output of "pool list".
type poolListJSON struct {
	Pools []poolJSON `json:"pools"`
}

// poolDetailJSON is the output of "pool show": the pool, the usage of
// each subnet and the owned blocks.
type poolDetailJSON struct {
	poolJSON
	SubnetUsage []subnetUsageJSON `json:"subnetUsage"`
	OwnedBlocks []blockJSON       `json:"ownedBlocks"`
}

// subnetUsageJSON is the usage of one subnet (removed ones left out).
// Drained is true when the subnet or its pool is drained: its free
// blocks are taken by no node, and Addresses.Used is what still lives in
// it.
type subnetUsageJSON struct {
	Index int `json:"index"`
	subnetJSON
	Drained   bool             `json:"drained"`
	Blocks    blockCountJSON   `json:"blocks"`
	Addresses addressCountJSON `json:"addresses"`
}

func newSubnetUsageJSON(u model.SubnetUsage) subnetUsageJSON {
	return subnetUsageJSON{
		Index:      u.Index,
		subnetJSON: subnetJSON{IPv4: textOrEmpty(u.Subnet.IPv4), IPv6: textOrEmpty(u.Subnet.IPv6)},
		Drained:    u.Drained,
		Blocks:     blockCountJSON{Used: u.BlocksOwned, Total: u.Blocks},
		Addresses: addressCountJSON{Used: u.AddressesInUse, Free: max(u.Addresses-u.AddressesInUse, 0),
			FreeInOwnedBlocks: u.FreeInOwnedBlocks, Capacity: u.Addresses},
	}
}

// blockJSON is a block owned by a node, with its usage.
type blockJSON struct {
	ID         string    `json:"id"`
	Pool       string    `json:"pool"`
	Subnet     int       `json:"subnet"`
	Index      int       `json:"index"`
	Node       string    `json:"node"`
	IPv4       string    `json:"ipv4,omitempty"`
	IPv6       string    `json:"ipv6,omitempty"`
	Used       int       `json:"used"`
	Free       int       `json:"free"`
	AcquiredAt time.Time `json:"acquiredAt"`
}

// nodeBlocksJSON is the output of "node blocks".
type nodeBlocksJSON struct {
	Node   string      `json:"node"`
	Blocks []blockJSON `json:"blocks"`
}

// blockID identifies a block the way both block and address records do.
type blockID struct {
	pool          string
	subnet, index int
}

func idOfBlock(b model.Block) blockID     { return blockID{b.Pool, b.Subnet, b.Index} }
func idOfAddress(a model.Address) blockID { return blockID{a.Pool, a.Subnet, a.Block} }

// countByBlock counts allocated addresses per block.
func countByBlock(addrs []model.Address) map[blockID]int {
	m := make(map[blockID]int)
	for _, a := range addrs {
		m[idOfAddress(a)]++
	}
	return m
}

// textOrEmpty shows a netip.Prefix or netip.Addr, and an absent family
// (the zero value) as "", which JSON then omits.
func textOrEmpty(v interface {
	IsValid() bool
	String() string
}) string {
	if !v.IsValid() {
		return ""
	}
	return v.String()
}

func newSubnetJSON(s model.Subnet) subnetJSON {
	return subnetJSON{IPv4: textOrEmpty(s.IPv4), IPv6: textOrEmpty(s.IPv6), Drained: s.Drained, Removed: s.Removed}
}

func newBlockJSON(b model.Block, used int) blockJSON {
	return blockJSON{
		ID: b.ID(), Pool: b.Pool, Subnet: b.Subnet, Index: b.Index, Node: b.Node,
		IPv4: textOrEmpty(b.IPv4), IPv6: textOrEmpty(b.IPv6),
		Used: used, Free: max(b.Size()-used, 0), AcquiredAt: b.AcquiredAt,
	}
}

// newPoolJSON summarises pool p from every block and address record of
// it; records of other pools are ignored, so callers may pass all of them.
func newPoolJSON(p model.Pool, blocks []model.Block, addrs []model.Address) poolJSON {
	v := poolJSON{
		Name:          p.Name,
		Family:        p.Family(),
		BlockSizeBits: p.BlockSizeBits,
		BlockSize:     p.BlockSize(),
		Drained:       p.Drained,
		Subnets:       make([]subnetJSON, 0, len(p.Subnets)),
		Blocks:        blockCountJSON{Total: p.NumBlocks()},
		Addresses:     addressCountJSON{Capacity: p.NumBlocks() * p.BlockSize()},
	}
	for _, s := range p.Subnets {
		v.Subnets = append(v.Subnets, newSubnetJSON(s))
	}
	owned := make(map[blockID]bool)
	for _, b := range blocks {
		if b.Pool == p.Name {
			owned[idOfBlock(b)] = true
		}
	}
	v.Blocks.Used = len(owned)
	usedInOwned := 0
	for _, a := range addrs {
		if a.Pool != p.Name {
			continue
		}
		v.Addresses.Used++
		if owned[idOfAddress(a)] {
			usedInOwned++
		}
	}
	v.Addresses.Free = max(v.Addresses.Capacity-v.Addresses.Used, 0)
	v.Addresses.FreeInOwnedBlocks = max(len(owned)*p.BlockSize()-usedInOwned, 0)
	return v
}

// subnetsCell shows a pool's subnets in one table cell: a dual-stack pair
// as "v4,v6" (as --ipv6 pairs them), subnets separated by ";" so that the
// cell holds no space. Removed subnets are left out.
func subnetsCell(subnets []model.Subnet) string {
	parts := make([]string, 0, len(subnets))
	for _, s := range subnets {
		if !s.Removed {
			parts = append(parts, s.String())
		}
	}
	return strings.Join(parts, ";")
}

// drainedCell says what of a pool is drained: "no", "pool", or its
// drained subnets as subnetsCell shows them.
func drainedCell(p model.Pool) string {
	if p.Drained {
		return "pool"
	}
	var drained []model.Subnet
	for _, s := range p.Subnets {
		if s.Drained {
			drained = append(drained, s)
		}
	}
	if len(drained) == 0 {
		return "no"
	}
	return subnetsCell(drained)
}

// sortBlocks orders blocks by node (when byNode), then pool, subnet and
// index. etcd returns keys in byte order, which puts block 10 before 2.
func sortBlocks(blocks []model.Block, byNode bool) {
	slices.SortFunc(blocks, func(a, b model.Block) int {
		if byNode {
			if c := cmp.Compare(a.Node, b.Node); c != 0 {
				return c
			}
		}
		return cmp.Or(cmp.Compare(a.Pool, b.Pool), cmp.Compare(a.Subnet, b.Subnet), cmp.Compare(a.Index, b.Index))
	})
}
