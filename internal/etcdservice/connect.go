package etcdservice

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/coil-project/coil/model/etcdconfig"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/client-go/kubernetes"
)

// Connect dials etcd as cfg says. When cfg.Endpoints is a Service
// (@NAMESPACE/NAME), it resolves it through kube first, waiting up to
// four --etcd-timeout for a ready endpoint, and then keeps the client's
// endpoints in step with the Service until ctx ends or stop is called.
// stop also waits for the follower to end; the caller calls it, then
// closes the client. With URLs, kube is not used.
func Connect(ctx context.Context, cfg etcdconfig.Config, kube kubernetes.Interface, log *slog.Logger) (cli *clientv3.Client, stop func(), err error) {
	ref, ok, err := Parse(cfg.Endpoints)
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		cli, err := cfg.NewClient()
		return cli, func() {}, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, nil, err
	}
	scheme := "http"
	if cfg.TLSCA != "" || cfg.TLSCert != "" {
		scheme = "https"
	}
	// The client exists only once the first list is known; the updates
	// that come before wait for it.
	ready := make(chan *clientv3.Client, 1)
	fctx, cancel := context.WithCancel(ctx)
	var client *clientv3.Client
	initial, done, err := NewFollower(kube, ref, scheme, log).Run(fctx, 4*cfg.Timeout, func(urls []string) {
		if client == nil {
			select {
			case client = <-ready:
			case <-fctx.Done():
				return
			}
		}
		client.SetEndpoints(urls...)
	})
	if err != nil {
		cancel()
		return nil, nil, err
	}
	cfg.Endpoints = initial
	if cli, err = cfg.NewClient(); err != nil {
		cancel()
		<-done
		return nil, nil, fmt.Errorf("etcd Service %s: %w", ref, err)
	}
	ready <- cli
	return cli, func() { cancel(); <-done }, nil
}
