package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
	Corrupt        []corruptJSON       `json:"corrupt"`
	Cluster        clusterJSON         `json:"cluster"`
}

// clusterJSON compares the cluster identity stamped in etcd with the
// API's: the UIDs of kube-system namespaces.
type clusterJSON struct {
	// EtcdUID is empty while no coild or coil-controller has stamped the prefix.
	EtcdUID   string     `json:"etcdUID"`
	StampedAt *time.Time `json:"stampedAt,omitempty"`
	APIUID    string     `json:"apiUID"`
	Match     bool       `json:"match"`
}

// readCluster reads the stamp in etcd and the API's identity.
func readCluster(ctx context.Context, st *model.Store, kube kubernetes.Interface) (clusterJSON, error) {
	var c clusterJSON
	stamp, err := st.GetCluster(ctx)
	switch {
	case err == nil:
		c.EtcdUID, c.StampedAt = stamp.UID, &stamp.StampedAt
	case !errors.Is(err, model.ErrNotFound):
		return c, err
	}
	if c.APIUID, err = kubeclient.ClusterUID(ctx, kube); err != nil {
		return c, err
	}
	c.Match = c.EtcdUID == c.APIUID
	return c, nil
}

// writeClusterLine prints the identity comparison above the tables.
func writeClusterLine(w io.Writer, c clusterJSON) {
	switch {
	case c.EtcdUID == "":
		fmt.Fprintf(w, "cluster: etcd prefix not stamped yet; this API's kube-system UID is %s\n\n", c.APIUID)
	case c.Match:
		fmt.Fprintf(w, "cluster: %s (stamped %s), the same as this API's\n\n", c.EtcdUID, c.StampedAt.UTC().Format(time.RFC3339))
	default:
		fmt.Fprintf(w, "cluster: MISMATCH: etcd prefix stamped by cluster %s (stamped %s), this API is cluster %s; coild and coil-controller refuse to start, and the findings below compare another cluster's records\n\n",
			c.EtcdUID, c.StampedAt.UTC().Format(time.RFC3339), c.APIUID)
	}
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
another node. Nothing is changed and nothing is locked.

The first line compares the cluster identity stamped in etcd (the UID of
the kube-system namespace of the cluster whose coild or coil-controller
started first) with the API's; on a mismatch coild and coil-controller
refuse to start.`,
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
			var cluster clusterJSON
			err = o.withStore(cmd.Context(), func(ctx context.Context, st *model.Store) error {
				var err error
				if cluster, err = readCluster(ctx, st, kube); err != nil {
					return fmt.Errorf("read the cluster identity: %w", err)
				}
				nodes, pods, err := audit.ListCluster(ctx, kube)
				if err != nil {
					return fmt.Errorf("read nodes and pods from the Kubernetes API: %w", err)
				}
				// Skipped records are reported, not fatal: the rest of
				// the comparison still holds.
				seen := map[string]model.CorruptRecord{}
				st.OnCorrupt(func(r model.CorruptRecord) { seen[r.Key] = r })
				report, err = audit.Check(ctx, st, nodes, pods)
				for _, r := range seen {
					report.Corrupt = append(report.Corrupt, r)
				}
				slices.SortFunc(report.Corrupt, func(a, b model.CorruptRecord) int { return strings.Compare(a.Key, b.Key) })
				return err
			})
			if err != nil {
				return err
			}
			if format == formatJSON {
				v := newCheckJSON(report)
				v.Cluster = cluster
				return writeJSON(o.stdout, v)
			}
			writeClusterLine(o.stdout, cluster)
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
		MissingNodes: []missingNodeJSON{}, LeakCandidates: []leakCandidateJSON{}, Corrupt: []corruptJSON{},
	}
	for _, c := range r.Corrupt {
		v.Corrupt = append(v.Corrupt, corruptJSON{Key: c.Key, Kind: c.Kind, Problem: c.Err.Error()})
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

// corruptJSON is a record the check skipped.
type corruptJSON struct {
	Key     string `json:"key"`
	Kind    string `json:"kind"`
	Problem string `json:"problem"`
}
