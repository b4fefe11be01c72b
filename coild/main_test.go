package main

import (
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/coild/daemon"
	"github.com/spf13/pflag"
)

func parse(args []string) (daemon.Config, error) {
	fs := pflag.NewFlagSet("coild", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return daemon.ParseFlags(fs, args)
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(daemon.Config) bool
		wantErr string
	}{
		{
			name: "defaults",
			env:  map[string]string{daemon.NodeNameEnv: "n1"},
			check: func(c daemon.Config) bool {
				return c.NodeName == "n1" && c.HTTPAddr == "127.0.0.1:9383" && c.SocketPath == "/run/coild.sock" &&
					c.TableID == 119 && c.ProtocolID == 30 && c.Kubeconfig == "" && c.MetricsAddr == "" &&
					c.ScanInterval == time.Minute && c.BlockReleaseGrace == 5*time.Minute && !c.FlatL2 &&
					c.NodeAddresses == nil && c.EgressBypass == nil && c.Etcd.Prefix == "/coil/" && c.Validate() == nil &&
					c.EgressProbeInterval == 200*time.Millisecond && c.EgressProbeMisses == 3 &&
					c.KubeQPS == 50 && c.KubeBurst == 100
			},
		},
		{
			name: "flags",
			args: []string{"--node-name=n2", "--node-address=192.0.2.1,2001:db8::1", "--egress-bypass=10.96.0.5/12",
				"--egress-bypass=fd00::/64", "--table-id=120", "--protocol-id=31", "--flat-l2", "--socket=",
				"--etcd-endpoints=http://10.0.0.1:2379,http://10.0.0.2:2379", "--kube-api-qps=20.5", "--kube-api-burst=40"},
			check: func(c daemon.Config) bool {
				return c.NodeName == "n2" &&
					slices.Equal(c.NodeAddresses, []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}) &&
					slices.Equal(c.EgressBypass, []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00::/64")}) &&
					c.TableID == 120 && c.ProtocolID == 31 && c.FlatL2 && c.SocketPath == "" && len(c.Etcd.Endpoints) == 2 &&
					c.KubeQPS == 20.5 && c.KubeBurst == 40
			},
		},
		{
			name: "environment fills what flags leave",
			args: []string{"--node-name=flag"},
			env: map[string]string{"COILD_NODE_NAME": "env", "COILD_ETCD_PREFIX": "/other/",
				"COILD_NODE_ADDRESS": "192.0.2.7", "COILD_SCAN_INTERVAL": "30s"},
			check: func(c daemon.Config) bool {
				return c.NodeName == "flag" && c.Etcd.Prefix == "/other/" && c.ScanInterval == 30*time.Second &&
					slices.Equal(c.NodeAddresses, []netip.Addr{netip.MustParseAddr("192.0.2.7")})
			},
		},
		{
			name: "probes",
			args: []string{"--node-name=n3", "--egress-probe-interval=50ms", "--egress-probe-misses=5"},
			check: func(c daemon.Config) bool {
				return c.EgressProbeInterval == 50*time.Millisecond && c.EgressProbeMisses == 5 && c.Validate() == nil
			},
		},
		{
			name:  "probes off",
			args:  []string{"--node-name=n3", "--egress-probe-interval=0", "--egress-probe-misses=0"},
			check: func(c daemon.Config) bool { return c.EgressProbeInterval == 0 && c.Validate() == nil },
		},
		{
			name: "probe interval too short",
			args: []string{"--node-name=n3", "--egress-probe-interval=1ms"},
			check: func(c daemon.Config) bool {
				err := c.Validate()
				return err != nil && strings.Contains(err.Error(), "--egress-probe-interval")
			},
		},
		{
			name: "no misses",
			args: []string{"--node-name=n3", "--egress-probe-misses=0"},
			check: func(c daemon.Config) bool {
				err := c.Validate()
				return err != nil && strings.Contains(err.Error(), "--egress-probe-misses")
			},
		},
		{name: "bad node address", args: []string{"--node-address=192.0.2.300"}, wantErr: "--node-address"},
		{name: "bad bypass", args: []string{"--egress-bypass=10.0.0.0"}, wantErr: "--egress-bypass"},
		{name: "bad environment", env: map[string]string{"COILD_TABLE_ID": "main"}, wantErr: "COILD_TABLE_ID"},
		{name: "unknown flag", args: []string{"--no-such-flag"}, wantErr: "no-such-flag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(daemon.NodeNameEnv, "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := parse(tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseFlags(%v) error = %v, want one about %s", tc.args, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseFlags(%v): %v", tc.args, err)
			}
			if !tc.check(c) {
				t.Errorf("parseFlags(%v) = %+v", tc.args, c)
			}
		})
	}
}

// TestValidateFlags checks that what the flags can express wrongly is
// caught by Config.Validate, which daemon.Run calls before anything starts.
func TestValidateFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "no node name", wantErr: "--node-name"},
		{name: "no listener", args: []string{"--node-name=n", "--http=", "--socket="}, wantErr: "both empty"},
		{name: "http not loopback", args: []string{"--node-name=n", "--http=0.0.0.0:9383"}, wantErr: "loopback"},
		{name: "reserved table", args: []string{"--node-name=n", "--table-id=254"}, wantErr: "--table-id"},
		{name: "protocol out of range", args: []string{"--node-name=n", "--protocol-id=256"}, wantErr: "--protocol-id"},
		{name: "zero scan interval", args: []string{"--node-name=n", "--scan-interval=0s"}, wantErr: "--scan-interval"},
		{name: "negative API QPS", args: []string{"--node-name=n", "--kube-api-qps=-1"}, wantErr: "--kube-api-qps"},
		{name: "negative API burst", args: []string{"--node-name=n", "--kube-api-burst=-5"}, wantErr: "--kube-api-burst"},
		{name: "bad etcd prefix", args: []string{"--node-name=n", "--etcd-prefix=coil"}, wantErr: "prefix"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(daemon.NodeNameEnv, "")
			c, err := parse(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Validate() = %v, want an error about %s", err, tc.wantErr)
			}
		})
	}
}
