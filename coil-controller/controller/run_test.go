package controller

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// flagConfig returns the Config that coil-controller's flags give for args.
func flagConfig(t *testing.T, args ...string) Config {
	t.Helper()
	var c Config
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	c.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestConfigDefaults(t *testing.T) {
	c := flagConfig(t)
	if err := c.Validate(); err != nil {
		t.Fatalf("the flag defaults do not validate: %v", err)
	}
	if c.ScanInterval != DefaultScanInterval || c.LeakGrace != DefaultLeakGrace || c.MaxReclaimRatio != DefaultMaxReclaimRatio || c.MaxNodeReleaseRatio != DefaultMaxNodeReleaseRatio ||
		c.NodeRecheckInterval != DefaultNodeRecheck || c.PoolUsageWarning != DefaultPoolUsageWarning || !c.Reclaim || !c.LeaderElect || c.LeaderNamespace != "kube-system" || c.MetricsAddr != ":9386" || c.Kubeconfig != "" {
		t.Errorf("defaults = %+v", c)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "ratio of one", args: []string{"--max-reclaim-ratio=1"}},
		{name: "zero grace", args: []string{"--leak-grace=0s"}},
		{name: "ratio above one", args: []string{"--max-reclaim-ratio=1.5"}, wantErr: "--max-reclaim-ratio"},
		{name: "zero ratio", args: []string{"--max-reclaim-ratio=0"}, wantErr: "--max-reclaim-ratio"},
		{name: "node ratio above one", args: []string{"--max-node-release-ratio=1.1"}, wantErr: "--max-node-release-ratio"},
		{name: "zero node ratio", args: []string{"--max-node-release-ratio=0"}, wantErr: "--max-node-release-ratio"},
		{name: "usage warning of one", args: []string{"--pool-usage-warning=1"}},
		{name: "usage warning above one", args: []string{"--pool-usage-warning=1.2"}, wantErr: "--pool-usage-warning"},
		{name: "zero usage warning", args: []string{"--pool-usage-warning=0"}, wantErr: "--pool-usage-warning"},
		{name: "zero interval", args: []string{"--scan-interval=0s"}, wantErr: "--scan-interval"},
		{name: "negative grace", args: []string{"--leak-grace=-1s"}, wantErr: "--leak-grace"},
		{name: "zero node recheck", args: []string{"--node-recheck-interval=0s"}, wantErr: "--node-recheck-interval"},
		{name: "bad prefix", args: []string{"--etcd-prefix=coil"}, wantErr: "prefix"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := flagConfig(t, tc.args...)
			err := c.Validate()
			if tc.wantErr == "" && err != nil {
				t.Errorf("Validate() = %v, want nil", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Validate() = %v, want an error about %s", err, tc.wantErr)
			}
		})
	}
}

// TestRunRejectsInvalidConfig checks that Run validates before it
// connects anywhere.
func TestRunRejectsInvalidConfig(t *testing.T) {
	c := flagConfig(t, "--scan-interval=0s", "--kubeconfig=/nonexistent")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := Run(ctx, c); err == nil || !strings.Contains(err.Error(), "--scan-interval") {
		t.Errorf("Run = %v, want the validation error", err)
	}
}
