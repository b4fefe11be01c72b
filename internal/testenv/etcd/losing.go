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
// swallows etcd's answers from the next transaction on: the reads a write
// makes first still get theirs, and its commit reaches etcd with the
// client seeing only a broken connection (an ambiguous commit).
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

// Arm makes the next transaction's answer, and every later one, be lost.
func (k *LosingKV) Arm() { k.armed.Store(true) }

// Txn implements clientv3.KV.
func (k *LosingKV) Txn(ctx context.Context) clientv3.Txn {
	if k.armed.CompareAndSwap(true, false) {
		k.Proxy.SetDropResponses(true)
	}
	return k.KV.Txn(ctx)
}
