package model_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestRetryConflictsPolicy checks the retry policy alone, without etcd.
func TestRetryConflictsPolicy(t *testing.T) {
	boom := errors.New("boom")
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		// results are what the attempts return, in order; the last one
		// repeats.
		results []error
		// cancelAt cancels the context during that attempt (1-based).
		cancelAt  int
		wantCalls int
		wantErrs  []error
		notErrs   []error
	}{
		{name: "first attempt succeeds", results: []error{nil}, wantCalls: 1},
		{name: "other error returned at once", results: []error{boom}, wantCalls: 1, wantErrs: []error{boom}, notErrs: []error{model.ErrConflict}},
		{name: "conflicts then success", results: []error{model.ErrConflictAttempt, model.ErrConflictAttempt, nil}, wantCalls: 3},
		{name: "wrapped conflict retried", results: []error{fmt.Errorf("commit: %w", model.ErrConflictAttempt), nil}, wantCalls: 2},
		{name: "conflicts then other error", results: []error{model.ErrConflictAttempt, boom}, wantCalls: 2, wantErrs: []error{boom}},
		{
			name: "attempts exhausted", results: []error{model.ErrConflictAttempt}, wantCalls: 5,
			wantErrs: []error{model.ErrConflict, model.ErrUnavailable}, notErrs: []error{model.ErrConflictAttempt},
		},
		{
			name: "context ended before", ctx: canceled, results: []error{nil}, wantCalls: 0,
			wantErrs: []error{context.Canceled, model.ErrUnavailable}, notErrs: []error{model.ErrConflict},
		},
		{
			name: "context ends between attempts", results: []error{model.ErrConflictAttempt}, cancelAt: 2, wantCalls: 2,
			wantErrs: []error{context.Canceled, model.ErrUnavailable}, notErrs: []error{model.ErrConflict},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			calls := 0
			err := model.RetryConflicts(ctx, 5, func() error {
				calls++
				if calls == tt.cancelAt {
					cancel()
				}
				return tt.results[min(calls, len(tt.results))-1]
			})
			if calls != tt.wantCalls {
				t.Errorf("attempts = %d, want %d", calls, tt.wantCalls)
			}
			if len(tt.wantErrs) == 0 && err != nil {
				t.Errorf("error = %v, want nil", err)
			}
			for _, w := range tt.wantErrs {
				if !errors.Is(err, w) {
					t.Errorf("error = %v, want it to wrap %v", err, w)
				}
			}
			for _, w := range tt.notErrs {
				if errors.Is(err, w) {
					t.Errorf("error = %v wraps %v", err, w)
				}
			}
		})
	}
}

// racingKV plays another writer that always commits first: before each
// transaction, while races remain (forever if negative), it writes key
// again with its current value, which moves the key's revision past
// whatever the store read before.
type racingKV struct {
	clientv3.KV
	t     *testing.T
	key   string
	races int
	txns  atomic.Int32
}

// Txn races every transaction that writes (a read-only one, as a search
// for a free block, is a read the race may follow as well as precede).
func (r *racingKV) Txn(ctx context.Context) clientv3.Txn {
	return etcdtest.HookTxn(r.KV.Txn(ctx), func(then []clientv3.Op, commit func() (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
		if !etcdtest.Writes(then) {
			return commit()
		}
		r.txns.Add(1)
		if r.races != 0 {
			r.races--
			resp, err := r.KV.Get(ctx, r.key)
			if err != nil || len(resp.Kvs) != 1 {
				r.t.Errorf("race: get %s: %v, %v", r.key, resp, err)
			} else if _, err := r.KV.Put(ctx, r.key, string(resp.Kvs[0].Value)); err != nil {
				r.t.Errorf("race: put %s: %v", r.key, err)
			}
		}
		return commit()
	})
}

// TestConflictRetries checks that every write decided on a read tries
// again when another writer commits in between, and gives up with
// ErrConflict, committing nothing, when that never stops.
func TestConflictRetries(t *testing.T) {
	ctx := context.Background()
	pool := func(name, cidr string) model.Pool {
		return model.Pool{Name: name, BlockSizeBits: 2, Subnets: []model.Subnet{mustSubnet(t, cidr, "")}}
	}
	tests := []struct {
		name string
		// prepare makes the record the race rewrites, at key (under the
		// store's prefix).
		prepare func(st *model.Store) error
		key     string
		// do is the write under test.
		do func(st *model.Store) error
	}{
		{
			name:    "CreatePool",
			prepare: func(st *model.Store) error { return st.CreatePool(ctx, pool("other", "10.1.0.0/24")) },
			key:     "pools/other",
			do:      func(st *model.Store) error { return st.CreatePool(ctx, pool("new", "10.2.0.0/24")) },
		},
		{
			name:    "AddSubnet",
			prepare: func(st *model.Store) error { return st.CreatePool(ctx, pool("other", "10.1.0.0/24")) },
			key:     "pools/other",
			do:      func(st *model.Store) error { return st.AddSubnet(ctx, "other", mustSubnet(t, "10.3.0.0/24", "")) },
		},
		{
			name: "CreateEgress",
			prepare: func(st *model.Store) error {
				_, err := st.CreateEgress(ctx, model.Egress{Namespace: "ns", Name: "a", Destinations: mustPrefixes(t, "0.0.0.0/0")})
				return err
			},
			key: "egresses/ns/a",
			do: func(st *model.Store) error {
				_, err := st.CreateEgress(ctx, model.Egress{Namespace: "ns", Name: "b", Destinations: mustPrefixes(t, "0.0.0.0/0")})
				return err
			},
		},
		{
			name:    "AcquireBlock",
			prepare: func(st *model.Store) error { return st.CreatePool(ctx, pool("p", "10.4.0.0/24")) },
			key:     "pools/p",
			do: func(st *model.Store) error {
				_, _, err := st.AcquireBlock(ctx, "p", model.Owner{Node: "n1", Namespace: "default", Pod: "pod", ContainerID: "c", Interface: "eth0"})
				return err
			},
		},
	}
	for _, tt := range tests {
		for _, races := range []int{3, -1} {
			t.Run(fmt.Sprintf("%s/races=%d", tt.name, races), func(t *testing.T) {
				cli := server.Client(t)
				kv := &racingKV{KV: cli.KV, t: t}
				st := model.NewWithKV(kv, etcdtest.Prefix(t))
				if err := st.Init(ctx); err != nil {
					t.Fatal(err)
				}
				if err := tt.prepare(st); err != nil {
					t.Fatal(err)
				}
				kv.key, kv.races = st.Prefix()+tt.key, races
				kv.txns.Store(0)
				before := dump(t, cli, st.Prefix())

				err := tt.do(st)
				if races >= 0 {
					if err != nil {
						t.Fatalf("after %d lost races: %v", races, err)
					}
					if got := kv.txns.Load(); got != int32(races+1) {
						t.Errorf("transactions = %d, want %d", got, races+1)
					}
					return
				}
				if !errors.Is(err, model.ErrConflict) || !errors.Is(err, model.ErrUnavailable) {
					t.Fatalf("error = %v, want ErrConflict and ErrUnavailable", err)
				}
				if got := kv.txns.Load(); got != int32(model.MaxConflictAttempts) {
					t.Errorf("transactions = %d, want %d", got, model.MaxConflictAttempts)
				}
				// Only the race's own rewrites happened.
				if after := dump(t, cli, st.Prefix()); fmt.Sprint(after) != fmt.Sprint(before) {
					t.Errorf("a failed call changed etcd:\nbefore %v\nafter  %v", before, after)
				}
			})
		}
	}
}
