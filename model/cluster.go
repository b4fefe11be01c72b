package model

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Cluster is the identity of the Kubernetes cluster whose state a key
// prefix holds: the UID of its kube-system namespace, stamped by the first
// coild or coil-controller that started. Two clusters sharing one prefix,
// or a component given another cluster's kubeconfig, would see each
// other's nodes as deleted and free their blocks; the stamp lets them
// refuse to start instead.
type Cluster struct {
	UID       string    `json:"uid"`
	StampedAt time.Time `json:"stampedAt"`
}

func (s *Store) clusterKey() string { return s.prefix + "cluster" }

// StampCluster records uid as the prefix's cluster if no cluster is
// recorded yet, in one transaction, so of components of two clusters
// starting at once exactly one stamps. It returns the recorded cluster,
// or ErrClusterMismatch (naming both UIDs) when another cluster's UID is
// recorded; an empty uid is ErrInvalidCluster. It changes nothing unless
// the prefix was unstamped.
func (s *Store) StampCluster(ctx context.Context, uid string) (Cluster, error) {
	if uid == "" {
		return Cluster{}, fmt.Errorf("stamp cluster: %w: empty UID", ErrInvalidCluster)
	}
	key := s.clusterKey()
	c := Cluster{UID: uid, StampedAt: time.Now().UTC()}
	resp, err := s.kv.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, encode(c))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return Cluster{}, fmt.Errorf("stamp cluster: %w", etcdErr("txn", err))
	}
	if resp.Succeeded {
		return c, nil
	}
	// The Else branch read the key in the same revision the compare
	// failed in, so it is there; a missing one is still not trusted.
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return Cluster{}, fmt.Errorf("stamp cluster: %w: %s vanished inside a transaction", ErrCorrupt, key)
	}
	var got Cluster
	if err := decode(key, kvs[0].Value, &got); err != nil {
		return Cluster{}, fmt.Errorf("stamp cluster: %w", err)
	}
	if got.UID != uid {
		return got, fmt.Errorf("%w: etcd prefix %s belongs to the cluster whose kube-system namespace has UID %s (stamped %s); this cluster's is %s",
			ErrClusterMismatch, s.prefix, got.UID, got.StampedAt.Format(time.RFC3339), uid)
	}
	return got, nil
}

// GetCluster returns the recorded cluster, or ErrNotFound when the prefix
// is not stamped yet.
func (s *Store) GetCluster(ctx context.Context) (Cluster, error) {
	key := s.clusterKey()
	resp, err := s.kv.Get(ctx, key)
	if err != nil {
		return Cluster{}, fmt.Errorf("get cluster: %w", etcdErr("get", err))
	}
	if len(resp.Kvs) == 0 {
		return Cluster{}, fmt.Errorf("get cluster: %w", ErrNotFound)
	}
	var c Cluster
	if err := decode(key, resp.Kvs[0].Value, &c); err != nil {
		return Cluster{}, fmt.Errorf("get cluster: %w", err)
	}
	return c, nil
}
