// Package kubenodetest runs real Kubernetes nodes for the end-to-end
// suite: containerd, runc and a kubelet inside a network namespace the test
// made, each node with a mount namespace of its own so that nothing the
// kubelet or the runtime writes reaches the host. The binaries are built
// from their Go modules once per machine and cached, like the test
// kube-apiserver (internal/testenv/kubeapi).
package kubenodetest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	kubeapitest "github.com/coil-project/coil/internal/testenv/kubeapi"
)

// Versions of the container runtime the nodes run. Bumping one builds a
// new cache entry.
const (
	ContainerdVersion = "v2.4.2"
	RuncVersion       = "v1.5.3"
)

// RuntimeBinaries are the files EnsureRuntime puts in its directory.
var RuntimeBinaries = []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc"}

// EnsureRuntime returns the directory holding containerd, its runc shim,
// ctr and runc, building them with `go install` into the cache first if
// they are not there (about 4 minutes on two cores). runc is built with
// seccomp support, which needs libseccomp-dev (`make deps` installs it).
func EnsureRuntime(ctx context.Context) (string, error) {
	cache, err := kubeapitest.CacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, fmt.Sprintf("containerd-%s-runc-%s", ContainerdVersion, RuncVersion))
	if complete(dir) {
		return dir, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("create cache directory: %w", err)
	}
	unlock, err := kubeapitest.LockFile(ctx, dir+".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	if complete(dir) {
		return dir, nil
	}
	// The directory appears under its final name only when every binary is
	// in it, so an interrupted build is redone, never half used.
	tmp := fmt.Sprintf("%s.tmp-%d", dir, os.Getpid())
	os.RemoveAll(tmp)
	defer os.RemoveAll(tmp)
	start := time.Now()
	builds := []struct {
		env  []string
		tags string
		pkgs []string
	}{
		{
			// The tags leave out snapshotters that need C libraries or
			// kernel features the nodes do not use.
			tags: "urfave_cli_no_docs no_btrfs no_devmapper no_zfs",
			pkgs: []string{
				"github.com/containerd/containerd/v2/cmd/containerd@" + ContainerdVersion,
				"github.com/containerd/containerd/v2/cmd/ctr@" + ContainerdVersion,
			},
		},
		{
			// The shim is static, as upstream releases it.
			env:  []string{"CGO_ENABLED=0"},
			tags: "no_grpc",
			pkgs: []string{"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@" + ContainerdVersion},
		},
		{
			env:  []string{"CGO_ENABLED=1"},
			tags: "seccomp",
			pkgs: []string{"github.com/opencontainers/runc@" + RuncVersion},
		},
	}
	for _, b := range builds {
		args := append([]string{"install", "-trimpath", "-tags", b.tags}, b.pkgs...)
		cmd := exec.CommandContext(ctx, goCommand(), args...)
		// Outside any module: `go install pkg@version` uses the module's
		// own go.mod, and a go.work above must not interfere.
		cmd.Dir = os.TempDir()
		cmd.Env = append(append(os.Environ(), "GOBIN="+tmp, "GOWORK=off", "GOFLAGS="), b.env...)
		var out bytes.Buffer
		cmd.Stdout = &out
		cmd.Stderr = &out
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("build %v: %w\n%s", b.pkgs, err, tail(out.String(), 4000))
		}
	}
	if !complete(tmp) {
		return "", fmt.Errorf("container runtime build in %s is missing binaries (want %v)", tmp, RuntimeBinaries)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("install container runtime binaries: %w", err)
	}
	fmt.Fprintf(os.Stderr, "built %s in %s\n", dir, time.Since(start).Round(time.Second))
	return dir, nil
}

// complete reports whether dir holds every runtime binary.
func complete(dir string) bool {
	for _, b := range RuntimeBinaries {
		fi, err := os.Stat(filepath.Join(dir, b))
		if err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

func goCommand() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	// `go test` does not always put go on PATH for the test binary.
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
