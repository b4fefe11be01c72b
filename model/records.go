package model

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// CorruptRecord is a key under the store's prefix that a reader skipped:
// its key has the wrong shape, its value does not decode, or it
// contradicts itself (a block of no or too many addresses, an address
// whose value names another place than its key).
type CorruptRecord struct {
	// Kind is the section of the key: "blocks", "addresses", "pools",
	// "nodes", "egresses" or "unknown".
	Kind string
	// Key is the full etcd key.
	Key string
	// Err says what is wrong; it wraps ErrCorrupt.
	Err error
}

// corruptHook reports skipped records; set by OnCorrupt.
type corruptHook struct {
	mu sync.Mutex
	fn func(CorruptRecord)
}

// OnCorrupt sets fn to be called for every record a list of this store
// skips as corrupt, so that the daemon using it can log and count it.
// Lists skip such records instead of failing: one bad key must not stop
// a node from serving or the controller from sweeping.
func (s *Store) OnCorrupt(fn func(CorruptRecord)) {
	s.hook.mu.Lock()
	defer s.hook.mu.Unlock()
	s.hook.fn = fn
}

func (s *Store) reportCorrupt(kind, key string, err error) {
	s.hook.mu.Lock()
	fn := s.hook.fn
	s.hook.mu.Unlock()
	if fn != nil {
		fn(CorruptRecord{Kind: kind, Key: key, Err: err})
	}
}

func corruptf(key, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrCorrupt, key, fmt.Sprintf(format, args...))
}

// keyParts splits the part of key after the section prefix into n parts,
// each non-empty.
func keyParts(key, prefix string, n int) ([]string, error) {
	rest, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return nil, corruptf(key, "not under %s", prefix)
	}
	parts := strings.Split(rest, "/")
	if len(parts) != n {
		return nil, corruptf(key, "key has %d parts after %s, want %d", len(parts), prefix, n)
	}
	for _, p := range parts {
		if p == "" {
			return nil, corruptf(key, "key has an empty part")
		}
	}
	return parts, nil
}

// keyIndex parses a decimal index of a key: no sign, no leading zeros,
// within what a pool can have, so that it round-trips to the same key.
func keyIndex(key, s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || strconv.Itoa(n) != s || n > MaxBlocksPerSubnet<<MaxBlockSizeBits {
		return 0, corruptf(key, "%q is not an index", s)
	}
	return n, nil
}

// DecodeBlock decodes the block record at key, checking that the key has
// the shape blocks/<pool>/<subnet>/<index>, that the value names the same
// block, and that it holds 1 to 2^MaxBlockSizeBits addresses (the same
// number in both families of a dual-stack block). Errors wrap ErrCorrupt.
func (s *Store) DecodeBlock(key string, val []byte) (Block, error) {
	parts, err := keyParts(key, s.blocksPrefix(), 3)
	if err != nil {
		return Block{}, err
	}
	sub, err := keyIndex(key, parts[1])
	if err != nil {
		return Block{}, err
	}
	idx, err := keyIndex(key, parts[2])
	if err != nil {
		return Block{}, err
	}
	var b Block
	if err := decode(key, val, &b); err != nil {
		return Block{}, err
	}
	if b.Pool != parts[0] || b.Subnet != sub || b.Index != idx {
		return Block{}, corruptf(key, "value names block %s", b.ID())
	}
	if b.Node == "" {
		return Block{}, corruptf(key, "block has no node")
	}
	if !b.IPv4.IsValid() && !b.IPv6.IsValid() {
		return Block{}, corruptf(key, "block has no prefix")
	}
	bits := -1
	for _, p := range b.Prefixes() {
		if p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return Block{}, corruptf(key, "prefix %s is not canonical", p)
		}
		host := p.Addr().BitLen() - p.Bits()
		if host < 0 || host > MaxBlockSizeBits {
			return Block{}, corruptf(key, "prefix %s: blocks hold 1 to 2^%d addresses", p, MaxBlockSizeBits)
		}
		if bits >= 0 && bits != host {
			return Block{}, corruptf(key, "prefixes %s differ in size", b)
		}
		bits = host
	}
	if b.IPv4.IsValid() && !b.IPv4.Addr().Is4() || b.IPv6.IsValid() && !b.IPv6.Addr().Is6() {
		return Block{}, corruptf(key, "prefix %s of the wrong family", b)
	}
	return b, nil
}

// DecodeAddress decodes the address record at key, checking that the key
// has the shape addresses/<pool>/<subnet>/<block>/<offset> and that the
// value names the same place and holds an address. Errors wrap ErrCorrupt.
func (s *Store) DecodeAddress(key string, val []byte) (Address, error) {
	parts, err := keyParts(key, s.addressesPrefix(), 4)
	if err != nil {
		return Address{}, err
	}
	var n [3]int
	for i, p := range parts[1:] {
		if n[i], err = keyIndex(key, p); err != nil {
			return Address{}, err
		}
	}
	if n[2] >= 1<<MaxBlockSizeBits {
		return Address{}, corruptf(key, "offset %d beyond any block", n[2])
	}
	var a Address
	if err := decode(key, val, &a); err != nil {
		return Address{}, err
	}
	if a.Pool != parts[0] || a.Subnet != n[0] || a.Block != n[1] || a.Offset != n[2] {
		return Address{}, corruptf(key, "value names %s/%d/%d/%d", a.Pool, a.Subnet, a.Block, a.Offset)
	}
	if !a.IPv4.IsValid() && !a.IPv6.IsValid() {
		return Address{}, corruptf(key, "record holds no address")
	}
	return a, nil
}

// DecodePool decodes the pool record at key (pools/<name>) and validates
// it as CreatePool would. Errors wrap ErrCorrupt.
func (s *Store) DecodePool(key string, val []byte) (Pool, error) {
	parts, err := keyParts(key, s.poolsPrefix(), 1)
	if err != nil {
		return Pool{}, err
	}
	var p Pool
	if err := decode(key, val, &p); err != nil {
		return Pool{}, err
	}
	if p.Name != parts[0] {
		return Pool{}, corruptf(key, "value names pool %q", p.Name)
	}
	if err := p.Validate(); err != nil {
		return Pool{}, corruptf(key, "%v", err)
	}
	return p, nil
}

// DecodeNode decodes the node record at key (nodes/<name>). Errors wrap
// ErrCorrupt.
func (s *Store) DecodeNode(key string, val []byte) (Node, error) {
	parts, err := keyParts(key, s.nodesPrefix(), 1)
	if err != nil {
		return Node{}, err
	}
	var n Node
	if err := decode(key, val, &n); err != nil {
		return Node{}, err
	}
	if n.Name != parts[0] {
		return Node{}, corruptf(key, "value names node %q", n.Name)
	}
	return n, nil
}

// DecodeEgress decodes the egress record at key
// (egresses/<namespace>/<name>). Errors wrap ErrCorrupt.
func (s *Store) DecodeEgress(key string, val []byte) (Egress, error) {
	parts, err := keyParts(key, s.egressesPrefix(), 2)
	if err != nil {
		return Egress{}, err
	}
	var e Egress
	if err := decode(key, val, &e); err != nil {
		return Egress{}, err
	}
	if e.Namespace != parts[0] || e.Name != parts[1] {
		return Egress{}, corruptf(key, "value names egress %s/%s", e.Namespace, e.Name)
	}
	return e, nil
}
