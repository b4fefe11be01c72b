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
type subnetJSON struct {
	IPv4 string `json:"ipv4,omitempty"`
	IPv6 string `json:"ipv6,omitempty"`
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
	Name          string           `json:"name"`
	Family        string           `json:"family"`
	BlockSizeBits int              `json:"blockSizeBits"`
	BlockSize     int              `json:"blockSize"`
	Subnets       []subnetJSON     `json:"subnets"`
	Blocks        blockCountJSON   `json:"blocks"`
	Addresses     addressCountJSON `json:"addresses"`
}

// poolListJSON is the output of "pool list".
type poolListJSON struct {
	Pools []poolJSON `json:"pools"`
}

// poolDetailJSON is the output of "pool show": the pool and its owned blocks.
type poolDetailJSON struct {
	poolJSON
	OwnedBlocks []blockJSON `json:"ownedBlocks"`
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
	return subnetJSON{IPv4: textOrEmpty(s.IPv4), IPv6: textOrEmpty(s.IPv6)}
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
// cell holds no space.
func subnetsCell(subnets []model.Subnet) string {
	parts := make([]string, 0, len(subnets))
	for _, s := range subnets {
		parts = append(parts, s.String())
	}
	return strings.Join(parts, ";")
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
