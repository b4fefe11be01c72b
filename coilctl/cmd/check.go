package cmd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/coil-project/coil/audit"
	"github.com/coil-project/coil/internal/kubeclient"
	"github.com/coil-project/coil/model"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
)

// checkJSON is the JSON shape of `coilctl check`.
type checkJSON struct {
	Time           time.Time           `json:"time"`
	Nodes          int                 `json:"nodes"`
	Pods           int                 `json:"pods"`
	PodsChecked    bool                `json:"podsChecked"`
	Blocks         int                 `json:"blocks"`
	Addresses      int                 `json:"addresses"`
	Unattributed   int                 `json:"unattributed"`
	MissingNodes   []missingNodeJSON   `json:"missingNodes"`
	LeakCandidates []leakCandidateJSON `json:"leakCandidates"`
}

type missingNodeJSON struct {
	Name      string   `json:"name"`
	Blocks    []string `json:"blocks"`
	Addresses int      `json:"addresses"`
	HasRecord bool     `json:"hasRecord"`
}

type leakCandidateJSON struct {
	IPs         []string  `json:"ips"`
	Pool        string    `json:"pool"`
	Node        string    `json:"node"`
	Namespace   string    `json:"namespace"`
	Pod         string    `json:"pod"`
	ContainerID string    `json:"containerID"`
	CreatedAt   time.Time `json:"createdAt"`
	Reason      string    `json:"reason"`
	PodNode     string    `json:"podNode,omitempty"`
}

func newCheckCommand(o *rootOptions) *cobra.Command {
	var out *outputOptions
	var kubeconfig string
	c := &cobra.Command{
		Use:   "check",
		Short: "Compare etcd with the Kubernetes API, read-only",
		Long: `Compare Coil's records in etcd with the Nodes and Pods in the Kubernetes
API, the way coil-controller does, and print what it would reclaim: blocks
of nodes that no longer exist and addresses whose pod is gone or runs on
another node. Nothing is changed and nothing is locked.`,
		Example: `  coilctl check --kubeconfig ~/.kube/config
  coilctl check -o json`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := out.resolve()
			if err != nil {
				return err
			}
			kube, err := kubeClientFor(kubeconfig)
			if err != nil {
				return err
			}
			var report audit.Report
			err = o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				nodes, pods, err := audit.ListCluster(ctx, kube)
				if err != nil {
					return fmt.Errorf("read nodes and pods from the Kubernetes API: %w", err)
				}
				report, err = audit.Check(ctx, st, nodes, pods)
				return err
			})
			if err != nil {
				return err
			}
			if format == formatJSON {
				return writeJSON(o.stdout, newCheckJSON(report))
			}
			return report.WriteTable(o.stdout)
		},
	}
	c.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default $KUBECONFIG, then ~/.kube/config)")
	out = addOutputFlags(c)
	return c
}

func kubeClientFor(path string) (kubernetes.Interface, error) {
	if path == "" {
		path = os.Getenv("KUBECONFIG")
	}
	if path == "" {
		home, _ := os.UserHomeDir()
		path = filepath.Join(home, ".kube", "config")
	}
	return kubeclient.New(path, "")
}

func newCheckJSON(r audit.Report) checkJSON {
	v := checkJSON{
		Time: r.Time, Nodes: r.Nodes, Pods: r.Pods, PodsChecked: r.PodsChecked,
		Blocks: r.Blocks, Addresses: r.Addresses, Unattributed: r.Unattributed,
		MissingNodes: []missingNodeJSON{}, LeakCandidates: []leakCandidateJSON{},
	}
	for _, m := range r.MissingNodes {
		mj := missingNodeJSON{Name: m.Name, Addresses: m.Addresses, HasRecord: m.HasRecord, Blocks: []string{}}
		for _, b := range m.Blocks {
			mj.Blocks = append(mj.Blocks, b.String())
		}
		v.MissingNodes = append(v.MissingNodes, mj)
	}
	for _, c := range r.LeakCandidates {
		a := c.Address
		lj := leakCandidateJSON{Pool: a.Pool, Node: a.Node, Namespace: a.Namespace, Pod: a.Pod,
			ContainerID: a.ContainerID, CreatedAt: a.CreatedAt, Reason: string(c.Reason), PodNode: c.PodNode}
		for _, ip := range a.IPs() {
			lj.IPs = append(lj.IPs, ip.String())
		}
		v.LeakCandidates = append(v.LeakCandidates, lj)
	}
	return v
}
