package model

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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
//
// When etcd's answer is lost and cannot be learnt, the error wraps
// ErrOutcomeUnknown and the block and address returned are those the
// transaction tried to create: the node may own them, and ClaimBlock
// settles it.
func (s *Store) AcquireBlock(ctx context.Context, pool string, owner Owner) (Block, Address, error) {
	if err := validNodeName(owner.Node); err != nil {
		return Block{}, Address{}, fmt.Errorf("acquire block in pool %q: %w", pool, err)
	}
	var b Block
	var a Address
	err := retryConflicts(ctx, maxConflictAttempts, func() (err error) {
		b, a, err = s.tryAcquireBlock(ctx, pool, owner)
		return err
	})
	if err != nil {
		err = fmt.Errorf("acquire block in pool %q for node %q: %w", pool, owner.Node, err)
		if errors.Is(err, ErrOutcomeUnknown) {
			return b, a, err
		}
		return Block{}, Address{}, err
	}
	return b, a, nil
}

func (s *Store) tryAcquireBlock(ctx context.Context, poolName string, owner Owner) (Block, Address, error) {
	p, poolRev, err := s.GetPool(ctx, poolName)
	if err != nil {
		return Block{}, Address{}, err
	}
	subnet, index, ok, err := s.findFreeBlock(ctx, &p, owner.Node)
	if err != nil {
		return Block{}, Address{}, err
	}
	if !ok {
		return Block{}, Address{}, exhausted(&p)
	}
	v4, v6 := p.BlockPrefixes(subnet, index)
	now := time.Now().UTC()
	b := Block{Pool: poolName, Subnet: subnet, Index: index, IPv4: v4, IPv6: v6, Node: owner.Node, AcquiredAt: now}
	a := newAddress(b, 0, owner, now)
	b, a, err = s.createBlock(ctx, poolRev, b, a)
	if errors.Is(err, errBlockTaken) {
		return Block{}, Address{}, errConflict
	}
	return b, a, err
}

// defaultBlockProbes are the sizes of the reads findFreeBlock makes before
// it lists the whole pool: each is one read-only transaction of count-only
// gets, within etcd's default --max-txn-ops (128).
var defaultBlockProbes = []int{16, 64}

// findFreeBlock finds the block pickFreeBlock would choose from a listing
// of every block of the pool, reading only as many block keys as it takes
// to meet a free one in pickFreeBlock's order: a node taking a block then
// reads a few keys, however many blocks the cluster holds. Only when the
// first candidates (defaultBlockProbes) are all taken, in a pool nearly full
// around the node's starting point, does it list the pool's block keys.
func (s *Store) findFreeBlock(ctx context.Context, p *Pool, node string) (subnet, index int, ok bool, err error) {
	next := s.blockCandidates(p, node)
	for _, n := range s.blockProbes {
		var cands [][2]int
		for len(cands) < n {
			sub, idx, more := next()
			if !more {
				break
			}
			cands = append(cands, [2]int{sub, idx})
		}
		if len(cands) == 0 {
			// Every candidate read, none free.
			return 0, 0, false, nil
		}
		ops := make([]clientv3.Op, len(cands))
		for i, c := range cands {
			ops[i] = clientv3.OpGet(s.blockKey(p.Name, c[0], c[1]), clientv3.WithCountOnly())
		}
		resp, err := s.kv.Txn(ctx).Then(ops...).Commit()
		if errors.Is(err, rpctypes.ErrTooManyOps) {
			// An etcd set to allow fewer: the listing answers too.
			break
		}
		if err != nil {
			return 0, 0, false, etcdErr("read candidate blocks", err)
		}
		for i, r := range resp.Responses {
			if r.GetResponseRange().Count == 0 {
				return cands[i][0], cands[i][1], true, nil
			}
		}
	}
	resp, err := s.kv.Get(ctx, s.poolBlocksPrefix(p.Name), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, 0, false, etcdErr("list blocks", err)
	}
	taken := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		taken[string(kv.Key)] = true
	}
	subnet, index, ok = s.pickFreeBlock(p, node, taken)
	return subnet, index, ok, nil
}

// errBlockTaken: createBlock found the block owned by another record.
var errBlockTaken = errors.New("block taken")

// createBlock records block b and its first address a, provided the pool
// is unchanged since poolRev and the block is free. It returns errConflict
// when the pool changed or addresses linger under the block, errBlockTaken
// when another record holds the block, and b and a with their revision
// when the node holds them, whether this call or an earlier one whose
// answer was lost wrote them (the block record is then the very one built
// by that call: same value).
func (s *Store) createBlock(ctx context.Context, poolRev int64, b Block, a Address) (Block, Address, error) {
	bkey := s.blockKey(b.Pool, b.Subnet, b.Index)
	akey := s.addressKey(b.Pool, b.Subnet, b.Index, a.Offset)
	bval := encode(b)
	tx, _, err := s.commit(ctx, func(ctx context.Context) clientv3.Txn {
		return s.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(s.poolKey(b.Pool)), "=", poolRev),
				clientv3.Compare(clientv3.CreateRevision(bkey), "=", 0),
				// Addresses of a block are deleted with it; a leftover would be a bug
				// elsewhere, and must not be silently overwritten.
				clientv3.Compare(clientv3.CreateRevision(s.blockAddressesPrefix(b.Pool, b.Subnet, b.Index)), "=", 0).WithPrefix()).
			Then(clientv3.OpPut(bkey, bval), clientv3.OpPut(akey, encode(a)),
				// The node's index entry, created with the block: its
				// creation revision is the block's.
				clientv3.OpPut(s.nodeBlockKey(b.Node, b.Pool, b.Subnet, b.Index), "{}")).
			Else(clientv3.OpGet(bkey))
	})
	if err != nil {
		return b, a, err
	}
	if tx.Succeeded {
		b.Revision = tx.Header.Revision
		a.Revision = tx.Header.Revision
		return b, a, nil
	}
	kvs := tx.Responses[0].GetResponseRange().Kvs
	switch {
	case len(kvs) == 0:
		return Block{}, Address{}, errConflict
	case string(kvs[0].Value) == bval:
		// AcquiredAt has nanoseconds: no other acquisition writes this value.
		b.Revision = kvs[0].CreateRevision
		a.Revision = kvs[0].CreateRevision
		return b, a, nil
	}
	return Block{}, Address{}, errBlockTaken
}

// ClaimBlock settles an acquisition whose outcome AcquireBlock could not
// learn (ErrOutcomeUnknown), given the block and address it returned: it
// completes the acquisition if the block is still free, so that a delayed
// copy of the lost request can no longer take effect later, and returns
// them with their revision when the node holds them. It fails with
// ErrBlockLost when another record holds the block or the pool no longer
// defines it, and with ErrOutcomeUnknown when etcd still does not answer.
func (s *Store) ClaimBlock(ctx context.Context, b Block, a Address) (Block, Address, error) {
	err := retryConflicts(ctx, maxConflictAttempts, func() error {
		p, poolRev, err := s.GetPool(ctx, b.Pool)
		if errors.Is(err, ErrPoolNotFound) {
			return ErrBlockLost
		}
		if err != nil {
			return err
		}
		if b.Subnet < 0 || b.Subnet >= len(p.Subnets) || b.Index < 0 || b.Index >= p.Subnets[b.Subnet].NumBlocks(p.BlockSizeBits) {
			return ErrBlockLost
		}
		if v4, v6 := p.BlockPrefixes(b.Subnet, b.Index); v4 != b.IPv4 || v6 != b.IPv6 {
			return ErrBlockLost
		}
		if p.SubnetDrained(b.Subnet) {
			return s.settleDrained(ctx, &b, &a)
		}
		nb, na, err := s.createBlock(ctx, poolRev, b, a)
		if errors.Is(err, errBlockTaken) {
			return ErrBlockLost
		}
		if err == nil {
			b, a = nb, na
		}
		return err
	})
	if err != nil {
		return Block{}, Address{}, fmt.Errorf("claim block %s for node %q: %w", b.ID(), b.Node, err)
	}
	return b, a, nil
}

// exhausted explains why pickFreeBlock found no block: every block owned,
// or every free one in a drained subnet.
func exhausted(p *Pool) error {
	if p.Drained {
		return fmt.Errorf("%w: pool %q is %w", ErrPoolExhausted, p.Name, ErrDrained)
	}
	var drained []string
	for _, sn := range p.Subnets {
		if sn.Drained {
			drained = append(drained, sn.String())
		}
	}
	if len(drained) > 0 {
		return fmt.Errorf("%w: no free block in the subnets of pool %q that are not drained (%w: %s)",
			ErrPoolExhausted, p.Name, ErrDrained, strings.Join(drained, " "))
	}
	return fmt.Errorf("%w: all %d blocks of pool %q are owned", ErrPoolExhausted, p.NumBlocks(), p.Name)
}

// settleDrained settles a lost acquisition in a subnet drained since: the
// drain rewrote the pool, so a delayed copy of the request, which compares
// the pool's old revision, can no longer commit, and the block must not be
// taken now. The node holds it only if the lost request committed first.
func (s *Store) settleDrained(ctx context.Context, b *Block, a *Address) error {
	resp, err := s.kv.Get(ctx, s.blockKey(b.Pool, b.Subnet, b.Index))
	if err != nil {
		return etcdErr("get block", err)
	}
	if len(resp.Kvs) == 0 || string(resp.Kvs[0].Value) != encode(*b) {
		return ErrBlockLost
	}
	b.Revision = resp.Kvs[0].CreateRevision
	a.Revision = resp.Kvs[0].CreateRevision
	return nil
}

// pickFreeBlock chooses the first block in blockCandidates' order that
// taken (a set of block keys) does not hold.
func (s *Store) pickFreeBlock(p *Pool, node string, taken map[string]bool) (subnet, index int, ok bool) {
	if len(taken) >= p.NumBlocks() {
		return 0, 0, false
	}
	next := s.blockCandidates(p, node)
	for {
		sub, idx, more := next()
		if !more {
			return 0, 0, false
		}
		if !taken[s.blockKey(p.Name, sub, idx)] {
			return sub, idx, true
		}
	}
}

// blockCandidates returns an iterator over the blocks of the subnets of p
// that are not drained, each once, starting at a position derived from the
// node name so that nodes acquiring at the same moment mostly try
// different blocks instead of fighting over the first free one.
func (s *Store) blockCandidates(p *Pool, node string) func() (subnet, index int, ok bool) {
	total := p.NumBlocks()
	if p.Drained || total == 0 {
		return func() (int, int, bool) { return 0, 0, false }
	}
	h := fnv.New32a()
	h.Write([]byte(node))
	start := int(h.Sum32() % uint32(total))
	i := 0
	return func() (int, int, bool) {
		for ; i < total; i++ {
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
			if !p.SubnetDrained(sub) {
				i++
				return sub, idx, true
			}
		}
		return 0, 0, false
	}
}

// ReleaseBlock returns an empty block to its pool. It fails with
// ErrBlockInUse if addresses remain; a block already gone or owned anew is
// left alone (ErrBlockLost).
func (s *Store) ReleaseBlock(ctx context.Context, b Block) error {
	bkey := s.blockKey(b.Pool, b.Subnet, b.Index)
	addrs := s.blockAddressesPrefix(b.Pool, b.Subnet, b.Index)
	resp, reissued, err := s.commit(ctx, func(ctx context.Context) clientv3.Txn {
		return s.kv.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(bkey), "=", b.Revision),
				clientv3.Compare(clientv3.CreateRevision(addrs), "=", 0).WithPrefix()).
			Then(append([]clientv3.Op{clientv3.OpDelete(bkey)}, s.indexDeleteOps(b)...)...).
			Else(clientv3.OpGet(bkey), clientv3.OpGet(addrs, clientv3.WithPrefix(), clientv3.WithCountOnly()))
	})
	if err != nil {
		return fmt.Errorf("release block %s: %w", b.ID(), err)
	}
	if resp.Succeeded {
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 && reissued {
		// Asked again after a lost answer: the block is gone, most likely
		// by the first request. Either way the node no longer owns it.
		return nil
	}
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
		Then(append(append([]clientv3.Op{clientv3.OpDelete(bkey),
			clientv3.OpDelete(s.blockAddressesPrefix(b.Pool, b.Subnet, b.Index), clientv3.WithPrefix())},
			s.noteOps(b.ID())...), s.indexDeleteOps(b)...)...).
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
