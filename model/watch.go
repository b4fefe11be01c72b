package model

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchPools calls fn with every pool now and again after each change, until
// ctx ends. A broken or compacted watch is re-established from a fresh list,
// so no change is missed; a failing list is retried every retry interval.
func (s *Store) WatchPools(ctx context.Context, retry time.Duration, fn func([]Pool)) error {
	if s.watcher == nil {
		return errors.New("watch pools: store has no watcher")
	}
	for ctx.Err() == nil {
		snap, err := s.poolSnapshot(ctx)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(retry):
			}
			continue
		}
		fn(snap.pools)
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		ch := s.watcher.Watch(wctx, s.poolsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(snap.revision+1))
		changed := false
		for resp := range ch {
			if resp.Err() != nil || resp.Canceled {
				break
			}
			if len(resp.Events) > 0 {
				changed = true
				break
			}
		}
		cancel()
		if !changed && ctx.Err() == nil {
			// The watch ended without news (leader lost, compaction):
			// pause briefly so a dead etcd does not spin us.
			select {
			case <-ctx.Done():
			case <-time.After(retry):
			}
		}
	}
	return fmt.Errorf("watch pools: %w", context.Cause(ctx))
}
