package etcdconfig

import (
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestApplyEnv(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		env     map[string]string
		want    []string
		timeout time.Duration
		wantErr string
	}{
		{name: "defaults", want: []string{"http://127.0.0.1:2379"}, timeout: 5 * time.Second},
		{name: "from environment", env: map[string]string{"COILD_ETCD_ENDPOINTS": "https://a:2379,https://b:2379", "COILD_ETCD_TIMEOUT": "2s"},
			want: []string{"https://a:2379", "https://b:2379"}, timeout: 2 * time.Second},
		{name: "flag wins over environment", args: []string{"--etcd-endpoints", "http://flag:2379"},
			env: map[string]string{"COILD_ETCD_ENDPOINTS": "http://env:2379"}, want: []string{"http://flag:2379"}, timeout: 5 * time.Second},
		{name: "bad value", env: map[string]string{"COILD_ETCD_TIMEOUT": "soon"}, wantErr: "COILD_ETCD_TIMEOUT"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var cfg Config
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			cfg.AddFlags(fs)
			if err := fs.Parse(c.args); err != nil {
				t.Fatal(err)
			}
			err := ApplyEnv(fs, "COILD")
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("ApplyEnv = %v, want error naming %s", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(cfg.Endpoints, ",") != strings.Join(c.want, ",") || cfg.Timeout != c.timeout {
				t.Fatalf("endpoints %v timeout %s, want %v %s", cfg.Endpoints, cfg.Timeout, c.want, c.timeout)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ok := Config{Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/coil/", Timeout: time.Second}
	cases := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"valid", func(*Config) {}, ""},
		{"no endpoints", func(c *Config) { c.Endpoints = nil }, "endpoints"},
		{"cert without key", func(c *Config) { c.TLSCert = "/c.pem" }, "together"},
		{"prefix without slash", func(c *Config) { c.Prefix = "coil" }, "prefix"},
		{"zero timeout", func(c *Config) { c.Timeout = 0 }, "timeout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := ok
			c.modify(&cfg)
			err := cfg.Validate()
			if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("Validate() = %v, want error containing %q", err, c.want)
			}
		})
	}
}
