package model

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxBatch bounds the address writes coalesced into one transaction: an
// allocation brings two compares, and etcd refuses a transaction with
// more than --max-txn-ops (128 by default) compares or operations.
const maxBatch = 32

// batcher coalesces the address writes of one store (allocations and a
// node's own releases) that arrive while another is in flight into one
// etcd transaction, without a timer: a write finding nothing in flight
// goes out at once, alone, as the same transaction as ever; the writes
// that arrive meanwhile wait for it and then go out together. So a
// sequential caller pays nothing, and no write waits for more than the
// transaction in flight before its own is sent (more only when over
// maxBatch are queued).
//
// A batch is all or nothing: its transaction holds every write's own
// compares, so it fails if any one would have. Its writes are then sent
// again one by one, as single transactions, so each gets exactly the
// answer (and the typed error) it would have had alone, including the
// settling of a lost answer (commit): a batch applied whose answer was
// lost fails its compares when asked again, and each single write then
// finds its own record.
//
// The waiting is done by the callers' goroutines: the first caller sends,
// then hands the queue to one of the waiting callers, who sends it and
// hands on in turn.
type batcher struct {
	mu    sync.Mutex
	busy  bool // a write (single or batch) is in flight
	queue []*batchOp
}

// guard is a compare of a batched write: CreateRevision(key) == rev.
type guard struct {
	key string
	rev int64
}

// batchSignal is what a queued write is told.
type batchSignal int

const (
	// batchDone: the batch's outcome is in the op (committed or err).
	batchDone batchSignal = iota
	// batchAlone: send the write as its own transaction.
	batchAlone
	// batchLead: send the batch in the op's lead field, then hand on.
	batchLead
)

// batchOp is one address write: its compares, its operation, and the key
// it writes (two writes of one key never share a transaction: etcd
// refuses a duplicate key).
type batchOp struct {
	ctx    context.Context
	guards []guard
	write  clientv3.Op
	key    string
	// note: a release, so the batch carries the store's release note.
	note bool
	// alone sends the write as its own transaction, as without batching,
	// and records the outcome.
	alone func(ctx context.Context)

	wake chan batchSignal
	lead []*batchOp
	// Set before batchDone: the revision of the committed batch, or the
	// error that leaves its outcome unknown.
	rev int64
	err error
}

// runBatched sends op, alone or in a batch, and returns once its outcome is
// known: either op.alone ran, or op.rev (committed) or op.err is set.
func (s *Store) runBatched(op *batchOp) {
	b := &s.batch
	b.mu.Lock()
	if !b.busy {
		b.busy = true
		b.mu.Unlock()
		op.alone(op.ctx)
		s.handOn()
		return
	}
	op.wake = make(chan batchSignal, 1)
	b.queue = append(b.queue, op)
	b.mu.Unlock()

	var sig batchSignal
	select {
	case sig = <-op.wake:
	case <-op.ctx.Done():
		b.mu.Lock()
		if i := slices.Index(b.queue, op); i >= 0 {
			// Not sent: nothing was written.
			b.queue = slices.Delete(b.queue, i, i+1)
			b.mu.Unlock()
			op.err = fmt.Errorf("%w: waiting for the write in flight: %w", ErrUnavailable, context.Cause(op.ctx))
			return
		}
		b.mu.Unlock()
		// Taken into a batch already: its outcome comes.
		sig = <-op.wake
	}
	switch sig {
	case batchAlone:
		op.alone(op.ctx)
	case batchLead:
		alone := s.sendBatch(op.lead)
		s.handOn()
		if alone {
			op.alone(op.ctx)
		}
	}
}

// handOn passes the queue, once the write in flight is done, to the first
// waiting write, who sends it; with nothing queued the batcher is idle.
func (s *Store) handOn() {
	b := &s.batch
	b.mu.Lock()
	if len(b.queue) == 0 {
		b.busy = false
		b.mu.Unlock()
		return
	}
	var batch []*batchOp
	keys := make(map[string]bool, min(len(b.queue), maxBatch))
	rest := b.queue[:0]
	for _, op := range b.queue {
		if len(batch) < maxBatch && !keys[op.key] {
			keys[op.key] = true
			batch = append(batch, op)
			continue
		}
		// Left for the next batch.
		rest = append(rest, op)
	}
	clear(b.queue[len(rest):])
	b.queue = rest
	b.mu.Unlock()
	lead := batch[0]
	lead.lead = batch
	lead.wake <- batchLead
}

// sendBatch sends the writes of batch, the caller's first, and tells the
// others their outcome. It reports whether the caller must send its own
// write alone.
func (s *Store) sendBatch(batch []*batchOp) (alone bool) {
	if len(batch) == 1 {
		return true
	}
	var cmps []clientv3.Cmp
	seen := make(map[guard]bool, 2*len(batch))
	ops := make([]clientv3.Op, 0, len(batch)+1)
	note := false
	for _, op := range batch {
		for _, g := range op.guards {
			// Allocations in one block share its compare.
			if !seen[g] {
				seen[g] = true
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(g.key), "=", g.rev))
			}
		}
		ops = append(ops, op.write)
		note = note || op.note
	}
	if note {
		// One note names the releaser of every address the batch deletes:
		// AddressHistory reads the note written at a deletion's revision.
		ops = append(ops, s.noteOps("")...)
	}
	ctx, stop := mergeContexts(batch)
	resp, _, err := s.commit(ctx, func(ctx context.Context) clientv3.Txn {
		return s.kv.Txn(ctx).If(cmps...).Then(ops...)
	})
	stop()
	sig := batchAlone
	switch {
	case err == nil && resp.Succeeded:
		sig = batchDone
		for _, op := range batch {
			op.rev = resp.Header.Revision
		}
	case errors.Is(err, ErrOutcomeUnknown):
		// Applied or not, etcd does not tell: each write reports it,
		// as a single one would, and is settled by its caller later.
		sig = batchDone
		for _, op := range batch {
			op.err = fmt.Errorf("batch of %d writes: %w", len(batch), err)
		}
	}
	// Otherwise a compare failed (or etcd refused the batch, applying
	// nothing): each write goes again alone, for its own answer.
	for _, op := range batch[1:] {
		op.wake <- sig
	}
	return sig == batchAlone
}

// mergeContexts returns a context that ends when every op's has ended
// (the batch is sent for all of them), with the values of the first.
// stop releases it.
func mergeContexts(batch []*batchOp) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(batch[0].ctx))
	var left atomic.Int32
	left.Store(int32(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, op := range batch {
		stops[i] = context.AfterFunc(op.ctx, func() {
			if left.Add(-1) == 0 {
				cancel(context.Cause(op.ctx))
			}
		})
	}
	return ctx, func() {
		for _, s := range stops {
			s()
		}
		cancel(nil)
	}
}
