package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// compilePause builds the pause binary as `make image` does.
func compilePause(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := (Compiler{Root: root, Arch: runtime.GOARCH}).Pause(ctx, dir); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, filepath.FromSlash(PauseFile().Src))
}

// exit is the outcome of a process: err is set when done is closed.
type exit struct {
	done chan struct{}
	err  error
}

// startPause starts bin, in a new PID namespace (as its PID 1) if newPID.
func startPause(t *testing.T, bin string, newPID bool) (*exec.Cmd, *exit) {
	t.Helper()
	cmd := exec.Command(bin)
	if newPID {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e := &exit{done: make(chan struct{})}
	go func() {
		e.err = cmd.Wait()
		close(e.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-e.done
	})
	// Let it install its signal handlers: a signal before that would
	// kill it by default (or be ignored, as PID 1).
	time.Sleep(200 * time.Millisecond)
	return cmd, e
}

func waitExit(t *testing.T, e *exit, what string) {
	t.Helper()
	select {
	case <-e.done:
		if e.err != nil {
			t.Errorf("%s: %v, want exit status 0", what, e.err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("%s: still running after 5s", what)
	}
}

// TestPause: the pause binary keeps running, and exits 0 on SIGTERM and on
// SIGINT; as PID 1 of its own PID namespace too (where signals without a
// handler are ignored), and there it reaps the orphans reparented to it.
func TestPause(t *testing.T) {
	bin := compilePause(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd, done := startPause(t, bin, false)
		select {
		case <-done.done:
			t.Fatalf("pause exited by itself: %v", done.err)
		case <-time.After(300 * time.Millisecond):
		}
		cmd.Process.Signal(sig)
		waitExit(t, done, sig.String())
	}

	if os.Geteuid() != 0 {
		t.Skip("a new PID namespace needs root")
	}
	cmd, done := startPause(t, bin, true)
	pid := cmd.Process.Pid
	// An orphan: sh starts sleep in the background and exits, so sleep is
	// reparented to the namespace's PID 1, which must reap it once it ends.
	out, err := exec.Command("nsenter", "--target", strconv.Itoa(pid), "--pid", "--", "sh", "-c", "sleep 2 </dev/null >/dev/null 2>&1 & exit 0").CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter: %v: %s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	if kids := children(t, pid); len(kids) != 1 || kids[0] != "S" {
		t.Fatalf("children of pause: states %v, want the sleeping orphan", kids)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(children(t, pid)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("children of pause: states %v after the orphan ended, want it reaped", children(t, pid))
		}
		time.Sleep(100 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	waitExit(t, done, "SIGTERM to PID 1")
}

// children returns the states (R, S, Z...) of the processes whose parent is
// pid.
func children(t *testing.T, pid int) []string {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, f := range stats {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(data)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			states = append(states, fields[0])
		}
	}
	return states
}
