package kubeclient

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
)

const kubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: https://192.0.2.1:6443
users:
- name: test
  user:
    token: secret
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
`

func TestConfigFromFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Config(path, "coil-test")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://192.0.2.1:6443" || cfg.BearerToken != "secret" || cfg.UserAgent != "coil-test" {
		t.Errorf("Config = host %q, token %q, user agent %q", cfg.Host, cfg.BearerToken, cfg.UserAgent)
	}
	cfg, err = Config(path, "")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.UserAgent != "" {
		t.Errorf("empty userAgent set UserAgent %q", cfg.UserAgent)
	}
	if _, err := New(path, "coil-test"); err != nil {
		t.Errorf("New: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	if _, err := Config(missing, ""); err == nil || !strings.Contains(err.Error(), "kubeconfig "+missing) {
		t.Errorf("missing file: error %v, want one naming the kubeconfig", err)
	}
	if _, err := New(missing, ""); err == nil {
		t.Error("New with a missing file succeeded")
	}
	// Outside a pod: no service host, so no in-cluster configuration.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	_, err := Config("", "")
	if err == nil || !strings.Contains(err.Error(), "in-cluster") {
		t.Errorf("empty path outside a cluster: error %v, want the in-cluster error", err)
	}
	if !errors.Is(err, rest.ErrNotInCluster) {
		t.Errorf("error %v does not wrap rest.ErrNotInCluster", err)
	}
}

func TestRateLimits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(kubeconfig), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		qps  float32
		want float32
	}{{DefaultQPS, DefaultQPS}, {7.5, 7.5}, {0, rest.DefaultQPS}} {
		c, err := NewWithLimits(path, "", tc.qps, DefaultBurst)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.CoreV1().RESTClient().GetRateLimiter().QPS(); got != tc.want {
			t.Errorf("NewWithLimits(qps %g): client limited to %g/s, want %g", tc.qps, got, tc.want)
		}
	}
}
