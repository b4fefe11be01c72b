package etcdtest

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestProcess runs the etcd binary the bench measures, when the Makefile's
// ETCD_BIN_DIR names one, and checks what the bench relies on: a client
// reaches it, PID is the server, Stop ends it and removes its data.
func TestProcess(t *testing.T) {
	dir := os.Getenv("ETCD_BIN_DIR")
	if dir == "" {
		t.Skip("ETCD_BIN_DIR is not set (make etcd-tools builds the binary)")
	}
	parent := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := StartProcess(ctx, ProcessOptions{Binary: filepath.Join(dir, "etcd"), Name: "t", Dir: parent})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	cli, err := p.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	pid := p.PID()
	if err := p.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("etcd (pid %d) still running after Stop", pid)
	}
	if left, _ := os.ReadDir(parent); len(left) != 0 {
		t.Errorf("Stop left %d entries in the data directory's parent", len(left))
	}
	if err := p.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}
