package ipam

import (
	"context"
	"fmt"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/model"
)

// Releases made in etcd by someone else than this allocator: the leak
// reclaim of coil-controller, `coilctl address free`, the release of the
// node's blocks by coil-controller or an operator. coild follows the node's
// keys and applies them here, so that a freed address is handed out again
// and a block that is no longer the node's is no longer allocated from.

// ForgetAddress applies the deletion of the address record rec (its
// Revision the record's creation revision) made in etcd by someone else:
// the attachment holding it loses it and the offset becomes free. It
// returns the address forgotten; false when the allocator does not hold
// that very record (released here already, re-allocated since, or not in
// one of the node's blocks), in which case nothing changes.
func (a *Allocator) ForgetAddress(rec model.Address) (model.Address, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	b, ok := a.blocks[model.Block{Pool: rec.Pool, Subnet: rec.Subnet, Index: rec.Block}.ID()]
	if !ok {
		return model.Address{}, false
	}
	att, addr, ok := a.holderLocked(rec)
	if !ok {
		return model.Address{}, false
	}
	delete(a.owners, att)
	a.freeLocked(b, addr.Offset)
	return addr, true
}

// holderLocked finds the attachment holding the very record rec.
func (a *Allocator) holderLocked(rec model.Address) (api.Attachment, model.Address, bool) {
	for att, addr := range a.owners {
		if addr.Revision == rec.Revision && addr.Pool == rec.Pool && addr.Subnet == rec.Subnet &&
			addr.Block == rec.Block && addr.Offset == rec.Offset {
			return att, addr, true
		}
	}
	return api.Attachment{}, model.Address{}, false
}

// ForgetBlock applies the deletion of the block record b (its Revision the
// record's creation revision) made in etcd by someone else: the allocator
// stops allocating from it, forgets the addresses it held, and tells the
// observer the block is gone so its route is withdrawn. It returns the
// addresses that were in use in it: their pods run on with addresses that
// may now be handed out elsewhere. It returns false when the allocator
// does not hold that very block, or is releasing it itself
// (ReleaseEmptyBlocks), in which case nothing changes.
func (a *Allocator) ForgetBlock(b model.Block) ([]model.Address, bool) {
	a.mu.Lock()
	cur, ok := a.blocks[b.ID()]
	if !ok || cur.Revision != b.Revision || cur.retiring {
		a.mu.Unlock()
		return nil, false
	}
	var lost []model.Address
	for _, addr := range a.owners {
		if addr.Pool == b.Pool && addr.Subnet == b.Subnet && addr.Block == b.Index {
			lost = append(lost, addr)
		}
	}
	a.dropLocked(cur)
	a.mu.Unlock()
	if a.observer != nil {
		a.observer.BlockReleased(cur.Block)
	}
	return lost, true
}

// Resync compares the allocator's memory with etcd after changes may have
// been missed (a watch that broke or was compacted) and applies the
// releases made meanwhile: a block or address record held in memory,
// created at or before the revision read at, and absent from etcd, was
// released by someone else (ForgetBlock, ForgetAddress). Records created
// after that revision are this allocator's own recent work and are kept.
// Unlike Restore it never replaces the memory, so it is safe while
// requests are served. It returns the revision read at, for following the
// keys from there on, and what it forgot.
func (a *Allocator) Resync(ctx context.Context) (rev int64, blocks []model.Block, addrs []model.Address, err error) {
	if !a.Ready() {
		return 0, nil, nil, ErrNotRestored
	}
	if rev, err = a.store.Revision(ctx); err != nil {
		return 0, nil, nil, fmt.Errorf("resync node %q: %w", a.node, err)
	}
	inEtcd, err := a.store.OwnBlocks(ctx, a.node)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("resync blocks of node %q: %w", a.node, err)
	}
	present := map[string]int64{}
	recorded := map[model.Address]bool{} // keyed by identity fields only
	for _, mb := range inEtcd {
		present[mb.ID()] = mb.Revision
		list, err := a.store.BlockAddresses(ctx, mb)
		if err != nil {
			return 0, nil, nil, fmt.Errorf("resync addresses of block %s: %w", mb.ID(), err)
		}
		for _, ad := range list {
			recorded[addressIdentity(ad)] = true
		}
	}

	// Decide under the lock, apply through the methods above (each takes
	// the lock and checks again: a Release may run in between).
	var goneBlocks []model.Block
	var goneAddrs []model.Address
	a.mu.Lock()
	for _, b := range a.blocks {
		if b.Revision <= rev && present[b.ID()] != b.Revision {
			goneBlocks = append(goneBlocks, b.Block)
		}
	}
	for _, addr := range a.owners {
		if addr.Revision != 0 && addr.Revision <= rev && !recorded[addressIdentity(addr)] {
			goneAddrs = append(goneAddrs, addr)
		}
	}
	a.mu.Unlock()

	for _, b := range goneBlocks {
		if lost, ok := a.ForgetBlock(b); ok {
			blocks = append(blocks, b)
			addrs = append(addrs, lost...)
		}
	}
	for _, ad := range goneAddrs {
		if got, ok := a.ForgetAddress(ad); ok {
			addrs = append(addrs, got)
		}
	}
	return rev, blocks, addrs, nil
}

// addressIdentity is what tells one address record from another: where it
// is and the revision that created it.
func addressIdentity(a model.Address) model.Address {
	return model.Address{Pool: a.Pool, Subnet: a.Subnet, Block: a.Block, Offset: a.Offset, Revision: a.Revision}
}
