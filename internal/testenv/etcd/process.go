package etcdtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Process is an etcd run from its binary, for measurements: an embedded
// server would share CPU and garbage collector with the code measured, and
// its CPU time could not be told apart.
type Process struct {
	// Endpoint is the client URL (http://127.0.0.1:port).
	Endpoint string
	// LogFile receives the server's output.
	LogFile string

	dir    string
	cmd    *exec.Cmd
	exited chan struct{}
}

// ProcessOptions configure StartProcess.
type ProcessOptions struct {
	// Binary is the etcd to run. Required.
	Binary string
	// Name is the member name; it also names the data directory.
	Name string
	// Dir is where the data directory is created; empty means the
	// system's temporary directory.
	Dir string
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
	// ReadyTimeout bounds the wait for the first answer (default 30s).
	ReadyTimeout time.Duration
}

// StartProcess runs etcd on 127.0.0.1 with random ports and a fresh data
// directory, and waits until it answers. Call Stop, also on failure of the
// caller; Pdeathsig kills the process should the caller die first.
func StartProcess(ctx context.Context, opts ProcessOptions) (*Process, error) {
	if opts.Binary == "" {
		return nil, fmt.Errorf("etcdtest.StartProcess: Binary is required")
	}
	if opts.Name == "" {
		opts.Name = "test"
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 30 * time.Second
	}
	dir, err := os.MkdirTemp(opts.Dir, "etcd-"+opts.Name+"-")
	if err != nil {
		return nil, err
	}
	clientPort, err := testenv.FreePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	peerPort, err := testenv.FreePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cu := fmt.Sprintf("http://127.0.0.1:%d", clientPort)
	pu := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	p := &Process{Endpoint: cu, LogFile: filepath.Join(dir, "etcd.log"), dir: dir, exited: make(chan struct{})}
	logFile, err := os.Create(p.LogFile)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	defer logFile.Close() // the child holds its own descriptor
	args := []string{
		"--name", opts.Name,
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", cu,
		"--advertise-client-urls", cu,
		"--listen-peer-urls", pu,
		"--initial-advertise-peer-urls", pu,
		"--initial-cluster", opts.Name + "=" + pu,
		"--initial-cluster-state", "new",
		"--log-level", "warn",
	}
	p.cmd = exec.Command(opts.Binary, append(args, opts.ExtraArgs...)...)
	p.cmd.Stdout = logFile
	p.cmd.Stderr = logFile
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start %s: %w", opts.Binary, err)
	}
	go func() {
		p.cmd.Wait()
		close(p.exited)
	}()
	if err := p.waitReady(ctx, opts.ReadyTimeout); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

func (p *Process) waitReady(ctx context.Context, timeout time.Duration) error {
	cli, err := p.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(timeout)
	for {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = cli.Status(sctx, p.Endpoint)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("etcd exited at start-up:\n%s", p.LogTail())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd did not answer within %s: %v\n%s", timeout, err, p.LogTail())
		}
	}
}

// PID is the process id of the server, for CPU accounting.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Stop kills the server, waits for it and removes its data. It is safe to
// call more than once.
func (p *Process) Stop() error {
	select {
	case <-p.exited:
	default:
		p.cmd.Process.Kill()
		<-p.exited
	}
	return os.RemoveAll(p.dir)
}

// LogTail is the end of the server's log, for error messages.
func (p *Process) LogTail() string {
	data, _ := os.ReadFile(p.LogFile)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// Client returns a new client of the server. Each call dials anew, so two
// clients do not share a connection. The caller closes it.
func (p *Process) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   []string{p.Endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}
