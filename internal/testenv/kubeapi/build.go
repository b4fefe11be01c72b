// Package kubeapitest gives tests a real kube-apiserver, built once per
// machine from the separate module mtest/kube-apiserver (which keeps
// k8s.io/kubernetes out of Coil's go.mod) and run on an etcd the test owns.
package kubeapitest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// CacheDirEnv names the environment variable that chooses where built
// binaries are kept. The Makefile exports it; the default is
// $HOME/.cache/coil.
const CacheDirEnv = "COIL_CACHE_DIR"

// ErrSourceNotFound means the mtest/kube-apiserver module could not be
// located next to this package's source, e.g. in a binary built with
// -trimpath and run away from the checkout.
var ErrSourceNotFound = errors.New("mtest/kube-apiserver source not found")

// SourceDir returns the directory of the mtest/kube-apiserver module,
// found relative to this file (internal/testenv/kubeapi) so that tests in
// any package can build it.
func SourceDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("%w: runtime.Caller failed", ErrSourceNotFound)
	}
	dir := filepath.Join(filepath.Dir(file), "..", "..", "..", "mtest", "kube-apiserver")
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("%w: %v", ErrSourceNotFound, err)
	}
	return dir, nil
}

// Version returns the k8s.io/kubernetes version the module in dir pins; it
// names the cached binary, so bumping the pin builds a new one.
func Version(dir string) (string, error) {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return "", fmt.Errorf("read kube-apiserver go.mod: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		// Both "require k8s.io/kubernetes vX" and a line inside a require block.
		if len(fields) >= 2 && fields[0] == "require" {
			fields = fields[1:]
		}
		if len(fields) >= 2 && fields[0] == "k8s.io/kubernetes" {
			return fields[1], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read kube-apiserver go.mod: %w", err)
	}
	return "", fmt.Errorf("kube-apiserver go.mod does not require k8s.io/kubernetes")
}

// CacheDir returns $COIL_CACHE_DIR, or $HOME/.cache/coil when it is unset.
func CacheDir() (string, error) {
	if d := os.Getenv(CacheDirEnv); d != "" {
		return d, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("locate cache directory: %w", err)
	}
	return filepath.Join(home, ".cache", "coil"), nil
}

// Ensure returns the path of the kube-apiserver binary, building it first
// if the cache does not hold it yet. The first build takes minutes (it
// compiles Kubernetes); later calls return at once.
func Ensure(ctx context.Context) (string, error) {
	return EnsureComponent(ctx, "kube-apiserver")
}

// Components are the Kubernetes programs EnsureComponent builds: the API
// server, and what the real-node clusters of mtest run beside it.
var Components = []string{"kube-apiserver", "kubelet", "kube-scheduler", "kube-controller-manager", "kubectl"}

// EnsureComponent returns the path of one of Components at the version the
// mtest/kube-apiserver module pins, building it into the cache first if
// it is not there. kube-apiserver is the module's own main package (with
// the JSON log format registered); the others are the stock commands of
// k8s.io/kubernetes, named as tools in that module's go.mod so that its
// go.sum covers them.
//
// Parallel callers (test binaries of several packages run at the same
// time) serialise on a lock file, and the binary appears under its final
// name only once it is complete, so nobody runs a half-written file.
func EnsureComponent(ctx context.Context, name string) (string, error) {
	pkg := ""
	for _, c := range Components {
		if c == name {
			pkg = "k8s.io/kubernetes/cmd/" + name
		}
	}
	if pkg == "" {
		return "", fmt.Errorf("unknown Kubernetes component %q (known: %s)", name, strings.Join(Components, ", "))
	}
	if name == "kube-apiserver" {
		pkg = "."
	}
	src, err := SourceDir()
	if err != nil {
		return "", err
	}
	version, err := Version(src)
	if err != nil {
		return "", err
	}
	cache, err := CacheDir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(cache, name+"-"+version)
	if isExecutable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("create cache directory: %w", err)
	}
	unlock, err := LockFile(ctx, bin+".lock")
	if err != nil {
		return "", err
	}
	defer unlock()
	// Another process may have finished the build while we waited.
	if isExecutable(bin) {
		return bin, nil
	}
	// Holding the lock, no build is running: leftovers of a build that
	// was killed can go.
	if stale, _ := filepath.Glob(bin + ".tmp-*"); len(stale) > 0 {
		for _, f := range stale {
			os.Remove(f)
		}
	}
	if err := build(ctx, src, pkg, name, bin); err != nil {
		return "", err
	}
	return bin, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// build compiles pkg of the module in src into a temporary file beside dst
// and renames it into place.
func build(ctx context.Context, src, pkg, name, dst string) error {
	tmp := fmt.Sprintf("%s.tmp-%d", dst, os.Getpid())
	defer os.Remove(tmp)
	goCmd, err := exec.LookPath("go")
	if err != nil {
		// `go test` does not always put go on PATH for the test binary.
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	// -buildvcs=false: the binary needs no VCS stamp, and stamping fails
	// where git is missing or the checkout belongs to another user.
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-buildvcs=false", "-o", tmp, pkg)
	cmd.Dir = src
	// A go.work above the checkout must not pull this module into it.
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build %s in %s: %w\n%s", name, src, err, tail(out.String(), 4000))
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("install %s binary: %w", name, err)
	}
	fmt.Fprintf(os.Stderr, "built %s in %s\n", dst, time.Since(start).Round(time.Second))
	return nil
}

// LockFile takes an exclusive flock on path, polling so that ctx can
// cancel the wait (a blocking flock cannot be interrupted). The lock dies
// with the process, so a crashed build never leaves it stuck.
func LockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open build lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() {
				syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for the lock %s: %w", path, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
