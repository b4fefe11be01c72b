package kubenodetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
)

// proc is one daemon of a node.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	// err is cmd.Wait's result, valid once exited is closed.
	err  error
	once sync.Once
}

// spawn starts a daemon of the node in its own process group, logging to
// <dir>/log/<name>.log. It dies with the test process unless the node is
// detached.
func (n *Node) spawn(name string, env []string, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(n.cfg.Dir, "log", name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(bin, args...)
	cmd.Dir = n.cfg.Dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if n.cfg.Detached {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s of %s: %w", name, n.cfg.Name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		// Owned by the process: kill waits on exited.
		p.err = cmd.Wait()
		close(p.exited)
	}()
	n.mu.Lock()
	n.pids = append(n.pids, cmd.Process.Pid)
	n.mu.Unlock()
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL to the process group and waits for the process.
func (p *proc) kill() {
	p.once.Do(func() {
		if p.running() {
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		}
		<-p.exited
	})
}

func (p *proc) logTail() string {
	data, _ := os.ReadFile(p.logPath)
	if len(data) > 3000 {
		data = data[len(data)-3000:]
	}
	return string(data)
}
