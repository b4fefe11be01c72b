package daemon

import (
	"context"
	"fmt"

	"github.com/coil-project/coil/audit"
	"k8s.io/client-go/kubernetes"
)

// checkCluster stamps the etcd prefix with the identity of coild's cluster
// or refuses to start when another cluster stamped it (audit.EnsureCluster):
// coild would otherwise route and hand out that cluster's addresses.
// Unreachable etcd or API is retried, as the restore is.
func (d *daemon) checkCluster(ctx context.Context, kube kubernetes.Interface) error {
	if _, err := audit.EnsureCluster(ctx, kube, d.store, 4*d.cfg.Etcd.Timeout, d.log); err != nil {
		return fmt.Errorf("refusing to start: %w", err)
	}
	return nil
}
