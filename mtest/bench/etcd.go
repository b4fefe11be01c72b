package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
)

// etcdServer is an etcd process started from the binary the tests use,
// through the tests' harness.
type etcdServer struct{ *etcdtest.Process }

// startEtcd runs the etcd binary and waits until it answers. Its Stop is
// registered with the cleanup stack.
func startEtcd(ctx context.Context, bin, parent, name string, cl *cleanups) (*etcdServer, error) {
	p, err := etcdtest.StartProcess(ctx, etcdtest.ProcessOptions{
		Binary: bin,
		Name:   name,
		Dir:    parent,
		// The scale benchmark holds ~10^5 keys plus their history.
		ExtraArgs: []string{"--quota-backend-bytes", fmt.Sprint(8 << 30)},
	})
	if err != nil {
		return nil, err
	}
	cl.add("stop etcd "+name, p.Stop)
	return &etcdServer{p}, nil
}

// etcdStatus is what the benchmark reports of the server's state.
type etcdStatus struct {
	version     string
	dbSize      int64
	dbSizeInUse int64
	keys        int64
	revision    int64
}

func (s *etcdServer) status(ctx context.Context, cli *clientv3.Client) (etcdStatus, error) {
	st, err := cli.Status(ctx, s.Endpoint)
	if err != nil {
		return etcdStatus{}, err
	}
	resp, err := cli.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil {
		return etcdStatus{}, err
	}
	return etcdStatus{
		version:     st.Version,
		dbSize:      st.DbSize,
		dbSizeInUse: st.DbSizeInUse,
		keys:        resp.Count,
		revision:    resp.Header.Revision,
	}, nil
}

// compact drops the history up to now, so one phase's garbage does not
// weigh on the next.
func compact(ctx context.Context, cli *clientv3.Client) error {
	resp, err := cli.Get(ctx, "\x00", clientv3.WithFromKey(), clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, context.Canceled) {
		// Compacting the current revision twice is harmless.
		if !strings.Contains(err.Error(), "compacted") {
			return err
		}
	}
	return nil
}
