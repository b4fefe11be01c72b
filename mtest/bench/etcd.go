package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
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

// sentBytes is what etcd has sent to its gRPC clients since it started,
// read from its Prometheus metrics on the client URL.
func (s *etcdServer) sentBytes(ctx context.Context) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Endpoint+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("read etcd metrics: %w", err)
	}
	defer resp.Body.Close()
	const name = "etcd_network_client_grpc_sent_bytes_total"
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return 0, fmt.Errorf("etcd metric %s: %w", name, err)
			}
			return int64(f), nil
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read etcd metrics: %w", err)
	}
	return 0, fmt.Errorf("etcd metrics lack %s", name)
}
