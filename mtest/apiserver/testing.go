package apiserver

import (
	"context"
	"testing"
	"time"
)

// BuildTimeout bounds how long StartForTest waits for the first build of
// the binary (about 4 minutes on two cores with a cold build cache).
const BuildTimeout = 20 * time.Minute

// StartForTest builds the binary if needed, starts a server against the
// etcd at etcdEndpoint in a temporary directory of t, and stops it when
// the test ends, whether it passed or not. opts.EtcdEndpoint and opts.Dir
// are filled in when empty.
func StartForTest(t testing.TB, etcdEndpoint string, opts Options) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), BuildTimeout)
	defer cancel()
	if opts.EtcdEndpoint == "" {
		opts.EtcdEndpoint = etcdEndpoint
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	s, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("start kube-apiserver: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}
