package model

// Capacity is how much of a pool, or of one of its subnets, is used.
// A dual-stack pair of addresses counts once: it is one allocation.
type Capacity struct {
	// Blocks is every block; BlocksOwned those nodes own; BlocksFree
	// those nodes may still take: not owned and not drained.
	Blocks      int
	BlocksOwned int
	BlocksFree  int
	// Addresses is every address; AddressesInUse the allocated ones.
	Addresses      int
	AddressesInUse int
	// FreeInOwnedBlocks is what nodes can hand out without a new block.
	FreeInOwnedBlocks int
	// BlockSize is the number of addresses of one block.
	BlockSize int
}

// Usable is the number of addresses that can hold a pod: those of owned
// blocks and of the blocks nodes may still take. A drain takes the free
// blocks of the drained subnets out of it.
func (c Capacity) Usable() int { return (c.BlocksOwned + c.BlocksFree) * c.BlockSize }

// Ratio is AddressesInUse over Usable: the share of what can be used that
// is, and what --pool-usage-warning compares. When nothing is usable (a
// drained pool whose blocks the nodes have all returned) it is 0, or 1 if
// records remain in use anyway.
func (c Capacity) Ratio() float64 {
	u := c.Usable()
	if u == 0 {
		return float64(min(c.AddressesInUse, 1))
	}
	return float64(c.AddressesInUse) / float64(u)
}

func (c *Capacity) add(o Capacity) {
	c.Blocks += o.Blocks
	c.BlocksOwned += o.BlocksOwned
	c.BlocksFree += o.BlocksFree
	c.Addresses += o.Addresses
	c.AddressesInUse += o.AddressesInUse
	c.FreeInOwnedBlocks += o.FreeInOwnedBlocks
}

// SubnetUsage is the capacity of one subnet of a pool.
type SubnetUsage struct {
	// Index is the subnet's position in the pool.
	Index  int
	Subnet Subnet
	// Drained is true when the subnet or the whole pool is drained.
	Drained bool
	Capacity
}

// PoolUsage is the capacity of a pool and of each of its subnets (removed
// subnets left out).
type PoolUsage struct {
	Pool    string
	Drained bool
	Capacity
	Subnets []SubnetUsage
}

// Usage counts the pool's capacity from block and address records; records
// of other pools are ignored, so callers may pass every record.
func (p *Pool) Usage(blocks []Block, addrs []Address) PoolUsage {
	u := PoolUsage{Pool: p.Name, Drained: p.Drained, Capacity: Capacity{BlockSize: p.BlockSize()}}
	type blockPos struct{ subnet, index int }
	owned := map[blockPos]bool{}
	subnets := make([]*SubnetUsage, len(p.Subnets))
	for i, s := range p.Subnets {
		if s.Removed {
			continue
		}
		n := s.NumBlocks(p.BlockSizeBits)
		subnets[i] = &SubnetUsage{Index: i, Subnet: s, Drained: p.SubnetDrained(i),
			Capacity: Capacity{Blocks: n, Addresses: n * p.BlockSize(), BlockSize: p.BlockSize()}}
	}
	at := func(pool string, subnet int) *SubnetUsage {
		if pool != p.Name || subnet < 0 || subnet >= len(subnets) {
			return nil
		}
		return subnets[subnet]
	}
	for _, b := range blocks {
		if su := at(b.Pool, b.Subnet); su != nil && b.Index < su.Blocks && !owned[blockPos{b.Subnet, b.Index}] {
			owned[blockPos{b.Subnet, b.Index}] = true
			su.BlocksOwned++
			su.FreeInOwnedBlocks += p.BlockSize()
		}
	}
	for _, a := range addrs {
		if su := at(a.Pool, a.Subnet); su != nil {
			su.AddressesInUse++
			if owned[blockPos{a.Subnet, a.Block}] {
				su.FreeInOwnedBlocks--
			}
		}
	}
	for _, su := range subnets {
		if su == nil {
			continue
		}
		if !su.Drained {
			su.BlocksFree = su.Blocks - su.BlocksOwned
		}
		su.FreeInOwnedBlocks = max(su.FreeInOwnedBlocks, 0)
		u.add(su.Capacity)
		u.Subnets = append(u.Subnets, *su)
	}
	return u
}
