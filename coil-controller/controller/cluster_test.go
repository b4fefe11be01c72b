package controller

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRunChecksClusterIdentity runs the coil-controller process (Run) as
// the restricted controller user against the real API: it stamps a fresh
// prefix with the UID of the kube-system namespace, and refuses to start,
// naming both UIDs and writing nothing, on a prefix another cluster
// stamped.
func TestRunChecksClusterIdentity(t *testing.T) {
	c := newCluster(t)
	ns, err := c.admin.CoreV1().Namespaces().Get(context.Background(), "kube-system", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ours := string(ns.UID)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := c.api.WriteKubeconfig(kubeconfig, controllerUser); err != nil {
		t.Fatal(err)
	}
	const foreign = "11111111-2222-4333-8444-555555555555"
	tests := []struct {
		name    string
		stamp   string // UID stamped before the start; "" for a fresh prefix
		wantErr bool
	}{
		{name: "fresh prefix"},
		{name: "same cluster", stamp: ours},
		{name: "other cluster", stamp: foreign, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			cli := etcdServer.Client(t)
			st := model.New(cli, etcdtest.Prefix(t))
			if tc.stamp != "" {
				if _, err := st.StampCluster(ctx, tc.stamp); err != nil {
					t.Fatal(err)
				}
			}
			before := dumpKeys(t, cli, st.Prefix())
			cfg := flagConfig(t, "--leader-elect=false", "--metrics-addr=", "--scan-interval=1h")
			cfg.Etcd.Endpoints = []string{etcdServer.Endpoint}
			cfg.Etcd.Prefix = st.Prefix()
			cfg.Kubeconfig = kubeconfig
			cfg.Logger = testLogger(t, "run")
			// Run returns nil when its context ends: a controller that
			// starts runs until then.
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			err := Run(rctx, cfg)
			started := rctx.Err() != nil
			if !tc.wantErr {
				if err != nil || !started {
					t.Fatalf("Run = %v, want it to run until its context ended", err)
				}
				got, err := st.GetCluster(ctx)
				if err != nil || got.UID != ours {
					t.Fatalf("stamp = %+v, %v; want UID %s", got, err, ours)
				}
				return
			}
			if started || !errors.Is(err, model.ErrClusterMismatch) || !strings.Contains(err.Error(), foreign) || !strings.Contains(err.Error(), ours) {
				t.Fatalf("Run = %v (ran until the deadline: %v), want ErrClusterMismatch naming %s and %s", err, started, foreign, ours)
			}
			if after := dumpKeys(t, cli, st.Prefix()); after != before {
				t.Errorf("the refused controller wrote to etcd:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

func dumpKeys(t *testing.T, cli *clientv3.Client, prefix string) string {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, kv := range resp.Kvs {
		fmt.Fprintf(&b, "%s=%s\n", kv.Key, kv.Value)
	}
	return b.String()
}
