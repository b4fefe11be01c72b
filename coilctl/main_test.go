package main

import (
	"bytes"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
)

// TestBinary builds the real coilctl and runs it as a subprocess, proving
// the exit codes and the split of stdout and stderr that scripts see; the
// in-process tests of package cmd cannot observe os.Exit.
func TestBinary(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go tool is needed to build coilctl: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "coilctl")
	build := exec.Command(goTool, "build", "-o", bin, "github.com/coil-project/coil/coilctl")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	s, err := etcdtest.Start(etcdtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	etcd := []string{"--etcd-endpoints", s.Endpoint, "--etcd-prefix", etcdtest.Prefix(t)}

	cases := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"create", append([]string{"pool", "create", "default", "10.0.0.0/24", "5"}, etcd...), 0, `pool "default" created`, ""},
		{"list as JSON", append([]string{"pool", "list", "--json"}, etcd...), 0, `"name": "default"`, ""},
		{"refused input", append([]string{"pool", "create", "x", "10.0.0.1/24", "5"}, etcd...), 1, "", "Error: create pool \"x\": invalid CIDR"},
		{"usage error", []string{"pool", "create", "x"}, 2, "", "Run 'coilctl pool create --help' for usage."},
		{"etcd unreachable", []string{"pool", "list", "--etcd-endpoints", "127.0.0.1:1", "--etcd-timeout", "1s"}, 1, "", "Error: cannot reach etcd at 127.0.0.1:1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(bin, c.args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != c.code {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, c.code, &stdout, &stderr)
			}
			for _, o := range []struct{ name, got, want string }{
				{"stdout", stdout.String(), c.stdout},
				{"stderr", stderr.String(), c.stderr},
			} {
				if o.want == "" && o.got != "" || !strings.Contains(o.got, o.want) {
					t.Errorf("%s = %q, want it to contain %q", o.name, o.got, o.want)
				}
			}
		})
	}
}
