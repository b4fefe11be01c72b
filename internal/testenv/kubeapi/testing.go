package kubeapitest

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
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

// Shared is a kube-apiserver that the tests of one test binary share: it
// is started by the first Get (building the binary if needed) and stopped
// by Stop, which TestMain calls after m.Run.
type Shared struct {
	// Options are passed to Start. Without an EtcdEndpoint an embedded
	// etcd is started for the server; Dir is always a fresh directory.
	Options Options
	// Setup, if set, runs once after the server started (RBAC, objects
	// every test needs).
	Setup func(ctx context.Context, s *Server) error

	once sync.Once
	srv  *Server
	err  error
	dir  string
	etcd *etcdtest.Server
}

// Get returns the shared server, starting it on first use. Tests calling
// it are skipped in -short mode: the first run builds Kubernetes.
func (sh *Shared) Get(t testing.TB) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a kube-apiserver; skipped in -short mode")
	}
	sh.once.Do(func() { sh.err = sh.start() })
	if sh.err != nil {
		t.Fatalf("kube-apiserver: %v", sh.err)
	}
	return sh.srv
}

func (sh *Shared) start() error {
	ctx, cancel := context.WithTimeout(context.Background(), BuildTimeout)
	defer cancel()
	opts := sh.Options
	if opts.EtcdEndpoint == "" {
		e, err := etcdtest.Start(etcdtest.Options{})
		if err != nil {
			return err
		}
		sh.etcd = e
		opts.EtcdEndpoint = e.Endpoint
	}
	dir, err := os.MkdirTemp("", "coil-test-apiserver-")
	if err != nil {
		return err
	}
	sh.dir, opts.Dir = dir, dir
	if sh.srv, err = Start(ctx, opts); err != nil {
		return err
	}
	if sh.Setup != nil {
		return sh.Setup(ctx, sh.srv)
	}
	return nil
}

// Stop stops the server and its etcd and removes their files; it does
// nothing if the server was never started.
func (sh *Shared) Stop() {
	if sh.srv != nil {
		sh.srv.Stop()
	}
	if sh.etcd != nil {
		sh.etcd.Close()
	}
	if sh.dir != "" {
		os.RemoveAll(sh.dir)
	}
}
