// Package nodetest plays one Kubernetes node for integration tests: a
// network namespace with coild running in-process for it, and pods wired by
// the real coil plugin binary chained with reference plugins, driven
// through libcni or cnitool exactly as a container runtime would.
package nodetest

import (
	"errors"
	"fmt"
	"github.com/coil-project/coil/internal/testenv"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
)

// Env is what the nodes of one test binary share: an embedded etcd and a
// CNI bin directory. Building the plugin once per binary, not per node,
// keeps the tests fast.
type Env struct {
	// Etcd is where nodes store unless Options.Etcd says otherwise.
	Etcd *etcdtest.Server
	// BinDir holds the coil plugin built from this tree and the reference
	// plugins and cnitool, as /opt/cni/bin does on a node.
	BinDir string

	dir string
}

// ReferenceTools are what nodes need from CNI_BIN_DIR.
var ReferenceTools = []string{"cnitool", "tuning", "portmap"}

// StartEnv checks that the machine can run nodes (root, nft), builds the
// coil plugin, links the reference tools and starts etcd. Close it after
// the tests.
func StartEnv() (*Env, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("nodes are network namespaces and need root")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, errors.New("the portmap plugin (nftables backend) needs the nft command: install the Debian package nftables")
	}
	dir, err := os.MkdirTemp("", "coil-nodetest-")
	if err != nil {
		return nil, err
	}
	e := &Env{dir: dir, BinDir: filepath.Join(dir, "bin")}
	if err := prepareBinDir(e.BinDir); err != nil {
		e.Close()
		return nil, err
	}
	if e.Etcd, err = etcdtest.Start(etcdtest.Options{}); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// Close stops etcd and removes the bin directory.
func (e *Env) Close() {
	if e.Etcd != nil {
		e.Etcd.Close()
	}
	os.RemoveAll(e.dir)
}

// Main starts an Env for a test binary, hands it to set, runs the tests
// and closes the Env. It returns the exit code; name prefixes the error
// when the Env cannot start:
//
//	func TestMain(m *testing.M) {
//		os.Exit(nodetest.Main(m, "coild/daemon tests", func(e *nodetest.Env) { env = e }))
//	}
func Main(m *testing.M, name string, set func(*Env)) int {
	e, err := StartEnv()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 1
	}
	defer e.Close()
	set(e)
	return m.Run()
}

// prepareBinDir builds the coil plugin into dir and links the reference
// CNI tools next to it.
func prepareBinDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := testenv.ModuleRoot()
	if err != nil {
		return err
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		gobin = "go"
	}
	build := exec.Command(gobin, "build", "-o", filepath.Join(dir, "coil"), "./coil")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build the coil plugin: %v\n%s", err, out)
	}

	cniBin := os.Getenv("CNI_BIN_DIR")
	if cniBin == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return fmt.Errorf("CNI_BIN_DIR is not set and there is no home directory: %w", err)
		}
		cniBin = filepath.Join(home, ".cache", "coil", "cni-v1.3.1-plugins-v1.9.1-static")
	}
	for _, tool := range ReferenceTools {
		src := filepath.Join(cniBin, tool)
		if _, err := os.Stat(src); err != nil {
			return fmt.Errorf("reference CNI tool %s missing in %s (CNI_BIN_DIR): run `make cni-tools` first", tool, cniBin)
		}
		if err := os.Symlink(src, filepath.Join(dir, tool)); err != nil {
			return err
		}
	}
	return nil
}
