// Package testenv holds the small helpers every test harness of Coil needs,
// so that waiting and port picking behave the same in every package. The
// harnesses themselves live in its subdirectories: etcd, netns, kubeapi,
// node and fakecoild.
package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PollInterval is how often Eventually re-checks: short enough that a test
// does not idle long after the condition holds, long enough not to load an
// etcd or API server that the code under test is using too.
const PollInterval = 50 * time.Millisecond

// Condition is what Eventually waits for. A func() error holds when it
// returns nil, and its last error explains a timeout; a func() bool, for
// states with nothing to explain, holds when it returns true.
type Condition interface {
	func() error | func() bool
}

// Eventually checks cond until it holds and fails the test (t.Fatalf) if it
// still does not after timeout; what names the awaited state in the
// message. cond is checked at least once, and once more after the deadline,
// so a slow check never times out unseen.
func Eventually[C Condition](t testing.TB, timeout time.Duration, what string, cond C) {
	t.Helper()
	check := func() error {
		switch c := any(cond).(type) {
		case func() error:
			return c()
		case func() bool:
			if !c() {
				return errNotYet
			}
		}
		return nil
	}
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			if err == errNotYet {
				t.Fatalf("timed out after %s waiting for %s", timeout, what)
			}
			t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(PollInterval)
	}
}

var errNotYet = fmt.Errorf("condition not met")

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. The
// port is released before the caller binds it, so another process may take
// it first; callers that cannot tolerate that retry on "address in use".
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ModuleRoot finds the directory of go.mod above the working directory:
// go test runs a test in its package's directory, somewhere inside the
// module, and the bench runs from the module root or below.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory: run from inside the Coil module")
		}
		dir = parent
	}
}
