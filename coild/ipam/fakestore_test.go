package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/coil-project/coil/coild/ipam"
	"github.com/coil-project/coil/model"
)

// fakeStore is an in-memory ipam.Store with the conflict rules of
// model.Store, for one pool "default" of 10.0.0.0/24 cut in blocks of
// 2^bits addresses. Tests change it behind the allocator's back and make
// its calls fail, to play the races etcd decides.
type fakeStore struct {
	mu     sync.Mutex
	bits   int
	rev    int64
	blocks map[int]model.Block      // by index
	addrs  map[string]model.Address // by block index and offset

	// allocateFails, if set, is asked before each AllocateAddress: a
	// non-nil error is returned instead of the outcome, after the address
	// is recorded anyway when commit is set (an ambiguous commit: the
	// error should then wrap model.ErrOutcomeUnknown, as model.Store's
	// does once asking etcd again did not tell).
	allocateFails func(b model.Block, offset int) (commit bool, err error)
	// acquireFails, if set, is asked before each AcquireBlock, and
	// claimFails before each ClaimBlock, likewise. An AcquireBlock failing
	// with model.ErrOutcomeUnknown returns the block it tried.
	acquireFails func() (commit bool, err error)
	claimFails   func() (commit bool, err error)
}

var _ ipam.Store = (*fakeStore)(nil)

var fakePool = netip.MustParsePrefix("10.0.0.0/24")

func newFakeStore(bits int) *fakeStore {
	return &fakeStore{bits: bits, blocks: map[int]model.Block{}, addrs: map[string]model.Address{}}
}

func addrKey(index, offset int) string { return fmt.Sprintf("%d/%d", index, offset) }

// blockAt returns block index of the pool, owned by node.
func (f *fakeStore) blockAt(index int, node string) model.Block {
	base := fakePool.Addr().As4()
	n := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	n += uint32(index) << f.bits
	start := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	f.rev++
	return model.Block{
		Pool: "default", Index: index, IPv4: netip.PrefixFrom(start, 32-f.bits),
		Node: node, AcquiredAt: time.Now(), Revision: f.rev,
	}
}

func (f *fakeStore) numBlocks() int { return 1 << (32 - fakePool.Bits() - f.bits) }

// record stores the address at offset of b for owner, as a commit does.
func (f *fakeStore) record(b model.Block, offset int, owner model.Owner) model.Address {
	v4, v6 := b.AddressAt(offset)
	owner.Node = b.Node
	f.rev++
	a := model.Address{
		Pool: b.Pool, Subnet: b.Subnet, Block: b.Index, Offset: offset,
		IPv4: v4, IPv6: v6, Owner: owner, CreatedAt: time.Now(), Revision: f.rev,
	}
	f.addrs[addrKey(b.Index, offset)] = a
	return a
}

// reclaim hands block index to node, as coil-controller does with the
// blocks of a node it thinks dead (or as another node's acquisition
// does with a free block). The addresses of the block go with it.
func (f *fakeStore) reclaim(index int, node string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for off := range 1 << f.bits {
		delete(f.addrs, addrKey(index, off))
	}
	f.blocks[index] = f.blockAt(index, node)
}

// take records the address at offset of the node's block index for a
// container the allocator does not know of.
func (f *fakeStore) take(index, offset int, containerID string) model.Address {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.record(f.blocks[index], offset, model.Owner{Namespace: "other", Pod: containerID, ContainerID: containerID, Interface: "eth0"})
}

// holders returns the container ids holding each address.
func (f *fakeStore) holders() map[netip.Addr]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[netip.Addr]string{}
	for _, a := range f.addrs {
		m[a.IPv4] = a.ContainerID
	}
	return m
}

func (f *fakeStore) NodeBlocks(_ context.Context, node string) ([]model.Block, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []model.Block
	for i := range f.numBlocks() {
		if b, ok := f.blocks[i]; ok && b.Node == node {
			out = append(out, b)
		}
	}
	return out, nil
}

func (f *fakeStore) OwnBlocks(ctx context.Context, node string) ([]model.Block, error) {
	return f.NodeBlocks(ctx, node)
}

func (f *fakeStore) BlockAddresses(_ context.Context, b model.Block) ([]model.Address, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []model.Address
	for off := range b.Size() {
		if a, ok := f.addrs[addrKey(b.Index, off)]; ok {
			out = append(out, a)
		}
	}
	return out, nil
}

func (f *fakeStore) AcquireBlock(_ context.Context, pool string, owner model.Owner) (model.Block, model.Address, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var commit bool
	var fail error
	if f.acquireFails != nil {
		if commit, fail = f.acquireFails(); fail != nil && !commit && !errors.Is(fail, model.ErrOutcomeUnknown) {
			return model.Block{}, model.Address{}, fail
		}
	}
	if pool != "default" {
		return model.Block{}, model.Address{}, fmt.Errorf("acquire block in pool %q: %w", pool, model.ErrPoolNotFound)
	}
	for i := range f.numBlocks() {
		if _, taken := f.blocks[i]; !taken {
			b := f.blockAt(i, owner.Node)
			if fail == nil || commit {
				f.blocks[i] = b
				a := f.record(b, 0, owner)
				if fail == nil {
					return b, a, nil
				}
			}
			v4, v6 := b.AddressAt(0)
			owner.Node = b.Node
			return b, model.Address{Pool: b.Pool, Block: b.Index, IPv4: v4, IPv6: v6, Owner: owner}, fail
		}
	}
	return model.Block{}, model.Address{}, fmt.Errorf("acquire block in pool %q: %w", pool, model.ErrPoolExhausted)
}

func (f *fakeStore) AllocateAddress(_ context.Context, b model.Block, offset int, owner model.Owner) (model.Address, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.allocateFails != nil {
		if commit, err := f.allocateFails(b, offset); err != nil {
			if commit {
				f.record(b, offset, owner)
			}
			return model.Address{}, err
		}
	}
	if cur, ok := f.blocks[b.Index]; !ok || cur.Revision != b.Revision {
		return model.Address{}, fmt.Errorf("allocate in block %s: %w", b.ID(), model.ErrBlockLost)
	}
	if cur, ok := f.addrs[addrKey(b.Index, offset)]; ok {
		if cur.Node == b.Node && cur.ContainerID == owner.ContainerID && cur.Interface == owner.Interface {
			// What an earlier call whose answer was lost committed.
			return cur, nil
		}
		return model.Address{}, fmt.Errorf("allocate offset %d of block %s: %w", offset, b.ID(), model.ErrAddressInUse)
	}
	return f.record(b, offset, owner), nil
}

// ClaimBlock completes the acquisition of b if the block is free, and
// returns it when the node holds the very record (same revision as when
// tried, or the acquisition happened now).
func (f *fakeStore) ClaimBlock(_ context.Context, b model.Block, a model.Address) (model.Block, model.Address, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.claimFails != nil {
		if _, err := f.claimFails(); err != nil {
			return model.Block{}, model.Address{}, err
		}
	}
	cur, ok := f.blocks[b.Index]
	switch {
	case !ok:
		f.rev++
		b.Revision = f.rev
		f.blocks[b.Index] = b
		return b, f.record(b, a.Offset, a.Owner), nil
	case cur.Revision == b.Revision && cur.Node == b.Node:
		return cur, f.addrs[addrKey(b.Index, a.Offset)], nil
	}
	return model.Block{}, model.Address{}, fmt.Errorf("claim block %s: %w", b.ID(), model.ErrBlockLost)
}

func (f *fakeStore) ReleaseOwnAddress(_ context.Context, a model.Address) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	cur, ok := f.addrs[addrKey(a.Block, a.Offset)]
	switch {
	case !ok:
		return nil
	case cur.Revision != a.Revision:
		return fmt.Errorf("release %s: %w", a.IPv4, model.ErrNotOwner)
	}
	delete(f.addrs, addrKey(a.Block, a.Offset))
	return nil
}

func (f *fakeStore) ReleaseBlock(_ context.Context, b model.Block) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cur, ok := f.blocks[b.Index]; !ok || cur.Revision != b.Revision {
		return fmt.Errorf("release block %s: %w", b.ID(), model.ErrBlockLost)
	}
	for off := range b.Size() {
		if _, ok := f.addrs[addrKey(b.Index, off)]; ok {
			return fmt.Errorf("release block %s: %w", b.ID(), model.ErrBlockInUse)
		}
	}
	delete(f.blocks, b.Index)
	return nil
}

func (f *fakeStore) Revision(context.Context) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev, nil
}
