package cmd

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestRun(t *testing.T) {
	host := t.TempDir()
	procSys := filepath.Join(host, "proc/sys")
	for _, d := range []string{"net/ipv4", "net/ipv6/conf/all"} {
		if err := os.MkdirAll(filepath.Join(procSys, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if err := os.WriteFile(filepath.Join(procSys, f), []byte("0"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	src := filepath.Join(host, "coil")
	if err := os.WriteFile(src, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	install := []string{"install",
		"--cni-bin-dir=" + filepath.Join(host, "bin"),
		"--cni-conf-dir=" + filepath.Join(host, "net.d"),
		"--source-bin=" + src,
		"--plugins-dir=",
		"--conflist-template=../../deploy/cni/conflist.tmpl",
		"--proc-sys=" + procSys,
	}

	tests := []struct {
		name     string
		args     []string
		env      string
		wantCode int
		wantOut  string
	}{
		{name: "help", args: []string{"--help"}, wantCode: 0, wantOut: "untaint"},
		{name: "no command", args: nil, wantCode: 0, wantOut: "Available Commands"},
		{name: "unknown command", args: []string{"instal"}, wantCode: 2, wantOut: "unknown command"},
		{name: "unknown flag", args: []string{"install", "--cni-dir=/x"}, wantCode: 2, wantOut: "unknown flag"},
		{name: "extra argument", args: []string{"install", "now"}, wantCode: 2, wantOut: "unknown command"},
		{name: "bad policy", args: append(append([]string(nil), install...), "--stale-confs=most"), wantCode: 2, wantOut: "--stale-confs"},
		{name: "install", args: install, wantCode: 0, wantOut: "install finished"},
		{name: "install fails", args: append(append([]string(nil), install...), "--source-bin=/nonexistent"), wantCode: 1, wantOut: "read plugin"},
		{name: "untaint without node", args: []string{"untaint"}, wantCode: 2, wantOut: "no node name"},
		{name: "untaint bad endpoint", args: []string{"untaint", "--node-name=n", "--coild-endpoint=ftp://x"}, wantCode: 2, wantOut: "--coild-endpoint"},
		{name: "untaint gives up", args: []string{"untaint", "--coild-endpoint=unix://" + filepath.Join(host, "none.sock"),
			"--kubeconfig=" + writeKubeconfig(t), "--timeout=300ms", "--poll-interval=50ms"}, env: "node-a", wantCode: 1, wantOut: "coild unreachable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(NodeNameEnv, tc.env)
			var out bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			code := Run(ctx, tc.args, &out, &out)
			if code != tc.wantCode || !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("exit %d, want %d; output (want %q):\n%s", code, tc.wantCode, tc.wantOut, out.String())
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(host, "bin/coil")); err != nil || string(b) != "binary" {
		t.Errorf("install through the command line did not install the plugin: %q, %v", b, err)
	}
}

// writeKubeconfig writes a kubeconfig for a server nobody listens on; the
// untaint test never gets that far.
func writeKubeconfig(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	kc := `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`
	if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
