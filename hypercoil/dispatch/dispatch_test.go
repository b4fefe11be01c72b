package dispatch_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/coil-project/coil/hypercoil/dispatch"
)

func TestResolve(t *testing.T) {
	tests := []struct {
		argv     []string
		name     string
		args     []string
		resolved bool
	}{
		{[]string{"/usr/local/bin/coild", "--node-name=n1"}, "coild", []string{"--node-name=n1"}, true},
		{[]string{"/opt/cni/bin/coil"}, "coil", []string{}, true},
		{[]string{"coilctl", "pool", "list"}, "coilctl", []string{"pool", "list"}, true},
		{[]string{"/usr/local/bin/hypercoil", "coil-controller", "--leader-elect=false"}, "coil-controller", []string{"--leader-elect=false"}, true},
		{[]string{"hypercoil", "coil-egress"}, "coil-egress", []string{}, true},
		// A link name wins over the first argument.
		{[]string{"coil-installer", "coild"}, "coil-installer", []string{"coild"}, true},
		{[]string{"hypercoil"}, "", nil, false},
		{[]string{"hypercoil", "kubectl"}, "", nil, false},
		{[]string{"/tmp/something", "coild"}, "", nil, false},
		{nil, "", nil, false},
	}
	for _, tc := range tests {
		name, args, ok := dispatch.Resolve(tc.argv)
		if ok != tc.resolved || name != tc.name || (ok && !slices.Equal(args, tc.args)) {
			t.Errorf("Resolve(%q) = %q, %q, %v; want %q, %q, %v", tc.argv, name, args, ok, tc.name, tc.args, tc.resolved)
		}
	}
}

// TestBinary builds hypercoil and runs it under each command's name, the
// way the image's links do, and by its first argument.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, dispatch.Name)
	build := exec.Command("go", "build", "-o", bin, "..")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, c := range dispatch.Commands {
		if err := os.Symlink(dispatch.Name, filepath.Join(dir, c)); err != nil {
			t.Fatal(err)
		}
	}
	run := func(env []string, argv0 string, args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(filepath.Join(dir, argv0), args...)
		cmd.Env = append(os.Environ(), env...)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errOut.String(), code
	}
	tests := []struct {
		name   string
		env    []string
		argv0  string
		args   []string
		code   int
		output string // in stdout or stderr
	}{
		{"plugin by link", []string{"CNI_COMMAND=VERSION"}, "coil", nil, 0, `"supportedVersions"`},
		{"plugin by argument", []string{"CNI_COMMAND=VERSION"}, dispatch.Name, []string{"coil"}, 0, `"supportedVersions"`},
		{"coilctl by link", nil, "coilctl", []string{"--help"}, 0, "coilctl edits Coil's address pools"},
		{"coilctl by argument", nil, dispatch.Name, []string{"coilctl", "address", "history", "--help"}, 0, "etcd still remembers"},
		{"coilctl usage error", nil, "coilctl", []string{"pool", "lsit"}, 2, `unknown command "lsit"`},
		{"coild", nil, "coild", []string{"--help"}, 0, "--node-name"},
		{"coil-controller", nil, "coil-controller", []string{"--help"}, 0, "--leak-grace"},
		{"coil-installer", nil, "coil-installer", []string{"--help"}, 0, "install"},
		{"coil-egress refuses arguments", nil, "coil-egress", []string{"x"}, 2, "coil-egress takes no arguments"},
		{"alone", nil, dispatch.Name, nil, 2, "run it as one of coil, coild, coilctl"},
		{"unknown command", nil, dispatch.Name, []string{"kubectl"}, 2, `unknown command "kubectl"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := run(tc.env, tc.argv0, tc.args...)
			if code != tc.code || !strings.Contains(out+errOut, tc.output) {
				t.Errorf("exit %d, want %d; output lacks %q:\nstdout:\n%s\nstderr:\n%s", code, tc.code, tc.output, out, errOut)
			}
		})
	}
}

// BenchmarkPluginExec measures what the one binary costs the CNI plugin:
// a CNI VERSION call (exec, start-up, answer) of hypercoil installed as
// coil, side by side with the separate coil binary.
//
//	go test -run '^$' -bench PluginExec -benchtime 50x ./hypercoil/dispatch/
func BenchmarkPluginExec(b *testing.B) {
	dir := b.TempDir()
	for pkg, out := range map[string]string{"..": "hypercoil/coil", "../../coil": "separate/coil"} {
		build := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, out), pkg)
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			b.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	for _, name := range []string{"separate", "hypercoil"} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				cmd := exec.Command(filepath.Join(dir, name, "coil"))
				cmd.Env = []string{"CNI_COMMAND=VERSION"}
				if out, err := cmd.Output(); err != nil || !bytes.Contains(out, []byte("supportedVersions")) {
					b.Fatalf("VERSION: %v, %s", err, out)
				}
			}
		})
	}
}
