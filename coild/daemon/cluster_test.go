package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/coild/daemon"
	nodetest "github.com/coil-project/coil/internal/testenv/node"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestClusterIdentity: coild stamps a fresh etcd prefix with the UID of its
// cluster's kube-system namespace and starts again under that stamp; a
// prefix stamped by another cluster makes it refuse to start, with an
// error naming both UIDs, before it writes anything.
func TestClusterIdentity(t *testing.T) {
	n := env.NewNode(t, nodetest.Options{Pools: []model.Pool{pool(t, "default", 4, "10.11.0.0/24")}})
	ctx := context.Background()
	c, err := n.Store.GetCluster(ctx)
	if err != nil {
		t.Fatalf("coild did not stamp the prefix: %v", err)
	}
	if c.UID != string(nodetest.ClusterUID) {
		t.Fatalf("stamp = %+v, want UID %s", c, nodetest.ClusterUID)
	}
	n.Stop()
	n.Start() // same cluster: starts
	n.Stop()

	// Another cluster stamped the prefix (two clusters sharing it, or this
	// coild given another cluster's kubeconfig). Its node record is gone
	// so that a start that went ahead would show by writing it again.
	const foreign = "11111111-2222-4333-8444-555555555555"
	if _, err := n.EtcdClient.Put(ctx, n.Prefix+"cluster", fmt.Sprintf(`{"uid":%q,"stampedAt":"2026-01-02T03:04:05Z"}`, foreign)); err != nil {
		t.Fatal(err)
	}
	if err := n.Store.DeleteNode(ctx, n.Name); err != nil {
		t.Fatal(err)
	}
	before := dumpPrefix(t, n.EtcdClient, n.Prefix)
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	err = daemon.Run(rctx, n.Config())
	if rctx.Err() != nil {
		t.Fatalf("coild kept running against a prefix stamped by another cluster (Run = %v)", err)
	}
	if !errors.Is(err, model.ErrClusterMismatch) || !strings.Contains(err.Error(), foreign) || !strings.Contains(err.Error(), string(nodetest.ClusterUID)) {
		t.Fatalf("Run = %v, want ErrClusterMismatch naming %s and %s", err, foreign, nodetest.ClusterUID)
	}
	if after := dumpPrefix(t, n.EtcdClient, n.Prefix); after != before {
		t.Errorf("the refused coild wrote to etcd:\nbefore %s\nafter  %s", before, after)
	}
}

func dumpPrefix(t *testing.T, cli *clientv3.Client, prefix string) string {
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
