// Package kubeclient builds the Kubernetes client of Coil's commands
// (coild, coil-controller, coilctl, coil-installer) in one way: from the
// kubeconfig file they are given, or from the pod's service account when
// they are given none.
package kubeclient

import (
	"context"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Config returns the client configuration read from the kubeconfig file at
// path, or the in-cluster configuration (the service account of the pod
// the process runs in) when path is empty. A non-empty userAgent names the
// caller in the API server's logs.
func Config(path, userAgent string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if path == "" {
		if cfg, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("in-cluster configuration: %w", err)
		}
	} else {
		if cfg, err = clientcmd.BuildConfigFromFlags("", path); err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
		}
	}
	if userAgent != "" {
		cfg.UserAgent = userAgent
	}
	return cfg, nil
}

// New returns a clientset for Config(path, userAgent).
func New(path, userAgent string) (kubernetes.Interface, error) {
	return NewWithLimits(path, userAgent, 0, 0)
}

// Default client-side rate limits of coild's API client: the kubelet's
// (--kube-api-qps 50, --kube-api-burst 100), since coild asks the API
// server on a node's behalf at the pace pods start on it. client-go's own
// defaults (5 and 10) make a burst of pod starts queue behind each other.
const (
	DefaultQPS   = 50
	DefaultBurst = 100
)

// NewWithLimits is New with the client's rate limit set to qps requests
// per second with bursts of burst; zero keeps client-go's defaults.
func NewWithLimits(path, userAgent string, qps float32, burst int) (kubernetes.Interface, error) {
	cfg, err := Config(path, userAgent)
	if err != nil {
		return nil, err
	}
	if qps > 0 {
		cfg.QPS = qps
	}
	if burst > 0 {
		cfg.Burst = burst
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return client, nil
}

// ClusterNamespace is the namespace whose UID identifies a cluster: every
// cluster has it from its creation, and a namespace's UID never changes
// nor repeats in another cluster.
const ClusterNamespace = "kube-system"

// ClusterUID returns the UID of the cluster's ClusterNamespace, which Coil
// stamps into etcd (model.Store.StampCluster) so that components of
// another cluster refuse the prefix. The caller needs get on namespaces.
func ClusterUID(ctx context.Context, client kubernetes.Interface) (string, error) {
	ns, err := client.CoreV1().Namespaces().Get(ctx, ClusterNamespace, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read the UID of namespace %s (the cluster's identity): %w", ClusterNamespace, err)
	}
	return string(ns.UID), nil
}
