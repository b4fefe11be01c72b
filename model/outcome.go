package model

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// defaultOutcomeWait bounds how long a write whose answer was lost keeps
// asking etcd what became of it before it reports ErrOutcomeUnknown.
const defaultOutcomeWait = 5 * time.Second

// commit runs the transaction txn builds. A transient failure (timeout,
// broken connection) does not say whether etcd applied it, so commit then
// runs the same transaction again, with a deadline of its own (the
// caller's may be what ran out), until etcd answers. Every transaction
// passed here must be safe to apply twice and must tell from its answer
// whether the first one took effect: its guards compare creation
// revisions or absence, which one application changes for good, and its
// Else branch reads what it needs to know. reissued reports that resp is
// the answer to such a repetition.
//
// When etcd refuses (ErrEtcd) the first request, nothing was applied. When
// the outcome stays unknown, the error wraps ErrOutcomeUnknown and
// ErrUnavailable: the caller must treat the write as possibly applied.
func (s *Store) commit(ctx context.Context, txn func(context.Context) clientv3.Txn) (resp *clientv3.TxnResponse, reissued bool, err error) {
	resp, err = txn(ctx).Commit()
	if err == nil {
		return resp, false, nil
	}
	if !transient(err) {
		return nil, false, etcdErr("commit", err)
	}
	first := err
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.outcomeWait)
	defer cancel()
	delay := 20 * time.Millisecond
	for {
		resp, err = txn(rctx).Commit()
		if err == nil {
			return resp, true, nil
		}
		if !transient(err) {
			// etcd refused the repetition; the first may still have applied.
			return nil, false, fmt.Errorf("commit: %w: %w: %w (asking again: %w)", ErrOutcomeUnknown, ErrUnavailable, first, err)
		}
		t := time.NewTimer(delay)
		select {
		case <-rctx.Done():
			t.Stop()
			return nil, false, fmt.Errorf("commit: %w: %w: %w", ErrOutcomeUnknown, ErrUnavailable, first)
		case <-t.C:
		}
		delay = min(2*delay, time.Second)
	}
}
