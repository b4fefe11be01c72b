package model

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Block is a range of 2^BlockSizeBits addresses of a pool, owned by one node.
type Block struct {
	Pool       string       `json:"pool"`
	Subnet     int          `json:"subnet"`
	Index      int          `json:"index"`
	IPv4       netip.Prefix `json:"ipv4,omitzero"`
	IPv6       netip.Prefix `json:"ipv6,omitzero"`
	Node       string       `json:"node"`
	AcquiredAt time.Time    `json:"acquiredAt"`
	// Revision is the etcd revision that created the block record; writes
	// guarded by it fail once the block has been released.
	Revision int64 `json:"-"`
}

// ID names the block uniquely within the cluster ("pool/subnet/index").
func (b Block) ID() string {
	return b.Pool + "/" + strconv.Itoa(b.Subnet) + "/" + strconv.Itoa(b.Index)
}

// Prefixes returns the block's CIDRs, IPv4 first.
func (b Block) Prefixes() []netip.Prefix {
	var ps []netip.Prefix
	if b.IPv4.IsValid() {
		ps = append(ps, b.IPv4)
	}
	if b.IPv6.IsValid() {
		ps = append(ps, b.IPv6)
	}
	return ps
}

// String shows the block's CIDRs.
func (b Block) String() string {
	var parts []string
	for _, p := range b.Prefixes() {
		parts = append(parts, p.String())
	}
	return strings.Join(parts, ",")
}

// Size is the number of addresses in the block.
func (b Block) Size() int {
	if b.IPv4.IsValid() {
		return 1 << (32 - b.IPv4.Bits())
	}
	return 1 << (128 - b.IPv6.Bits())
}

// AddressAt returns the block's addresses at offset (invalid for a missing family).
func (b Block) AddressAt(offset int) (v4, v6 netip.Addr) {
	if b.IPv4.IsValid() {
		v4 = addOffset(b.IPv4.Addr(), uint64(offset))
	}
	if b.IPv6.IsValid() {
		v6 = addOffset(b.IPv6.Addr(), uint64(offset))
	}
	return v4, v6
}

// AcquireBlock takes a free block of the pool for owner.Node and allocates
// the address at offset 0 of it to owner, in one transaction. It returns
// ErrPoolNotFound or ErrPoolExhausted when it cannot. Each race lost to
// another node means another block was taken, so the pool fills up long
// before the attempts run out (ErrConflict).
func (s *Store) AcquireBlock(ctx context.Context, pool string, owner Owner) (Block, Address, error) {
	var b Block
	var a Address
	err := retryConflicts(ctx, maxConflictAttempts, func() (err error) {
		b, a, err = s.tryAcquireBlock(ctx, pool, owner)
		return err
	})
	if err != nil {
		return Block{}, Address{}, fmt.Errorf("acquire block in pool %q for node %q: %w", pool, owner.Node, err)
	}
	return b, a, nil
}

func (s *Store) tryAcquireBlock(ctx context.Context, poolName string, owner Owner) (Block, Address, error) {
	p, poolRev, err := s.GetPool(ctx, poolName)
	if err != nil {
		return Block{}, Address{}, err
	}
	resp, err := s.kv.Get(ctx, s.poolBlocksPrefix(poolName), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return Block{}, Address{}, etcdErr("list blocks", err)
	}
	taken := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		taken[string(kv.Key)] = true
	}
	subnet, index, ok := s.pickFreeBlock(&p, owner.Node, taken)
	if !ok {
		return Block{}, Address{}, fmt.Errorf("%w: all %d blocks of pool %q are owned", ErrPoolExhausted, p.NumBlocks(), poolName)
	}
	v4, v6 := p.BlockPrefixes(subnet, index)
	now := time.Now().UTC()
	b := Block{Pool: poolName, Subnet: subnet, Index: index, IPv4: v4, IPv6: v6, Node: owner.Node, AcquiredAt: now}
	a := newAddress(b, 0, owner, now)
	bkey := s.blockKey(poolName, subnet, index)
	akey := s.addressKey(poolName, subnet, index, 0)
	tx, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(s.poolKey(poolName)), "=", poolRev),
			clientv3.Compare(clientv3.CreateRevision(bkey), "=", 0),
			// Addresses of a block are deleted with it; a leftover would be a bug
			// elsewhere, and must not be silently overwritten.
			clientv3.Compare(clientv3.CreateRevision(s.blockAddressesPrefix(poolName, subnet, index)), "=", 0).WithPrefix()).
		Then(clientv3.OpPut(bkey, encode(b)), clientv3.OpPut(akey, encode(a))).
		Commit()
	if err != nil {
		return Block{}, Address{}, etcdErr("commit", err)
	}
	if !tx.Succeeded {
		return Block{}, Address{}, errConflict
	}
	b.Revision = tx.Header.Revision
	a.Revision = tx.Header.Revision
	return b, a, nil
}

// pickFreeBlock chooses a free block, starting the search at a position
// derived from the node name so that nodes acquiring at the same moment
// mostly try different blocks instead of fighting over the first free one.
func (s *Store) pickFreeBlock(p *Pool, node string, taken map[string]bool) (subnet, index int, ok bool) {
	total := p.NumBlocks()
	if len(taken) >= total {
		return 0, 0, false
	}
	h := fnv.New32a()
	h.Write([]byte(node))
	start := int(h.Sum32() % uint32(total))
	for i := 0; i < total; i++ {
		g := (start + i) % total
		sub, idx := g, 0
		for j, sn := range p.Subnets {
			n := sn.NumBlocks(p.BlockSizeBits)
			if sub < n {
				sub, idx = j, sub
				break
			}
			sub -= n
		}
		if !taken[s.blockKey(p.Name, sub, idx)] {
			return sub, idx, true
		}
	}
	return 0, 0, false
}

// ReleaseBlock returns an empty block to its pool. It fails with
// ErrBlockInUse if addresses remain; a block already gone or owned anew is
// left alone (ErrBlockLost).
func (s *Store) ReleaseBlock(ctx context.Context, b Block) error {
	bkey := s.blockKey(b.Pool, b.Subnet, b.Index)
	addrs := s.blockAddressesPrefix(b.Pool, b.Subnet, b.Index)
	resp, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(bkey), "=", b.Revision),
			clientv3.Compare(clientv3.CreateRevision(addrs), "=", 0).WithPrefix()).
		Then(clientv3.OpDelete(bkey)).
		Else(clientv3.OpGet(bkey), clientv3.OpGet(addrs, clientv3.WithPrefix(), clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return fmt.Errorf("release block %s: %w", b.ID(), etcdErr("commit", err))
	}
	if resp.Succeeded {
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 || kvs[0].CreateRevision != b.Revision {
		return fmt.Errorf("release block %s: %w", b.ID(), ErrBlockLost)
	}
	return fmt.Errorf("release block %s: %w: %d addresses", b.ID(), ErrBlockInUse, resp.Responses[1].GetResponseRange().Count)
}

// ForceReleaseBlock deletes a block and every address in it, provided it is
// still the same block (same creation revision). It is for reclaiming the
// blocks of a node that no longer exists.
func (s *Store) ForceReleaseBlock(ctx context.Context, b Block) (addresses int64, err error) {
	bkey := s.blockKey(b.Pool, b.Subnet, b.Index)
	resp, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(bkey), "=", b.Revision)).
		Then(clientv3.OpDelete(bkey), clientv3.OpDelete(s.blockAddressesPrefix(b.Pool, b.Subnet, b.Index), clientv3.WithPrefix())).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("force release block %s: %w", b.ID(), etcdErr("commit", err))
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("force release block %s: %w", b.ID(), ErrBlockLost)
	}
	return resp.Responses[1].GetResponseDeleteRange().Deleted, nil
}

// ListBlocks returns the blocks of a pool, or of every pool when pool is "".
func (s *Store) ListBlocks(ctx context.Context, pool string) ([]Block, error) {
	prefix := s.blocksPrefix()
	if pool != "" {
		prefix = s.poolBlocksPrefix(pool)
	}
	resp, err := s.kv.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list blocks: %w", etcdErr("get", err))
	}
	blocks := make([]Block, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		b, err := s.DecodeBlock(string(kv.Key), kv.Value)
		if err != nil {
			// Skipped, not fatal: a node must not stop serving over one
			// bad key. The key stays taken, so no node acquires it.
			s.reportCorrupt("blocks", string(kv.Key), err)
			continue
		}
		b.Revision = kv.CreateRevision
		blocks = append(blocks, b)
	}
	return blocks, nil
}

// NodeBlocks returns the blocks owned by node. It scans every block: it is
// for start-up and inspection, never for the allocation path.
func (s *Store) NodeBlocks(ctx context.Context, node string) ([]Block, error) {
	all, err := s.ListBlocks(ctx, "")
	if err != nil {
		return nil, err
	}
	var mine []Block
	for _, b := range all {
		if b.Node == node {
			mine = append(mine, b)
		}
	}
	return mine, nil
}
