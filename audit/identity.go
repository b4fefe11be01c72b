package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/coil-project/coil/internal/kubeclient"
	"github.com/coil-project/coil/model"
	"k8s.io/client-go/kubernetes"
)

// Stamper is the part of model.Store that EnsureCluster writes.
type Stamper interface {
	StampCluster(ctx context.Context, uid string) (model.Cluster, error)
}

// retryClusterCheck paces EnsureCluster's attempts while etcd or the API
// cannot be reached.
const retryClusterCheck = 2 * time.Second

// EnsureCluster stamps the etcd prefix with the identity of the cluster
// kube talks to (the UID of its kube-system namespace), or finds that same
// stamp there, as coild and coil-controller do before they touch
// anything. A prefix stamped by another cluster (two clusters sharing it,
// or the wrong kubeconfig) returns model.ErrClusterMismatch naming both
// UIDs: acting on it would free or hand out that cluster's addresses.
// Failures to reach etcd or the API are logged and retried until ctx ends;
// each attempt is bounded by attempt. A mismatch, an empty UID or a stamp
// that does not decode are returned at once: retrying cannot fix them.
func EnsureCluster(ctx context.Context, kube kubernetes.Interface, st Stamper, attempt time.Duration, log *slog.Logger) (model.Cluster, error) {
	for {
		c, err := stampOnce(ctx, kube, st, attempt)
		if err == nil {
			log.Info("etcd prefix belongs to this cluster", "cluster-uid", c.UID, "stamped-at", c.StampedAt)
			return c, nil
		}
		if errors.Is(err, model.ErrClusterMismatch) || errors.Is(err, model.ErrInvalidCluster) || errors.Is(err, model.ErrCorrupt) {
			return model.Cluster{}, err
		}
		if ctx.Err() != nil {
			return model.Cluster{}, fmt.Errorf("check cluster identity: %w", ctx.Err())
		}
		log.Error("cluster identity check failed; retrying", "error", err)
		select {
		case <-ctx.Done():
			return model.Cluster{}, fmt.Errorf("check cluster identity: %w", ctx.Err())
		case <-time.After(retryClusterCheck):
		}
	}
}

func stampOnce(ctx context.Context, kube kubernetes.Interface, st Stamper, attempt time.Duration) (model.Cluster, error) {
	ctx, cancel := context.WithTimeout(ctx, attempt)
	defer cancel()
	uid, err := kubeclient.ClusterUID(ctx, kube)
	if err != nil {
		return model.Cluster{}, err
	}
	return st.StampCluster(ctx, uid)
}
