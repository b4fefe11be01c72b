package cmd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// maxProbeTime bounds the diagnosis that follows an etcd timeout, so that a
// black-holed endpoint costs at most this much on top of --etcd-timeout.
const maxProbeTime = time.Second

// diagnose finds out why etcd did not answer. The etcd client retries a
// failed connection until the request deadline and then reports only
// "context deadline exceeded", which tells an operator nothing; one direct
// TCP dial and TLS handshake per endpoint, made the way the client makes
// them, shows the real cause (connection refused, certificate required,
// unknown authority). It returns "" when every endpoint accepted the
// connection, i.e. when the cause is elsewhere.
func (o *rootOptions) diagnose() string {
	tlsConf, err := o.probeTLSConfig()
	if err != nil {
		return err.Error()
	}
	budget := min(o.etcd.Timeout, maxProbeTime)
	msgs := make([]string, len(o.etcd.Endpoints))
	var wg sync.WaitGroup
	for i, ep := range o.etcd.Endpoints {
		wg.Go(func() {
			msgs[i] = probeEndpoint(ep, tlsConf, budget)
			if msgs[i] != "" && len(o.etcd.Endpoints) > 1 {
				msgs[i] = ep + ": " + msgs[i]
			}
		})
	}
	wg.Wait()
	var found []string
	for _, m := range msgs {
		if m != "" {
			found = append(found, m)
		}
	}
	return strings.Join(found, "; ")
}

// probeTLSConfig builds the client TLS configuration the way
// etcdconfig.Config.NewClient does, or nil when no TLS flag is given.
func (o *rootOptions) probeTLSConfig() (*tls.Config, error) {
	c := o.etcd
	if c.TLSCA == "" && c.TLSCert == "" {
		return nil, nil
	}
	info := transport.TLSInfo{CertFile: c.TLSCert, KeyFile: c.TLSKey, TrustedCAFile: c.TLSCA}
	tc, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd TLS configuration: %w", err)
	}
	return tc, nil
}

// probeEndpoint connects to one endpoint and returns what went wrong, or
// "" if the connection (and TLS handshake, for https) succeeded.
func probeEndpoint(endpoint string, tlsConf *tls.Config, budget time.Duration) string {
	useTLS := tlsConf != nil
	host := endpoint
	if strings.Contains(endpoint, "://") {
		u, err := url.Parse(endpoint)
		if err != nil {
			return fmt.Sprintf("not a URL: %v", err)
		}
		switch u.Scheme {
		case "https":
			useTLS = true
		case "http":
			useTLS = false
		default:
			// unix sockets and the like: leave them to the client's error.
			return ""
		}
		host = u.Host
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Sprintf("no TCP connection within %s", budget)
		}
		return err.Error()
	}
	defer conn.Close()
	if !useTLS {
		return ""
	}
	conf := &tls.Config{}
	if tlsConf != nil {
		conf = tlsConf.Clone()
	}
	if conf.ServerName == "" {
		if h, _, err := net.SplitHostPort(host); err == nil {
			conf.ServerName = h
		}
	}
	tc := tls.Client(conn, conf)
	deadline, _ := ctx.Deadline()
	tc.SetDeadline(deadline)
	if err := tc.HandshakeContext(ctx); err != nil {
		return "TLS handshake failed: " + err.Error() + tlsHint(err)
	}
	// In TLS 1.3 the server checks the client certificate after the
	// client considers the handshake done, and reports a missing one in
	// an alert on the first read. A server that accepted us sends nothing
	// until we speak, so the read simply times out.
	tc.SetReadDeadline(time.Now().Add(min(budget/2, 200*time.Millisecond)))
	if _, err := tc.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return "TLS handshake failed: " + err.Error() + tlsHint(err)
	}
	return ""
}

// tlsHint names the flag that most likely fixes a TLS failure.
func tlsHint(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "certificate required"), strings.Contains(msg, "bad certificate"):
		return " (etcd requires a client certificate: give --etcd-tls-cert and --etcd-tls-key)"
	case strings.Contains(msg, "unknown authority"), strings.Contains(msg, "not trusted"):
		return " (give the CA that signed etcd's certificate with --etcd-tls-ca)"
	default:
		return ""
	}
}
