package etcdtest

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// LosingKV reaches the server through a TCP proxy that, once armed,
// swallows etcd's answers from the next transaction created that writes
// on: the reads a write makes first (read-only transactions included)
// still get theirs, and its commit reaches etcd with the client seeing only a broken
// connection (an ambiguous commit).
type LosingKV struct {
	clientv3.KV
	// Proxy is the path to the server; SetDropResponses(false) and a cut
	// restore it.
	Proxy *testenv.TCPProxy
	armed atomic.Bool
}

// LosingKV dials the server through a new proxy, closed when t ends.
func (s *Server) LosingKV(t testing.TB) *LosingKV {
	t.Helper()
	proxy := testenv.NewTCPProxy(t, strings.TrimPrefix(s.Endpoint, "http://"))
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{proxy.URL()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return &LosingKV{KV: cli.KV, Proxy: proxy}
}

// Arm makes the answer of the next transaction created that writes, and
// every later one, be lost.
func (k *LosingKV) Arm() { k.armed.Store(true) }

// Txn implements clientv3.KV.
func (k *LosingKV) Txn(ctx context.Context) clientv3.Txn {
	// One created before Arm (held, say, while the test arms) is not the
	// next one, even if it commits after.
	after := k.armed.Load()
	return HookTxn(k.KV.Txn(ctx), func(then []clientv3.Op, commit func() (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
		if after && Writes(then) && k.armed.CompareAndSwap(true, false) {
			k.Proxy.SetDropResponses(true)
		}
		return commit()
	})
}
