package testenv

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder stands in for a test that Eventually fails, so the failure can
// be checked without failing this test.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.mu.Lock()
	r.failed = fmt.Sprintf(format, args...)
	r.mu.Unlock()
	// As testing.T does: the caller's goroutine ends here.
	runtime.Goexit()
}

// eventuallyIn runs f against a recorder on a goroutine of its own, since
// a failing Eventually ends the goroutine it runs on.
func eventuallyIn(t *testing.T, f func(tb testing.TB)) string {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func TestEventually(t *testing.T) {
	calls := 0
	msg := eventuallyIn(t, func(tb testing.TB) {
		Eventually(tb, 5*time.Second, "third call", func() bool { calls++; return calls == 3 })
	})
	if msg != "" || calls != 3 {
		t.Errorf("bool condition: %d calls, failure %q; want 3 calls and no failure", calls, msg)
	}

	msg = eventuallyIn(t, func(tb testing.TB) {
		Eventually(tb, 100*time.Millisecond, "the impossible", func() error { return errors.New("still broken") })
	})
	if !strings.Contains(msg, "the impossible") || !strings.Contains(msg, "still broken") {
		t.Errorf("error condition failure = %q, want the state and the last error", msg)
	}

	calls = 0
	msg = eventuallyIn(t, func(tb testing.TB) {
		Eventually(tb, 0, "nothing", func() bool { calls++; return false })
	})
	if calls == 0 || !strings.Contains(msg, "nothing") {
		t.Errorf("zero timeout: %d calls, failure %q; want at least one call and a failure", calls, msg)
	}
}

func TestFreePort(t *testing.T) {
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("port %d from FreePort cannot be bound: %v", port, err)
	}
	l.Close()
}
