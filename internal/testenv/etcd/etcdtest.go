// Package etcdtest runs a real etcd server inside the test process, so that
// model and daemon tests exercise the same transactions production does.
// StartProcess runs the etcd binary instead, for the bench, which must not
// share its CPU with the server it measures.
package etcdtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Server is an embedded single-member etcd cluster.
type Server struct {
	etcd *embed.Etcd
	// Endpoint is the client URL (http:// or https://).
	Endpoint string
	// Certs is set when the server requires TLS client certificates.
	Certs *Certs
	dir   string
}

// Options tune the embedded server.
type Options struct {
	// TLS makes the server accept only clients presenting a certificate
	// signed by a test CA, which Server.Certs then describes.
	TLS bool
	// Host is the IP address the server listens on; 127.0.0.1 when empty.
	Host string
}

// Start launches an embedded etcd in a temporary directory. Stop it with Close.
func Start(opts Options) (*Server, error) {
	dir, err := os.MkdirTemp("", "coil-etcd-")
	if err != nil {
		return nil, err
	}
	s := &Server{dir: dir}
	if err := s.start(opts); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

func (s *Server) start(opts Options) error {
	clientPort, err := testenv.FreePort()
	if err != nil {
		return err
	}
	peerPort, err := testenv.FreePort()
	if err != nil {
		return err
	}
	scheme := "http"
	cfg := embed.NewConfig()
	cfg.Name = "test"
	cfg.Dir = filepath.Join(s.dir, "data")
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	if opts.TLS {
		certs, err := GenerateCerts(filepath.Join(s.dir, "pki"))
		if err != nil {
			return err
		}
		s.Certs = certs
		scheme = "https"
		cfg.ClientTLSInfo = transport.TLSInfo{
			CertFile:       certs.ServerCert,
			KeyFile:        certs.ServerKey,
			TrustedCAFile:  certs.CA,
			ClientCertAuth: true,
		}
	}
	host := opts.Host
	if host == "" {
		host = "127.0.0.1"
	}
	cu, _ := url.Parse(fmt.Sprintf("%s://%s:%d", scheme, host, clientPort))
	pu, _ := url.Parse(fmt.Sprintf("http://%s:%d", host, peerPort))
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return fmt.Errorf("embedded etcd did not become ready")
	}
	s.etcd = e
	s.Endpoint = cu.String()
	return nil
}

// Close stops the server and removes its data.
func (s *Server) Close() {
	if s.etcd != nil {
		s.etcd.Close()
	}
	os.RemoveAll(s.dir)
}

// Client returns a client connected to the server, closed when t ends.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cfg := clientv3.Config{
		Endpoints:   []string{s.Endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if s.Certs != nil {
		tlsInfo := transport.TLSInfo{
			CertFile:      s.Certs.ClientCert,
			KeyFile:       s.Certs.ClientKey,
			TrustedCAFile: s.Certs.CA,
		}
		tc, err := tlsInfo.ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

var prefixSeq atomic.Int64

// Prefix returns a key prefix unique to this call, so tests (and repeated
// runs of one test) can share one server without seeing each other's keys.
func Prefix(t testing.TB) string {
	return fmt.Sprintf("/test/%s/%d/", t.Name(), prefixSeq.Add(1))
}

// WipePrefix deletes everything under prefix.
func WipePrefix(ctx context.Context, cli *clientv3.Client, prefix string) error {
	_, err := cli.Delete(ctx, prefix, clientv3.WithPrefix())
	return err
}

// Main starts a server shared by a test binary's tests, hands it to set,
// runs the tests and stops the server. It returns the exit code:
//
//	func TestMain(m *testing.M) {
//		os.Exit(etcdtest.Main(m, func(s *etcdtest.Server) { server = s }))
//	}
func Main(m *testing.M, set func(*Server)) int {
	s, err := Start(Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	set(s)
	return m.Run()
}
