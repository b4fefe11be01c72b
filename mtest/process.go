package mtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// process is a daemon the suite runs inside a network namespace.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	err     error
	once    sync.Once
}

// start runs a daemon of the cluster, detached if the cluster is.
func (c *Cluster) start(netns, name string, env []string, bin string, args ...string) (*process, error) {
	p, err := spawn(c.opts.Detached, c.Dir, netns, name, env, bin, args...)
	if err == nil {
		c.mu.Lock()
		c.pids = append(c.pids, p.cmd.Process.Pid)
		c.mu.Unlock()
	}
	return p, err
}

// spawn runs bin with args inside netns (ip netns exec), logging to
// dir/name.log. The child dies with the test process (Pdeathsig), so a
// crashed test leaves no daemon behind; a detached one outlives the caller
// (the demo).
func spawn(detached bool, dir, netns, name string, env []string, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	full := append([]string{"netns", "exec", netns, bin}, args...)
	cmd := exec.Command("ip", full...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if detached {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		// Owned by the process: stop waits on exited.
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// running reports whether the process has not exited.
func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// signal sends sig to the process group.
func (p *process) signal(sig syscall.Signal) {
	if p.running() {
		syscall.Kill(-p.cmd.Process.Pid, sig)
	}
}

// stop terminates the process (SIGTERM, SIGKILL after a grace) and waits.
func (p *process) stop() {
	p.once.Do(func() {
		p.signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(10 * time.Second):
			p.signal(syscall.SIGKILL)
			<-p.exited
		}
	})
}

// kill sends SIGKILL and waits: a crash, not a shutdown.
func (p *process) kill() {
	p.once.Do(func() {
		p.signal(syscall.SIGKILL)
		<-p.exited
	})
}

// logTail returns the end of the process's log for error messages.
func (p *process) logTail() string {
	data, _ := os.ReadFile(p.logPath)
	if len(data) > 3000 {
		data = data[len(data)-3000:]
	}
	return string(data)
}

// run executes a command and returns its stdout; stderr goes into the error.
func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// runIn executes a command inside a network namespace.
func runIn(netns string, env []string, name string, args ...string) (string, error) {
	full := append([]string{"netns", "exec", netns, name}, args...)
	cmd := exec.Command("ip", full...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return stdout.String(), &cmdError{cmd: name + " " + strings.Join(args, " "), netns: netns, code: exit.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
		}
		return stdout.String(), fmt.Errorf("%s in %s: %w", name, netns, err)
	}
	return stdout.String(), nil
}

// cmdError is a command that ran and failed.
type cmdError struct {
	cmd, netns     string
	code           int
	stdout, stderr string
}

func (e *cmdError) Error() string {
	return fmt.Sprintf("%s (in %s) exited %d: %s%s", e.cmd, e.netns, e.code, strings.TrimSpace(e.stderr), strings.TrimSpace(e.stdout))
}
