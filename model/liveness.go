package model

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Liveness is the value of a node's liveness key. The key lives under an
// etcd lease its coild renews, so it disappears a TTL after that coild
// stops: coil-controller releases a deleted node's blocks only once it is
// gone.
type Liveness struct {
	Node string `json:"node"`
	// Since is when this coild took the current lease.
	Since time.Time `json:"since"`
	// TTL is the lease's time to live in seconds as granted by etcd.
	TTL int64 `json:"ttl"`
}

func (s *Store) livenessPrefix() string         { return s.prefix + "liveness/" }
func (s *Store) livenessKey(node string) string { return s.livenessPrefix() + node }

// NodeAlive reports whether node's liveness key exists, that is whether
// its coild renewed its lease within the lease's TTL.
func (s *Store) NodeAlive(ctx context.Context, node string) (bool, error) {
	if node == "" {
		return false, fmt.Errorf("node liveness: %w: empty name", ErrInvalidName)
	}
	resp, err := s.kv.Get(ctx, s.livenessKey(node), clientv3.WithCountOnly())
	if err != nil {
		return false, fmt.Errorf("node liveness of %q: %w", node, etcdErr("get", err))
	}
	return resp.Count > 0, nil
}

// KeepNodeAlive holds node's liveness key under a lease of ttl (etcd
// rounds it up to whole seconds and to its own minimum) and renews the
// lease until ctx ends. When the lease is lost (etcd unreachable for
// longer than the TTL, the lease revoked) a new one is granted and the
// key written again, retrying every retry interval while etcd fails.
// onState, if not nil, learns each change between holding the key
// (err nil) and not (err the cause). It returns ctx's cause.
//
// The key is not deleted when ctx ends: a coild that stops is taken for
// alive until its lease expires, which is the safe side.
func (s *Store) KeepNodeAlive(ctx context.Context, node string, ttl, retry time.Duration, onState func(alive bool, err error)) error {
	if node == "" {
		return fmt.Errorf("keep node alive: %w: empty name", ErrInvalidName)
	}
	if s.lease == nil {
		return errors.New("keep node alive: store has no lease client")
	}
	if onState == nil {
		onState = func(bool, error) {}
	}
	seconds := int64((ttl + time.Second - 1) / time.Second)
	if seconds < 1 {
		seconds = 1
	}
	for ctx.Err() == nil {
		err := s.holdLiveness(ctx, node, seconds, onState)
		if ctx.Err() != nil {
			break
		}
		onState(false, err)
		sleep(ctx, retry)
	}
	return fmt.Errorf("keep node %q alive: %w", node, context.Cause(ctx))
}

// holdLiveness grants one lease, writes the key under it and renews it
// until the lease is lost or ctx ends.
func (s *Store) holdLiveness(ctx context.Context, node string, seconds int64, onState func(bool, error)) error {
	gctx, cancel := context.WithTimeout(ctx, time.Duration(seconds)*time.Second)
	grant, err := s.lease.Grant(gctx, seconds)
	cancel()
	if err != nil {
		return fmt.Errorf("grant liveness lease: %w", etcdErr("grant", err))
	}
	// The renewals run on their own context so that the lease's keep-alive
	// stream ends with this call, whatever the outcome.
	kctx, stop := context.WithCancel(ctx)
	defer stop()
	val := encode(Liveness{Node: node, Since: time.Now().UTC(), TTL: grant.TTL})
	pctx, cancel := context.WithTimeout(ctx, time.Duration(seconds)*time.Second)
	_, err = s.kv.Put(pctx, s.livenessKey(node), val, clientv3.WithLease(grant.ID))
	cancel()
	if err != nil {
		return fmt.Errorf("write liveness key: %w", etcdErr("put", err))
	}
	ch, err := s.lease.KeepAlive(kctx, grant.ID)
	if err != nil {
		return fmt.Errorf("renew liveness lease: %w", etcdErr("keepalive", err))
	}
	onState(true, nil)
	for range ch {
		// Each answer is one renewal; the channel closes when the lease
		// is gone or could not be renewed before it expired.
	}
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("liveness lease %x lost: %w", int64(grant.ID), ErrUnavailable)
}
