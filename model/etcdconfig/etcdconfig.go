// Package etcdconfig holds the etcd connection flags that coild,
// coil-controller and coilctl share, and turns them into a client.
package etcdconfig

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// DefaultPrefix is the key prefix used when --etcd-prefix is not given.
const DefaultPrefix = "/coil/"

// Config describes how to reach etcd.
type Config struct {
	Endpoints []string
	Prefix    string
	TLSCA     string
	TLSCert   string
	TLSKey    string
	Username  string
	Password  string
	// Timeout bounds dialling and each request issued through RequestContext.
	Timeout time.Duration
}

// AddFlags registers the --etcd-* flags on fs, storing into c.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	fs.StringSliceVar(&c.Endpoints, "etcd-endpoints", []string{"http://127.0.0.1:2379"}, "comma-separated etcd client URLs")
	fs.StringVar(&c.Prefix, "etcd-prefix", DefaultPrefix, "key prefix of Coil's data in etcd")
	fs.StringVar(&c.TLSCA, "etcd-tls-ca", "", "CA certificate file to verify etcd servers")
	fs.StringVar(&c.TLSCert, "etcd-tls-cert", "", "client certificate file for etcd")
	fs.StringVar(&c.TLSKey, "etcd-tls-key", "", "client private key file for etcd")
	fs.StringVar(&c.Username, "etcd-username", "", "etcd user name")
	fs.StringVar(&c.Password, "etcd-password", "", "etcd password")
	fs.DurationVar(&c.Timeout, "etcd-timeout", 5*time.Second, "etcd dial and request timeout")
}

// ApplyEnv sets every flag of fs that was not given on the command line
// from the environment variable envPrefix + "_" + NAME, where NAME is the
// flag name upper-cased with dashes turned into underscores
// (--etcd-endpoints with prefix COILCTL reads COILCTL_ETCD_ENDPOINTS).
func ApplyEnv(fs *pflag.FlagSet, envPrefix string) error {
	var firstErr error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || firstErr != nil {
			return
		}
		name := envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			firstErr = fmt.Errorf("environment variable %s: %w", name, err)
		}
	})
	return firstErr
}

// Validate reports configuration mistakes before any dial is attempted.
func (c *Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return fmt.Errorf("no etcd endpoints given")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return fmt.Errorf("--etcd-tls-cert and --etcd-tls-key must be given together")
	}
	if !strings.HasPrefix(c.Prefix, "/") || !strings.HasSuffix(c.Prefix, "/") {
		return fmt.Errorf("--etcd-prefix %q must start and end with '/'", c.Prefix)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("--etcd-timeout must be positive")
	}
	return nil
}

// NewClient dials etcd. The connection is established lazily by the client
// library, so an unreachable etcd surfaces on the first request.
func (c *Config) NewClient() (*clientv3.Client, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cfg := clientv3.Config{
		Endpoints:   c.Endpoints,
		DialTimeout: c.Timeout,
		Username:    c.Username,
		Password:    c.Password,
		Logger:      zap.NewNop(),
		// Keepalives let a client notice a dead member and move on to the next endpoint.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: c.Timeout,
	}
	if c.TLSCA != "" || c.TLSCert != "" {
		info := transport.TLSInfo{
			CertFile:      c.TLSCert,
			KeyFile:       c.TLSKey,
			TrustedCAFile: c.TLSCA,
		}
		tc, err := info.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd TLS configuration: %w", err)
		}
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", c.Endpoints, err)
	}
	return cli, nil
}

// RequestContext bounds one etcd operation by the configured timeout.
func (c *Config) RequestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.Timeout)
}
