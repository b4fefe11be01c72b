package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdServer is an etcd process started from the binary the tests use, on
// 127.0.0.1 with random ports and a data directory of its own.
type etcdServer struct {
	endpoint string
	dir      string
	cmd      *exec.Cmd
	logPath  string
	exited   chan struct{}
}

// startEtcd runs the etcd binary and waits until it answers. The process is
// killed by the returned stop function, which the caller registers with the
// cleanup stack; Pdeathsig also kills it should this program die.
func startEtcd(ctx context.Context, bin, parent, name string, cl *cleanups) (*etcdServer, error) {
	dir, err := os.MkdirTemp(parent, "etcd-"+name+"-")
	if err != nil {
		return nil, err
	}
	clientPort, err := freePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	cu := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	pu := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	s := &etcdServer{endpoint: cu, dir: dir, logPath: filepath.Join(dir, "etcd.log"), exited: make(chan struct{})}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	s.cmd = exec.Command(bin,
		"--name", name,
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", cu,
		"--advertise-client-urls", cu,
		"--listen-peer-urls", pu,
		"--initial-advertise-peer-urls", pu,
		"--initial-cluster", name+"="+pu,
		"--initial-cluster-state", "new",
		"--log-level", "warn",
		// The scale benchmark holds ~10^5 keys plus their history.
		"--quota-backend-bytes", fmt.Sprint(8<<30),
	)
	s.cmd.Stdout = logFile
	s.cmd.Stderr = logFile
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		s.cmd.Wait()
		close(s.exited)
	}()
	cl.add("stop etcd "+name, s.stop)

	cli, err := s.client()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = cli.Status(sctx, s.endpoint)
		cancel()
		if err == nil {
			return s, nil
		}
		select {
		case <-s.exited:
			return nil, fmt.Errorf("etcd exited at start-up:\n%s", s.tail())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("etcd did not answer within 30s: %v\n%s", err, s.tail())
		}
	}
}

func (s *etcdServer) pid() int { return s.cmd.Process.Pid }

func (s *etcdServer) stop() error {
	select {
	case <-s.exited:
	default:
		s.cmd.Process.Kill()
		<-s.exited
	}
	return os.RemoveAll(s.dir)
}

// tail is the end of etcd's log, for error messages.
func (s *etcdServer) tail() string {
	data, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// client returns a new client of the server. Each call dials anew, so two
// clients do not share a connection.
func (s *etcdServer) client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{s.endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
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
	st, err := cli.Status(ctx, s.endpoint)
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

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
