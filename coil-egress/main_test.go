package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestMain lets the test binary act as coil-egress when asked to.
func TestMain(m *testing.M) {
	if os.Getenv("COIL_EGRESS_TEST_MAIN") == "1" {
		os.Args = append(os.Args[:1], os.Args[2:]...) // drop -test.run
		if len(os.Args) > 1 {
			main() // refuses them
		}
		wait(func() { fmt.Println("ready") })
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func command(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^$"}, args...)...)
	cmd.Env = append(os.Environ(), "COIL_EGRESS_TEST_MAIN=1")
	return cmd
}

// TestStopsOnSignal: it keeps running until SIGTERM or SIGINT, then exits 0.
func TestStopsOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd := command(t)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Signal only once it handles the signal, or the default action
		// (termination) would be tested.
		if line, err := bufio.NewReader(out).ReadString('\n'); line != "ready\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child printed %q, %v", line, err)
		}
		// Wait closes the pipe: only after the read.
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("after %v: %v, want exit 0", sig, err)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Fatalf("still running 10s after %v", sig)
		}
	}
}

// TestRefusesArguments: a pod spec that passes arguments is an error.
func TestRefusesArguments(t *testing.T) {
	err := command(t, "--help").Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Errorf("with an argument: %v, want exit status 2", err)
	}
}
