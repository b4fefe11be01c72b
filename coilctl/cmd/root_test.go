package cmd_test

import (
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/coilctl/cmd"
	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
)

func TestCommandLine(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		code   int
		stdout string // substring; "" means stdout must be empty
		stderr string // substring; "" means stderr must be empty
	}{
		{"no command prints help", nil, cmd.ExitOK, "Available Commands:", ""},
		{"--help", []string{"--help"}, cmd.ExitOK, "Usage:", ""},
		{"group alone prints help", []string{"pool"}, cmd.ExitOK, "coilctl pool [command]", ""},
		{"command help", []string{"pool", "create", "--help"}, cmd.ExitOK, "--ipv6", ""},
		{"unknown command", []string{"bogus"}, cmd.ExitUsage, "", `unknown command "bogus" for "coilctl"`},
		{"unknown subcommand", []string{"node", "blcks"}, cmd.ExitUsage, "", `did you mean "blocks"?`},
		{"missing argument", []string{"node", "blocks"}, cmd.ExitUsage, "", "missing NODE"},
		{"list takes no argument", []string{"pool", "list", "x"}, cmd.ExitUsage, "", "takes no arguments, got 1"},
		{"bad global flag value", []string{"pool", "list", "--etcd-timeout", "soon"}, cmd.ExitUsage, "", `invalid argument "soon"`},
		{"bad prefix", []string{"pool", "list", "--etcd-prefix", "coil"}, cmd.ExitFailure, "", `--etcd-prefix "coil" must start and end with '/'`},
		{"cert without key", []string{"pool", "list", "--etcd-tls-cert", "c.pem"}, cmd.ExitFailure, "", "must be given together"},
		{"missing CA file", []string{"pool", "list", "--etcd-tls-ca", "/nonexistent/ca.pem"}, cmd.ExitFailure, "", "/nonexistent/ca.pem"},
		{"unsupported shell", []string{"completion", "fish"}, cmd.ExitUsage, "", `unsupported shell "fish"`},
		{"bash completion", []string{"completion", "bash"}, cmd.ExitOK, "__start_coilctl", ""},
		{"zsh completion", []string{"completion", "zsh"}, cmd.ExitOK, "#compdef coilctl", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := run(c.args...)
			if r.code != c.code {
				t.Errorf("exit code = %d, want %d\n%v", r.code, c.code, r)
			}
			check := func(what, got, want string) {
				if want == "" && got != "" || !strings.Contains(got, want) {
					t.Errorf("%s = %q, want it to contain %q", what, got, want)
				}
			}
			check("stdout", r.stdout, c.stdout)
			check("stderr", r.stderr, c.stderr)
			if c.code == cmd.ExitUsage && !strings.Contains(r.stderr, "--help' for usage.") {
				t.Errorf("usage error does not point at --help:\n%s", r.stderr)
			}
		})
	}
}

func TestEnvironment(t *testing.T) {
	h := newHarness(t)
	h.ok("pool", "create", "default", "10.0.0.0/24", "5")

	t.Setenv("COILCTL_ETCD_ENDPOINTS", server.Endpoint)
	t.Setenv("COILCTL_ETCD_PREFIX", h.prefix)
	if r := run("pool", "list"); r.code != 0 || !strings.Contains(r.stdout, "default") {
		t.Errorf("with COILCTL_ETCD_ENDPOINTS and COILCTL_ETCD_PREFIX:\n%v", r)
	}

	// A flag wins over the environment.
	t.Setenv("COILCTL_ETCD_ENDPOINTS", "127.0.0.1:1")
	if r := run("pool", "list", "--etcd-endpoints", server.Endpoint); r.code != 0 || !strings.Contains(r.stdout, "default") {
		t.Errorf("--etcd-endpoints did not override the environment:\n%v", r)
	}
	// And the environment is really used: this one points nowhere.
	t.Setenv("COILCTL_ETCD_TIMEOUT", "500ms")
	if r := run("pool", "list"); r.code != cmd.ExitFailure || !strings.Contains(r.stderr, "cannot reach etcd at 127.0.0.1:1") {
		t.Errorf("COILCTL_ETCD_ENDPOINTS=127.0.0.1:1 did not fail as expected:\n%v", r)
	}

	t.Setenv("COILCTL_ETCD_TIMEOUT", "soon")
	if r := run("pool", "list"); r.code != cmd.ExitUsage || !strings.Contains(r.stderr, "environment variable COILCTL_ETCD_TIMEOUT") {
		t.Errorf("bad COILCTL_ETCD_TIMEOUT:\n%v", r)
	}
}

func TestTLS(t *testing.T) {
	s, err := etcdtest.Start(etcdtest.Options{TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	prefix := etcdtest.Prefix(t)
	base := []string{"--etcd-endpoints", s.Endpoint, "--etcd-prefix", prefix, "--etcd-timeout", "2s"}
	ca := []string{"--etcd-tls-ca", s.Certs.CA}
	client := []string{"--etcd-tls-cert", s.Certs.ClientCert, "--etcd-tls-key", s.Certs.ClientKey}
	args := func(cmdline string, flags ...[]string) []string {
		a := append(strings.Fields(cmdline), base...)
		for _, f := range flags {
			a = append(a, f...)
		}
		return a
	}

	if r := run(args("pool create default 10.0.0.0/24 5", ca, client)...); r.code != 0 {
		t.Fatalf("create over TLS:\n%v", r)
	}
	if r := run(args("pool list", ca, client)...); r.code != 0 || !strings.Contains(r.stdout, "10.0.0.0/24") {
		t.Fatalf("list over TLS:\n%v", r)
	}

	cases := []struct {
		name  string
		flags [][]string
		want  []string
	}{
		{"without client certificate", [][]string{ca}, []string{"cannot reach etcd at " + s.Endpoint, "certificate required", "--etcd-tls-cert and --etcd-tls-key"}},
		{"without CA", [][]string{client}, []string{"cannot reach etcd at " + s.Endpoint, "unknown authority", "--etcd-tls-ca"}},
		{"without any TLS flag", nil, []string{"cannot reach etcd at " + s.Endpoint}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			r := run(args("pool list", c.flags...)...)
			if r.code != cmd.ExitFailure || r.stdout != "" {
				t.Errorf("exit %d, want %d\n%v", r.code, cmd.ExitFailure, r)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if d := time.Since(start); d > 4*time.Second {
				t.Errorf("took %v with --etcd-timeout 2s", d)
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	for _, cmdline := range []string{
		"pool list",
		"pool show default -o json",
		"pool create default 10.0.0.0/24 5",
		"pool delete default",
		"node blocks n1",
		"address info 10.0.0.1",
		"address free 10.0.0.1",
	} {
		t.Run(cmdline, func(t *testing.T) {
			start := time.Now()
			r := run(append(strings.Fields(cmdline), "--etcd-endpoints", "127.0.0.1:1", "--etcd-timeout", "1s")...)
			elapsed := time.Since(start)
			if r.code != cmd.ExitFailure || r.stdout != "" {
				t.Errorf("exit %d, want %d\n%v", r.code, cmd.ExitFailure, r)
			}
			for _, w := range []string{"Error: cannot reach etcd at 127.0.0.1:1: ", "connection refused"} {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if elapsed > 3*time.Second {
				t.Errorf("took %v with --etcd-timeout 1s", elapsed)
			}
		})
	}
}

func TestDynamicCompletion(t *testing.T) {
	h := newHarness(t)
	h.ok("pool", "create", "default", "10.0.0.0/24", "5")
	h.ok("pool", "create", "other", "10.1.0.0/24", "5")
	h.acquire("default", owner("worker-2", "a"))
	h.acquire("other", owner("worker-1", "b"))
	h.acquire("default", owner("worker-1", "c"))

	cases := []struct {
		args []string
		want []string
	}{
		{[]string{"pool", "show", ""}, []string{"default", "other"}},
		{[]string{"pool", "delete", ""}, []string{"default", "other"}},
		{[]string{"pool", "add-subnet", ""}, []string{"default", "other"}},
		{[]string{"pool", "show", "default", ""}, nil},
		{[]string{"node", "blocks", ""}, []string{"worker-1", "worker-2"}},
		{[]string{"completion", ""}, []string{"bash", "zsh"}},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			// The word being completed must come last, after the flags.
			args := append([]string{"__complete", "--etcd-endpoints", server.Endpoint, "--etcd-prefix", h.prefix}, c.args...)
			r := run(args...)
			if r.code != 0 {
				t.Fatalf("%v", r)
			}
			var got []string
			for line := range strings.Lines(r.stdout) {
				if line = strings.TrimSpace(line); !strings.HasPrefix(line, ":") {
					got = append(got, line)
				}
			}
			if strings.Join(got, " ") != strings.Join(c.want, " ") {
				t.Errorf("completions = %q, want %q", got, c.want)
			}
		})
	}
}
