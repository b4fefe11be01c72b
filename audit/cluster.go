package audit

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// listPageSize keeps each LIST response small enough for large clusters.
const listPageSize = 500

// ListCluster reads every Node and Pod from the API with paged, consistent
// LISTs, for one-off callers of Check such as `coilctl check`.
// coil-controller uses informer caches instead.
func ListCluster(ctx context.Context, client kubernetes.Interface) ([]*corev1.Node, []*corev1.Pod, error) {
	var nodes []*corev1.Node
	opts := metav1.ListOptions{Limit: listPageSize}
	for {
		l, err := client.CoreV1().Nodes().List(ctx, opts)
		if err != nil {
			return nil, nil, fmt.Errorf("list nodes: %w", err)
		}
		for i := range l.Items {
			nodes = append(nodes, &l.Items[i])
		}
		if l.Continue == "" {
			break
		}
		opts.Continue = l.Continue
	}
	var pods []*corev1.Pod
	opts = metav1.ListOptions{Limit: listPageSize}
	for {
		l, err := client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, opts)
		if err != nil {
			return nil, nil, fmt.Errorf("list pods: %w", err)
		}
		for i := range l.Items {
			pods = append(pods, &l.Items[i])
		}
		if l.Continue == "" {
			break
		}
		opts.Continue = l.Continue
	}
	return nodes, pods, nil
}
