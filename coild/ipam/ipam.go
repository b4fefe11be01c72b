// Package ipam is coild's address allocator for the node it runs on. It
// hands out addresses of the node's blocks by attachment (api.Attachment)
// and commits them through a Store: model.Store in coild, a fake in tests.
//
// coild is the only writer of addresses in its node's blocks, so the
// allocator keeps them in memory (a bitmap per block, an index by
// attachment) and touches etcd only to commit: one transaction per address
// in a block the node owns, one per new block. Its memory is rebuilt from
// etcd by Restore before anything is served.
package ipam

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/model"
)

// Store is the part of model.Store the allocator uses. Its errors are the
// model's: ErrBlockLost and ErrAddressInUse when another writer won a race,
// ErrPoolExhausted, ErrPoolNotFound, ErrNotOwner, and ErrUnavailable when
// etcd did not answer (a commit may then have happened or not).
type Store interface {
	NodeBlocks(ctx context.Context, node string) ([]model.Block, error)
	BlockAddresses(ctx context.Context, b model.Block) ([]model.Address, error)
	AcquireBlock(ctx context.Context, pool string, owner model.Owner) (model.Block, model.Address, error)
	AllocateAddress(ctx context.Context, b model.Block, offset int, owner model.Owner) (model.Address, error)
	ReleaseAddress(ctx context.Context, a model.Address) error
	ReleaseBlock(ctx context.Context, b model.Block) error
	// Revision is etcd's current revision: changes after it are not yet
	// seen by reads made after this call.
	Revision(ctx context.Context) (int64, error)
}

// Observer learns when the node gains or loses a block, so the block's route
// can be exported or withdrawn. Calls are made without the allocator's lock.
type Observer interface {
	BlockAcquired(b model.Block)
	BlockReleased(b model.Block)
}

// Allocator hands out addresses of the node's blocks.
type Allocator struct {
	store    Store
	node     string
	observer Observer
	now      func() time.Time

	// mu guards the fields below. It is never held across an etcd call or
	// an observer call, so slow etcd requests do not serialize allocations.
	mu        sync.Mutex
	blocks    map[string]*block   // by Block.ID()
	pools     map[string][]*block // in acquisition order
	owners    map[api.Attachment]model.Address
	inflight  map[api.Attachment]chan struct{}
	acquiring map[string]*flight // single-flight block acquisition per pool
	restored  bool
	// restoredRev is the etcd revision Restore started reading at: every
	// change after it is to be applied by following the node's keys.
	restoredRev int64
}

// flight is one block acquisition in progress; err is set before done closes.
type flight struct {
	done chan struct{}
	err  error
}

type block struct {
	model.Block
	used       bitmap
	count      int
	next       int // rotation cursor: freed addresses are reused last
	emptySince time.Time
	retiring   bool
}

// New returns an allocator for node. observer may be nil.
func New(store Store, node string, observer Observer) *Allocator {
	return &Allocator{
		store:     store,
		node:      node,
		observer:  observer,
		now:       time.Now,
		blocks:    map[string]*block{},
		pools:     map[string][]*block{},
		owners:    map[api.Attachment]model.Address{},
		inflight:  map[api.Attachment]chan struct{}{},
		acquiring: map[string]*flight{},
	}
}

// ErrNotRestored is returned by every call made before Restore succeeded:
// serving from an empty memory would hand out addresses already in use.
// coild answers it as unavailable.
var ErrNotRestored = api.WithReason(errors.New("allocator state not restored from etcd yet"), api.ReasonUnavailable)

// Restore loads the node's blocks and addresses from etcd. It must succeed
// before the allocator serves requests.
func (a *Allocator) Restore(ctx context.Context) error {
	// Taken before the reads, so that a watch from rev+1 replays whatever
	// changed while they ran (applying a deletion twice is harmless).
	rev, err := a.store.Revision(ctx)
	if err != nil {
		return fmt.Errorf("restore node %q: %w", a.node, err)
	}
	blocks, err := a.store.NodeBlocks(ctx, a.node)
	if err != nil {
		return fmt.Errorf("restore blocks of node %q: %w", a.node, err)
	}
	loaded := make([]*block, 0, len(blocks))
	owners := map[api.Attachment]model.Address{}
	for _, mb := range blocks {
		addrs, err := a.store.BlockAddresses(ctx, mb)
		if err != nil {
			return fmt.Errorf("restore addresses of block %s: %w", mb.ID(), err)
		}
		b := &block{Block: mb, used: newBitmap(mb.Size())}
		last := -1
		for _, ad := range addrs {
			if ad.Offset < 0 || ad.Offset >= mb.Size() {
				continue
			}
			b.used.set(ad.Offset)
			b.count++
			owners[api.Attachment{ContainerID: ad.ContainerID, Interface: ad.Interface}] = ad
			last = max(last, ad.Offset)
		}
		b.next = (last + 1) % mb.Size()
		if b.count == 0 {
			b.emptySince = a.now()
		}
		loaded = append(loaded, b)
	}
	sort.Slice(loaded, func(i, j int) bool { return loaded[i].Revision < loaded[j].Revision })

	a.mu.Lock()
	a.blocks = map[string]*block{}
	a.pools = map[string][]*block{}
	for _, b := range loaded {
		a.blocks[b.ID()] = b
		a.pools[b.Pool] = append(a.pools[b.Pool], b)
	}
	a.owners = owners
	a.restored = true
	a.restoredRev = rev
	a.mu.Unlock()
	return nil
}

// RestoredRevision is the etcd revision the last Restore read from; zero
// before Restore succeeded.
func (a *Allocator) RestoredRevision() int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.restoredRev
}

// Ready reports whether Restore has succeeded.
func (a *Allocator) Ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.restored
}

// maxAttempts bounds retries after losing a race (a block reclaimed under
// us, an address record we did not know of).
const maxAttempts = 32

// Allocate returns the address of the attachment owner.ContainerID +
// owner.Interface, allocating one from pool if it has none. Asking again
// for the same attachment returns the same address.
func (a *Allocator) Allocate(ctx context.Context, pool string, owner model.Owner) (model.Address, error) {
	owner.Node = a.node
	key := api.Attachment{ContainerID: owner.ContainerID, Interface: owner.Interface}
	for {
		a.mu.Lock()
		if !a.restored {
			a.mu.Unlock()
			return model.Address{}, ErrNotRestored
		}
		if addr, ok := a.owners[key]; ok {
			a.mu.Unlock()
			return addr, nil
		}
		if wait, ok := a.inflight[key]; ok {
			// A retried request for the same container: let the first finish.
			a.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return model.Address{}, ctx.Err()
			}
		}
		done := make(chan struct{})
		a.inflight[key] = done
		a.mu.Unlock()

		addr, err := a.allocate(ctx, pool, owner)

		a.mu.Lock()
		delete(a.inflight, key)
		if err == nil {
			a.owners[key] = addr
		}
		close(done)
		a.mu.Unlock()
		return addr, err
	}
}

func (a *Allocator) allocate(ctx context.Context, pool string, owner model.Owner) (model.Address, error) {
	// flightErr is the outcome of another request's block acquisition we
	// waited for: if it found the pool exhausted, so are we.
	var flightErr error
	for attempt := 0; attempt < maxAttempts; {
		a.mu.Lock()
		b, off, ok := a.reserveLocked(pool)
		if ok {
			a.mu.Unlock()
			addr, err := a.store.AllocateAddress(ctx, b.Block, off, owner)
			if err == nil {
				return addr, nil
			}
			a.mu.Lock()
			attempt++
			switch {
			case errors.Is(err, model.ErrAddressInUse):
				// A record we did not know of holds it: leave it marked used.
				a.mu.Unlock()
				continue
			case errors.Is(err, model.ErrBlockLost):
				a.dropLocked(b)
				a.mu.Unlock()
				if a.observer != nil {
					a.observer.BlockReleased(b.Block)
				}
				continue
			default:
				a.unreserveLocked(b, off)
				a.mu.Unlock()
				return model.Address{}, fmt.Errorf("allocate in pool %q: %w", pool, err)
			}
		}
		if f, busy := a.acquiring[pool]; busy {
			// Another request is already getting a block for this pool;
			// a second block now would be wasted.
			a.mu.Unlock()
			select {
			case <-f.done:
				flightErr = f.err
				continue
			case <-ctx.Done():
				return model.Address{}, ctx.Err()
			}
		}
		if errors.Is(flightErr, model.ErrPoolExhausted) {
			a.mu.Unlock()
			return model.Address{}, flightErr
		}
		f := &flight{done: make(chan struct{})}
		a.acquiring[pool] = f
		a.mu.Unlock()

		mb, addr, err := a.store.AcquireBlock(ctx, pool, owner)

		a.mu.Lock()
		delete(a.acquiring, pool)
		f.err = err
		if err == nil {
			nb := &block{Block: mb, used: newBitmap(mb.Size()), count: 1, next: 1 % mb.Size()}
			nb.used.set(addr.Offset)
			a.blocks[mb.ID()] = nb
			a.pools[pool] = append(a.pools[pool], nb)
		}
		close(f.done)
		a.mu.Unlock()
		if err != nil {
			return model.Address{}, err
		}
		if a.observer != nil {
			a.observer.BlockAcquired(mb)
		}
		return addr, nil
	}
	return model.Address{}, fmt.Errorf("allocate in pool %q: gave up after %d conflicting attempts: %w", pool, maxAttempts, model.ErrUnavailable)
}

// reserveLocked marks a free offset used in the first block of pool that
// has one, so concurrent requests never try the same address.
func (a *Allocator) reserveLocked(pool string) (*block, int, bool) {
	for _, b := range a.pools[pool] {
		if b.retiring || b.count >= b.Size() {
			continue
		}
		off := b.used.nextFree(b.next, b.Size())
		if off < 0 {
			continue
		}
		b.used.set(off)
		b.count++
		b.next = (off + 1) % b.Size()
		b.emptySince = time.Time{}
		return b, off, true
	}
	return nil, 0, false
}

func (a *Allocator) unreserveLocked(b *block, off int) {
	if !b.used.isSet(off) {
		return
	}
	b.used.clear(off)
	b.count--
	if b.count == 0 {
		b.emptySince = a.now()
	}
}

func (a *Allocator) dropLocked(b *block) {
	delete(a.blocks, b.ID())
	list := a.pools[b.Pool]
	for i, x := range list {
		if x == b {
			a.pools[b.Pool] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(a.pools[b.Pool]) == 0 {
		delete(a.pools, b.Pool)
	}
	for k, ad := range a.owners {
		if ad.Pool == b.Pool && ad.Subnet == b.Subnet && ad.Block == b.Index {
			delete(a.owners, k)
		}
	}
}

// Lookup returns the address of an attachment.
func (a *Allocator) Lookup(att api.Attachment) (model.Address, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	addr, ok := a.owners[att]
	return addr, ok
}

// Release frees the address of an attachment. Releasing an attachment that
// holds nothing succeeds. The etcd delete is guarded by the record's
// revision, so a late release never frees an address re-allocated since.
func (a *Allocator) Release(ctx context.Context, att api.Attachment) (model.Address, bool, error) {
	a.mu.Lock()
	if !a.restored {
		a.mu.Unlock()
		return model.Address{}, false, ErrNotRestored
	}
	addr, ok := a.owners[att]
	a.mu.Unlock()
	if !ok {
		return model.Address{}, false, nil
	}
	err := a.store.ReleaseAddress(ctx, addr)
	notOwner := errors.Is(err, model.ErrNotOwner)
	if err != nil && !notOwner {
		return model.Address{}, false, fmt.Errorf("release address of container %s: %w", att.ContainerID, err)
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	// Only the call that forgets the record frees its offset: a release
	// seen in etcd (ForgetAddress) or a concurrent Release may have done
	// it already, and the offset may be someone else's by now.
	cur, ok := a.owners[att]
	if !ok || cur.Revision != addr.Revision {
		return addr, true, nil
	}
	delete(a.owners, att)
	if b, ok := a.blocks[model.Block{Pool: addr.Pool, Subnet: addr.Subnet, Index: addr.Block}.ID()]; ok && !notOwner {
		a.unreserveLocked(b, addr.Offset)
	}
	return addr, true, nil
}

// Attachments lists every attachment holding an address.
func (a *Allocator) Attachments() map[api.Attachment]model.Address {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := make(map[api.Attachment]model.Address, len(a.owners))
	for k, v := range a.owners {
		m[k] = v
	}
	return m
}

// Blocks returns the node's blocks by pool.
func (a *Allocator) Blocks() map[string][]model.Block {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := map[string][]model.Block{}
	for pool, list := range a.pools {
		for _, b := range list {
			m[pool] = append(m[pool], b.Block)
		}
	}
	return m
}

// Usage is the number of blocks owned and addresses in use.
func (a *Allocator) Usage() (blocks, addresses int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, b := range a.blocks {
		addresses += b.count
	}
	return len(a.blocks), addresses
}

// ReleaseEmptyBlocks returns to their pools the blocks that have been
// empty for at least grace. It reports the blocks released.
func (a *Allocator) ReleaseEmptyBlocks(ctx context.Context, grace time.Duration) ([]model.Block, error) {
	a.mu.Lock()
	now := a.now()
	var candidates []*block
	for _, b := range a.blocks {
		if b.count == 0 && !b.retiring && !b.emptySince.IsZero() && now.Sub(b.emptySince) >= grace {
			// Retiring blocks take no new allocations while etcd decides.
			b.retiring = true
			candidates = append(candidates, b)
		}
	}
	a.mu.Unlock()

	var released []model.Block
	var errs []error
	for _, b := range candidates {
		err := a.store.ReleaseBlock(ctx, b.Block)
		a.mu.Lock()
		b.retiring = false
		gone := err == nil || errors.Is(err, model.ErrBlockLost)
		if gone {
			a.dropLocked(b)
		}
		a.mu.Unlock()
		if gone {
			released = append(released, b.Block)
			if a.observer != nil {
				a.observer.BlockReleased(b.Block)
			}
			continue
		}
		errs = append(errs, err)
	}
	return released, errors.Join(errs...)
}
