// Package ipam is coild's address allocator. coild is the only writer of
// addresses in its node's blocks, so the allocator decides in memory and
// goes to etcd only to commit; see "Allocation" in docs/coild.md.
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

// Store is the part of model.Store the allocator uses: model.Store in coild,
// a fake in unit tests, which is why it is an interface. Its errors are the
// model's: ErrBlockLost and ErrAddressInUse when another writer won a race,
// ErrPoolExhausted, ErrPoolNotFound, ErrNotOwner, and ErrUnavailable when
// etcd did not answer. A commit whose outcome could not be learnt wraps
// ErrOutcomeUnknown too: AllocateAddress repeated with the same arguments
// and ClaimBlock settle it.
type Store interface {
	// OwnBlocks returns the node's blocks from its index in etcd (and
	// keeps the index in repair).
	OwnBlocks(ctx context.Context, node string) ([]model.Block, error)
	BlockAddresses(ctx context.Context, b model.Block) ([]model.Address, error)
	AcquireBlock(ctx context.Context, pool string, owner model.Owner) (model.Block, model.Address, error)
	AllocateAddress(ctx context.Context, b model.Block, offset int, owner model.Owner) (model.Address, error)
	ClaimBlock(ctx context.Context, b model.Block, a model.Address) (model.Block, model.Address, error)
	ReleaseOwnAddress(ctx context.Context, a model.Address) error
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

// Allocator hands out addresses of the node's blocks. No one else writes
// addresses in those blocks, so its memory (a bitmap per block, an index
// by attachment) is authoritative while coild runs, and etcd sees one
// transaction per address. Restore rebuilds that memory before serving.
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
	// freed lists per pool the addresses released since the restore,
	// oldest first: they are handed out again in that order, and only
	// when no block of the pool has a never-used address left. Entries of
	// dropped blocks or of addresses in use again are skipped.
	freed map[string][]slot
	// fresh counts per pool the blocks with an address not used since
	// they were acquired or restored (spentCount below their size), so
	// that reserveLocked does not walk every block of a node whose blocks
	// have all been used once (every long-running node): that walk, under
	// the lock, was the allocator's main cost per allocation.
	fresh map[string]int
	// pending holds the commits of an attachment whose outcome etcd did
	// not tell (model.ErrOutcomeUnknown): the address or block stays
	// reserved until the attachment's next Allocate or Release settles it.
	pending map[api.Attachment]pendingCommit
	// restoredRev is the etcd revision Restore started reading at: every
	// change after it is to be applied by following the node's keys.
	restoredRev int64
	// drained holds the subnets that give no new blocks (all of a
	// drained pool's), as SetPools last saw them.
	drained map[subnetRef]bool
	// held counts per pool the addresses released but not freed yet
	// (ReleaseHeld: their previous owner's links are being deleted), and
	// unheld is closed, then replaced, whenever one of them is freed:
	// an allocation that finds its pool full waits on it (see
	// allocateWaitingForHeld).
	held   map[string]int
	unheld chan struct{}
}

// maxHeldWait bounds how long an allocation in a full pool waits for an
// address this node released to be freed. Freeing one waits for the
// deletion of its previous owner's veth (tens of milliseconds, batched).
const maxHeldWait = 2 * time.Second

// subnetRef names a subnet of a pool by its position.
type subnetRef struct {
	pool   string
	subnet int
}

// slot is one address of a block.
type slot struct {
	b   *block
	off int
}

// pendingCommit is an allocation whose commit may or may not have happened.
type pendingCommit struct {
	owner model.Owner
	// b and off: an address of a block the node holds in memory.
	b   *block
	off int
	// acquired and first: a block acquisition and its first address;
	// the block is not in memory.
	acquired model.Block
	first    model.Address
}

// flight is one block acquisition in progress; err is set before done closes.
type flight struct {
	done chan struct{}
	err  error
}

type block struct {
	model.Block
	used  bitmap
	count int
	// spent marks the addresses handed out since the block was acquired
	// or restored (a superset of used): the clear ones have not been used
	// since and go first, in rotation order from next. Freed addresses
	// wait in the pool's freed list.
	spent      bitmap
	spentCount int
	next       int
	emptySince time.Time
	retiring   bool
	// drained: the block's subnet is drained. Its free addresses are
	// used only when the pool has no other block to give (reserveLocked),
	// so the block empties as pods come and go and returns to the pool.
	drained bool
}

func newBlock(mb model.Block) *block {
	return &block{Block: mb, used: newBitmap(mb.Size()), spent: newBitmap(mb.Size())}
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
		freed:     map[string][]slot{},
		fresh:     map[string]int{},
		pending:   map[api.Attachment]pendingCommit{},
		drained:   map[subnetRef]bool{},
		held:      map[string]int{},
		unheld:    make(chan struct{}),
	}
}

// SetPools takes the pools' drain marks (coild feeds it from its watch of
// the pools): new pods then go to blocks of subnets that are not drained
// while the pool can give one.
func (a *Allocator) SetPools(pools []model.Pool) {
	drained := map[subnetRef]bool{}
	for _, p := range pools {
		for i := range p.Subnets {
			if p.SubnetDrained(i) {
				drained[subnetRef{p.Name, i}] = true
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.drained = drained
	for _, b := range a.blocks {
		b.drained = drained[subnetRef{b.Pool, b.Subnet}]
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
	blocks, err := a.store.OwnBlocks(ctx, a.node)
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
		b := newBlock(mb)
		// Rotation resumes after the most recently allocated address (the
		// newest record), not after the highest offset: after a wrap the
		// highest offset is old, and the address after it may have been
		// freed just before the restart.
		last, newest := -1, int64(-1)
		for _, ad := range addrs {
			if ad.Offset < 0 || ad.Offset >= mb.Size() {
				continue
			}
			b.used.set(ad.Offset)
			b.spent.set(ad.Offset)
			b.count++
			b.spentCount++
			owners[api.Attachment{ContainerID: ad.ContainerID, Interface: ad.Interface}] = ad
			if ad.Revision > newest {
				last, newest = ad.Offset, ad.Revision
			}
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
	a.fresh = map[string]int{}
	for _, b := range loaded {
		b.drained = a.drained[subnetRef{b.Pool, b.Subnet}]
		a.blocks[b.ID()] = b
		a.pools[b.Pool] = append(a.pools[b.Pool], b)
		if b.spentCount < b.Size() {
			a.fresh[b.Pool]++
		}
	}
	a.owners = owners
	// etcd is the truth now: what was pending is a record or nothing.
	a.freed = map[string][]slot{}
	a.pending = map[api.Attachment]pendingCommit{}
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

		addr, settled, err := a.settle(ctx, key)
		if !settled && err == nil {
			addr, err = a.allocateWaitingForHeld(ctx, pool, owner)
		}

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
	// withDrained: the pool gave no new block, so the free addresses of
	// the node's blocks in drained subnets are used after all.
	withDrained := false
	for attempt := 0; attempt < maxAttempts; {
		a.mu.Lock()
		b, off, fresh, ok := a.reserveLocked(pool, withDrained)
		if ok {
			a.mu.Unlock()
			addr, err := a.store.AllocateAddress(ctx, b.Block, off, owner)
			if err == nil {
				return addr, nil
			}
			a.mu.Lock()
			attempt++
			switch {
			case errors.Is(err, model.ErrOutcomeUnknown):
				// The record may exist: keep the address reserved for
				// this attachment until etcd tells.
				a.pending[attachmentOf(owner)] = pendingCommit{owner: owner, b: b, off: off}
				a.mu.Unlock()
				return model.Address{}, fmt.Errorf("allocate in pool %q: %w", pool, err)
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
				a.unreserveLocked(b, off, fresh)
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
			if !withDrained {
				withDrained = true
				a.mu.Unlock()
				continue
			}
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
			a.addBlockLocked(mb, addr.Offset)
		} else if errors.Is(err, model.ErrOutcomeUnknown) {
			// The node may own the block: settle it on the attachment's
			// next request rather than leave an orphan block in etcd.
			a.pending[attachmentOf(owner)] = pendingCommit{owner: owner, acquired: mb, first: addr}
		}
		close(f.done)
		a.mu.Unlock()
		if errors.Is(err, model.ErrPoolExhausted) && !withDrained {
			flightErr = err
			continue
		}
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

// allocateWaitingForHeld is allocate, except that when the pool is full
// while addresses of it that this node released are still held (their
// previous owners' veths being deleted: ReleaseHeld), it waits for one of
// them to be freed and tries again, up to maxHeldWait, instead of failing
// an ADD that would succeed moments later. With the veth deleted after
// DEL answers, a full pool's DEL and the ADD that follows it would
// otherwise fail the ADD, and the runtime retry it seconds later.
func (a *Allocator) allocateWaitingForHeld(ctx context.Context, pool string, owner model.Owner) (model.Address, error) {
	deadline := a.now().Add(maxHeldWait)
	for {
		a.mu.Lock()
		// Taken before the attempt, so that a release freed during it
		// is not missed.
		unheld := a.unheld
		a.mu.Unlock()
		addr, err := a.allocate(ctx, pool, owner)
		if !errors.Is(err, model.ErrPoolExhausted) {
			return addr, err
		}
		a.mu.Lock()
		waiting := a.held[pool] > 0
		a.mu.Unlock()
		left := deadline.Sub(a.now())
		if !waiting || left <= 0 {
			return addr, err
		}
		timer := time.NewTimer(left)
		select {
		case <-unheld:
			timer.Stop()
		case <-timer.C:
			return addr, err
		case <-ctx.Done():
			timer.Stop()
			return addr, err
		}
	}
}

func attachmentOf(owner model.Owner) api.Attachment {
	return api.Attachment{ContainerID: owner.ContainerID, Interface: owner.Interface}
}

// addBlockLocked adds a block the node acquired, with the address at off in use.
func (a *Allocator) addBlockLocked(mb model.Block, off int) {
	nb := newBlock(mb)
	nb.used.set(off)
	nb.spent.set(off)
	nb.count, nb.spentCount = 1, 1
	nb.next = (off + 1) % mb.Size()
	nb.drained = a.drained[subnetRef{mb.Pool, mb.Subnet}]
	a.blocks[mb.ID()] = nb
	a.pools[mb.Pool] = append(a.pools[mb.Pool], nb)
	if nb.spentCount < mb.Size() {
		a.fresh[mb.Pool]++
	}
}

// reserveLocked marks a free offset of pool used, so concurrent requests
// never try the same address. It prefers, across all the pool's blocks,
// an address not used since the block was acquired or restored (fresh),
// then the address freed longest ago: a freed address goes to another pod
// as late as possible (conntrack and egress NAT state of its last holder).
// No etcd request, no scan beyond the node's own blocks. Blocks of
// drained subnets are passed over unless withDrained.
func (a *Allocator) reserveLocked(pool string, withDrained bool) (b *block, off int, fresh, ok bool) {
	blocks := a.pools[pool]
	if a.fresh[pool] == 0 {
		// Every block was used once: no walk (all of a long-running
		// node's blocks are, after a while).
		blocks = nil
	}
	for _, b := range blocks {
		if b.retiring || b.spentCount >= b.Size() || b.drained && !withDrained {
			continue
		}
		if off := b.spent.nextFree(b.next, b.Size()); off >= 0 {
			b.next = (off + 1) % b.Size()
			a.takeLocked(b, off)
			return b, off, true, true
		}
	}
	q := a.freed[pool]
	var kept []slot // entries of drained blocks, passed over but not dropped
	for i, s := range q {
		if a.blocks[s.b.ID()] != s.b || s.b.retiring || s.b.used.isSet(s.off) {
			continue
		}
		if s.b.drained && !withDrained {
			kept = append(kept, s)
			continue
		}
		rest := q[i+1:]
		if len(kept) > 0 {
			rest = append(kept, rest...) // copies; only while a drain is on
		}
		a.setFreedLocked(pool, rest)
		a.takeLocked(s.b, s.off)
		return s.b, s.off, false, true
	}
	a.setFreedLocked(pool, kept)
	// A free address no entry names: its entry was skipped while its
	// block was being retired. Rare; better late than never.
	for _, b := range a.pools[pool] {
		if b.retiring || b.count >= b.Size() || b.drained && !withDrained {
			continue
		}
		if off := b.used.nextFree(b.next, b.Size()); off >= 0 {
			a.takeLocked(b, off)
			return b, off, false, true
		}
	}
	return nil, 0, false, false
}

func (a *Allocator) setFreedLocked(pool string, q []slot) {
	if len(q) == 0 {
		delete(a.freed, pool)
		return
	}
	a.freed[pool] = q
}

func (a *Allocator) takeLocked(b *block, off int) {
	b.used.set(off)
	b.count++
	if !b.spent.isSet(off) {
		b.spent.set(off)
		b.spentCount++
		if b.spentCount == b.Size() && a.blocks[b.ID()] == b {
			a.fresh[b.Pool]--
		}
	}
	b.emptySince = time.Time{}
}

// unreserveLocked undoes reserveLocked for an address whose commit
// certainly failed: it goes back where it was taken from (fresh, or the
// head of the freed list).
func (a *Allocator) unreserveLocked(b *block, off int, fresh bool) {
	if !b.used.isSet(off) {
		return
	}
	a.clearLocked(b, off)
	if fresh {
		b.spent.clear(off)
		b.spentCount--
		if b.spentCount == b.Size()-1 && a.blocks[b.ID()] == b {
			a.fresh[b.Pool]++
		}
		return
	}
	a.freed[b.Pool] = append([]slot{{b, off}}, a.freed[b.Pool]...)
}

// freeLocked marks the address at off of b free after its record was
// deleted from etcd (by this node, or by anyone else when a watch reports
// it), queueing it behind every address freed before.
func (a *Allocator) freeLocked(b *block, off int) {
	if !b.used.isSet(off) {
		return
	}
	a.clearLocked(b, off)
	a.freed[b.Pool] = append(a.freed[b.Pool], slot{b, off})
}

func (a *Allocator) clearLocked(b *block, off int) {
	b.used.clear(off)
	b.count--
	if b.count == 0 {
		b.emptySince = a.now()
	}
}

func (a *Allocator) dropLocked(b *block) {
	if a.blocks[b.ID()] == b && b.spentCount < b.Size() {
		a.fresh[b.Pool]--
	}
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
	var q []slot
	for _, e := range a.freed[b.Pool] {
		if e.b != b {
			q = append(q, e)
		}
	}
	a.setFreedLocked(b.Pool, q)
	for k, p := range a.pending {
		// The block's records went with it: nothing left to settle.
		if p.b == b {
			delete(a.pending, k)
		}
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
	addr, ok, free, err := a.ReleaseHeld(ctx, att)
	free()
	return addr, ok, err
}

// ReleaseHeld is Release, except that the address is not handed out again
// until free is called: the record is deleted in etcd and the attachment
// forgotten, but the offset stays taken in memory. coild holds the address
// this way while the links of its previous owner are being deleted, so
// that no pod gets an address whose old veth still exists on the node.
// free is never nil, and calling it more than once does nothing more.
func (a *Allocator) ReleaseHeld(ctx context.Context, att api.Attachment) (addr model.Address, released bool, free func(), err error) {
	free = func() {}
	addr, released, held, err := a.release(ctx, att)
	if held != nil {
		var once sync.Once
		free = func() {
			once.Do(func() {
				a.mu.Lock()
				defer a.mu.Unlock()
				// Unless the block went meanwhile (it is then
				// forgotten with everything in it).
				if a.blocks[held.ID()] == held {
					a.freeLocked(held, addr.Offset)
				}
				a.held[addr.Pool]--
				if a.held[addr.Pool] <= 0 {
					delete(a.held, addr.Pool)
				}
				close(a.unheld)
				a.unheld = make(chan struct{})
			})
		}
	}
	return addr, released, free, err
}

// release deletes the attachment's record and forgets the attachment; it
// returns the block whose offset the caller must free, if any.
func (a *Allocator) release(ctx context.Context, att api.Attachment) (model.Address, bool, *block, error) {
	a.mu.Lock()
	if !a.restored {
		a.mu.Unlock()
		return model.Address{}, false, nil, ErrNotRestored
	}
	addr, ok := a.owners[att]
	_, pending := a.pending[att]
	a.mu.Unlock()
	if !ok && pending {
		// A commit of this attachment may have happened: settle it, so
		// its record (if any) is found and deleted, not orphaned.
		settled, done, err := a.settle(ctx, att)
		if err != nil {
			return model.Address{}, false, nil, fmt.Errorf("release address of container %s: %w", att.ContainerID, err)
		}
		if done {
			a.mu.Lock()
			a.owners[att] = settled
			a.mu.Unlock()
			addr, ok = settled, true
		}
	}
	if !ok {
		return model.Address{}, false, nil, nil
	}
	err := a.store.ReleaseOwnAddress(ctx, addr)
	notOwner := errors.Is(err, model.ErrNotOwner)
	if err != nil && !notOwner {
		return model.Address{}, false, nil, fmt.Errorf("release address of container %s: %w", att.ContainerID, err)
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	// Only the call that forgets the record frees its offset: a release
	// seen in etcd (ForgetAddress) or a concurrent Release may have done
	// it already, and the offset may be someone else's by now.
	cur, ok := a.owners[att]
	if !ok || cur.Revision != addr.Revision {
		return addr, true, nil, nil
	}
	delete(a.owners, att)
	if b, ok := a.blocks[model.Block{Pool: addr.Pool, Subnet: addr.Subnet, Index: addr.Block}.ID()]; ok && !notOwner {
		// Held until the caller's free (ReleaseHeld).
		a.held[addr.Pool]++
		return addr, true, b, nil
	}
	return addr, true, nil, nil
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

// FreeAddresses is, per pool, the number of addresses free in the blocks
// the node owns: what it can hand out without taking a block.
func (a *Allocator) FreeAddresses() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := make(map[string]int, len(a.pools))
	for pool, list := range a.pools {
		for _, b := range list {
			m[pool] += b.Size() - b.count
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

// settle learns the outcome of the attachment's pending commit, if it has
// one, by repeating it: the store's writes are safe to repeat, and the
// repetition fences off a delayed copy of the lost request. It returns the
// address when the attachment holds one in etcd (settled), nothing when
// the commit did not happen (the reservation is then dropped), and an
// error when etcd still does not tell.
func (a *Allocator) settle(ctx context.Context, att api.Attachment) (model.Address, bool, error) {
	a.mu.Lock()
	p, ok := a.pending[att]
	a.mu.Unlock()
	if !ok {
		return model.Address{}, false, nil
	}
	if p.b != nil {
		addr, err := a.store.AllocateAddress(ctx, p.b.Block, p.off, p.owner)
		a.mu.Lock()
		switch {
		case err == nil:
			delete(a.pending, att)
			a.mu.Unlock()
			return addr, true, nil
		case errors.Is(err, model.ErrAddressInUse):
			// Another record holds it: the address stays marked used.
			delete(a.pending, att)
			a.mu.Unlock()
			return model.Address{}, false, nil
		case errors.Is(err, model.ErrBlockLost):
			delete(a.pending, att)
			lost := a.blocks[p.b.ID()] == p.b
			if lost {
				a.dropLocked(p.b)
			}
			a.mu.Unlock()
			if lost && a.observer != nil {
				a.observer.BlockReleased(p.b.Block)
			}
			return model.Address{}, false, nil
		}
		a.mu.Unlock()
		return model.Address{}, false, fmt.Errorf("settle earlier allocation in block %s: %w", p.b.ID(), err)
	}
	mb, addr, err := a.store.ClaimBlock(ctx, p.acquired, p.first)
	switch {
	case err == nil:
		a.mu.Lock()
		delete(a.pending, att)
		a.addBlockLocked(mb, addr.Offset)
		a.mu.Unlock()
		if a.observer != nil {
			a.observer.BlockAcquired(mb)
		}
		return addr, true, nil
	case errors.Is(err, model.ErrBlockLost):
		a.mu.Lock()
		delete(a.pending, att)
		a.mu.Unlock()
		return model.Address{}, false, nil
	}
	return model.Address{}, false, fmt.Errorf("settle earlier acquisition of block %s: %w", p.acquired.ID(), err)
}
