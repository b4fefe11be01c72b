package model

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"regexp"
)

const (
	// MaxBlockSizeBits caps the block size at 2^16 addresses: coild keeps a
	// bitmap per block in memory, and larger blocks waste address space.
	MaxBlockSizeBits = 16
	// MaxBlocksPerSubnet bounds how many blocks one subnet may be cut into.
	// It keeps the block scan of a pool small when a node acquires a block.
	MaxBlocksPerSubnet = 1 << 20
)

var dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// Subnet is one address range of a pool: IPv4 only, IPv6 only, or a
// dual-stack pair of equal size. In a pair, the same block index and offset
// give a pod one address of each family.
type Subnet struct {
	IPv4 netip.Prefix `json:"ipv4,omitzero"`
	IPv6 netip.Prefix `json:"ipv6,omitzero"`
	// Drained subnets give no new blocks; blocks already owned stay
	// (Store.SetDrained).
	Drained bool `json:"drained,omitempty"`
	// Removed marks the place of a subnet taken out of the pool
	// (Store.RemoveSubnet). It has no prefixes and no blocks; it stays in
	// the list because a subnet's position is part of the keys of the
	// blocks and addresses of the subnets after it.
	Removed bool `json:"removed,omitempty"`
}

// Pool is a named set of subnets cut into blocks of 2^BlockSizeBits addresses.
type Pool struct {
	Name          string   `json:"name"`
	BlockSizeBits int      `json:"blockSizeBits"`
	Subnets       []Subnet `json:"subnets"`
	// Drained pools give no new blocks from any subnet; nodes keep the
	// blocks they own and allocate in them (Store.SetDrained).
	Drained bool `json:"drained,omitempty"`
}

// ParseSubnet parses a subnet as given on a command line: first is an IPv4
// or IPv6 CIDR; ipv6, when not empty, pairs an IPv6 CIDR with an IPv4 first.
func ParseSubnet(first, ipv6 string) (Subnet, error) {
	p, err := parseCanonical(first)
	if err != nil {
		return Subnet{}, err
	}
	var s Subnet
	if p.Addr().Is4() {
		s.IPv4 = p
	} else {
		s.IPv6 = p
	}
	if ipv6 != "" {
		if s.IPv6.IsValid() {
			return Subnet{}, fmt.Errorf("%w: %s is already IPv6; a dual-stack pair is an IPv4 subnet plus an IPv6 subnet", ErrInvalidCIDR, first)
		}
		p6, err := parseCanonical(ipv6)
		if err != nil {
			return Subnet{}, err
		}
		if !p6.Addr().Is6() {
			return Subnet{}, fmt.Errorf("%w: %s is not an IPv6 subnet", ErrInvalidCIDR, ipv6)
		}
		s.IPv6 = p6
	}
	return s, s.Validate()
}

func parseCanonical(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: %q: %v", ErrInvalidCIDR, s, err)
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("%w: %q: IPv4-mapped IPv6 subnets are not supported", ErrInvalidCIDR, s)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%w: %q: zones are not allowed", ErrInvalidCIDR, s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%w: %q is not canonical (did you mean %s?)", ErrInvalidCIDR, s, p.Masked())
	}
	return p, nil
}

// Validate checks the subnet on its own.
func (s Subnet) Validate() error {
	if s.Removed {
		if s.IPv4.IsValid() || s.IPv6.IsValid() || s.Drained {
			return fmt.Errorf("%w: a removed subnet keeps no prefix nor drain mark", ErrInvalidCIDR)
		}
		return nil
	}
	if !s.IPv4.IsValid() && !s.IPv6.IsValid() {
		return fmt.Errorf("%w: empty subnet", ErrInvalidCIDR)
	}
	if s.IPv4.IsValid() && (!s.IPv4.Addr().Is4() || s.IPv4.Masked() != s.IPv4) {
		return fmt.Errorf("%w: %s is not a canonical IPv4 subnet", ErrInvalidCIDR, s.IPv4)
	}
	if s.IPv6.IsValid() && (!s.IPv6.Addr().Is6() || s.IPv6.Addr().Is4In6() || s.IPv6.Masked() != s.IPv6) {
		return fmt.Errorf("%w: %s is not a canonical IPv6 subnet", ErrInvalidCIDR, s.IPv6)
	}
	if s.IPv4.IsValid() && s.IPv6.IsValid() && 32-s.IPv4.Bits() != 128-s.IPv6.Bits() {
		return fmt.Errorf("%w: dual-stack pair %s and %s differ in size (%d and %d host bits)",
			ErrInvalidCIDR, s.IPv4, s.IPv6, 32-s.IPv4.Bits(), 128-s.IPv6.Bits())
	}
	return nil
}

// String shows the subnet as "10.0.0.0/16", "fd00::/112" or
// "10.0.0.0/16,fd00::/112" ("removed" for the place of a removed one).
func (s Subnet) String() string {
	switch {
	case s.Removed:
		return "removed"
	case s.IPv4.IsValid() && s.IPv6.IsValid():
		return s.IPv4.String() + "," + s.IPv6.String()
	case s.IPv4.IsValid():
		return s.IPv4.String()
	default:
		return s.IPv6.String()
	}
}

// Family tells which address families the subnet serves.
func (s Subnet) Family() string {
	switch {
	case s.IPv4.IsValid() && s.IPv6.IsValid():
		return "dual"
	case s.IPv4.IsValid():
		return "ipv4"
	default:
		return "ipv6"
	}
}

// HostBits is the number of host bits of the subnet (equal in both families).
func (s Subnet) HostBits() int {
	if s.IPv4.IsValid() {
		return 32 - s.IPv4.Bits()
	}
	return 128 - s.IPv6.Bits()
}

// Overlaps reports whether any family of s overlaps the same family of o.
func (s Subnet) Overlaps(o Subnet) bool {
	if s.IPv4.IsValid() && o.IPv4.IsValid() && s.IPv4.Overlaps(o.IPv4) {
		return true
	}
	return s.IPv6.IsValid() && o.IPv6.IsValid() && s.IPv6.Overlaps(o.IPv6)
}

// NumBlocks is how many blocks of 2^blockSizeBits the subnet holds (none
// once removed).
func (s Subnet) NumBlocks(blockSizeBits int) int {
	if s.Removed {
		return 0
	}
	return 1 << (s.HostBits() - blockSizeBits)
}

// Contains reports whether prefix is one of the subnet's prefixes, which is
// how an operator names a subnet (either family of a dual-stack pair).
func (s Subnet) Contains(prefix netip.Prefix) bool {
	return !s.Removed && prefix.IsValid() && (prefix == s.IPv4 || prefix == s.IPv6)
}

// Validate checks a pool on its own (not against other pools).
func (p *Pool) Validate() error {
	if len(p.Name) > 63 || !dns1123Label.MatchString(p.Name) {
		return fmt.Errorf("%w: pool name %q must be a DNS-1123 label (lower-case letters, digits and '-', at most 63)", ErrInvalidName, p.Name)
	}
	if p.BlockSizeBits < 0 || p.BlockSizeBits > MaxBlockSizeBits {
		return fmt.Errorf("%w: block size bits %d not in 0..%d", ErrInvalidBlockSize, p.BlockSizeBits, MaxBlockSizeBits)
	}
	if p.Family() == "" {
		return fmt.Errorf("%w: pool %q has no subnet", ErrInvalidCIDR, p.Name)
	}
	for i, s := range p.Subnets {
		if s.Removed {
			if err := s.Validate(); err != nil {
				return err
			}
			continue
		}
		if err := p.validateSubnet(s); err != nil {
			return err
		}
		if s.Family() != p.Family() {
			return fmt.Errorf("%w: subnet %s is %s but pool %q is %s: all subnets of a pool serve the same families",
				ErrInvalidCIDR, s, s.Family(), p.Name, p.Family())
		}
		for _, o := range p.Subnets[:i] {
			if s.Overlaps(o) {
				return fmt.Errorf("%w: %s and %s in pool %q", ErrSubnetOverlap, s, o, p.Name)
			}
		}
	}
	return nil
}

func (p *Pool) validateSubnet(s Subnet) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if p.BlockSizeBits > s.HostBits() {
		return fmt.Errorf("%w: blocks of 2^%d addresses do not fit in %s", ErrInvalidBlockSize, p.BlockSizeBits, s)
	}
	if s.HostBits()-p.BlockSizeBits > 20 {
		return fmt.Errorf("%w: %s would hold 2^%d blocks of 2^%d addresses, more than %d",
			ErrInvalidBlockSize, s, s.HostBits()-p.BlockSizeBits, p.BlockSizeBits, MaxBlocksPerSubnet)
	}
	return nil
}

// Family tells which families the pool's pods get ("ipv4", "ipv6" or
// "dual"), by its first subnet not removed.
func (p *Pool) Family() string {
	for _, s := range p.Subnets {
		if !s.Removed {
			return s.Family()
		}
	}
	return ""
}

// FindSubnet returns the position of the subnet one of whose prefixes is
// prefix.
func (p *Pool) FindSubnet(prefix netip.Prefix) (int, bool) {
	for i, s := range p.Subnets {
		if s.Contains(prefix) {
			return i, true
		}
	}
	return 0, false
}

// SubnetDrained reports whether subnet i gives no new blocks: it or the
// whole pool is drained, or it is removed.
func (p *Pool) SubnetDrained(i int) bool {
	s := p.Subnets[i]
	return p.Drained || s.Drained || s.Removed
}

// BlockSize is the number of addresses in one block.
func (p *Pool) BlockSize() int { return 1 << p.BlockSizeBits }

// NumBlocks is the total number of blocks across all subnets.
func (p *Pool) NumBlocks() int {
	n := 0
	for _, s := range p.Subnets {
		n += s.NumBlocks(p.BlockSizeBits)
	}
	return n
}

// BlockPrefixes returns the CIDRs of block index of subnet subnet
// (invalid prefixes for a family the subnet lacks).
func (p *Pool) BlockPrefixes(subnet, index int) (v4, v6 netip.Prefix) {
	s := p.Subnets[subnet]
	off := uint64(index) << p.BlockSizeBits
	if s.IPv4.IsValid() {
		v4 = netip.PrefixFrom(addOffset(s.IPv4.Addr(), off), 32-p.BlockSizeBits)
	}
	if s.IPv6.IsValid() {
		v6 = netip.PrefixFrom(addOffset(s.IPv6.Addr(), off), 128-p.BlockSizeBits)
	}
	return v4, v6
}

// Locate maps an address to its subnet, block and offset in the pool.
func (p *Pool) Locate(ip netip.Addr) (subnet, block, offset int, ok bool) {
	ip = ip.Unmap()
	for i, s := range p.Subnets {
		var base netip.Prefix
		switch {
		case ip.Is4() && s.IPv4.IsValid():
			base = s.IPv4
		case ip.Is6() && s.IPv6.IsValid():
			base = s.IPv6
		default:
			continue
		}
		if !base.Contains(ip) {
			continue
		}
		d := diff(ip, base.Addr())
		return i, int(d >> p.BlockSizeBits), int(d & uint64(p.BlockSize()-1)), true
	}
	return 0, 0, 0, false
}

// addOffset adds n to a, assuming no carry past the low 64 bits (subnets
// have at most MaxBlockSizeBits+20 host bits).
func addOffset(a netip.Addr, n uint64) netip.Addr {
	if a.Is4() {
		b := a.As4()
		v := binary.BigEndian.Uint32(b[:]) + uint32(n)
		binary.BigEndian.PutUint32(b[:], v)
		return netip.AddrFrom4(b)
	}
	b := a.As16()
	v := binary.BigEndian.Uint64(b[8:]) + n
	binary.BigEndian.PutUint64(b[8:], v)
	return netip.AddrFrom16(b)
}

// diff returns a-b for addresses of one family within one subnet.
func diff(a, b netip.Addr) uint64 {
	if a.Is4() {
		x, y := a.As4(), b.As4()
		return uint64(binary.BigEndian.Uint32(x[:]) - binary.BigEndian.Uint32(y[:]))
	}
	x, y := a.As16(), b.As16()
	return binary.BigEndian.Uint64(x[8:]) - binary.BigEndian.Uint64(y[8:])
}
