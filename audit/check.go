// Package audit compares Coil's state in etcd with the cluster's Nodes and
// Pods, read-only: blocks of nodes that are gone, addresses whose pod is
// gone. coil-controller acts on the Report behind its guards; `coilctl
// check` prints it.
package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/coil-project/coil/model"
	corev1 "k8s.io/api/core/v1"
)

// Reader is the part of model.Store that Check reads.
type Reader interface {
	ListBlocks(ctx context.Context, pool string) ([]model.Block, error)
	ListAddresses(ctx context.Context, pool string) ([]model.Address, error)
	ListNodes(ctx context.Context) ([]model.Node, error)
}

// Guard errors: Report.NodeGuard and Report.LeakGuard return them (wrapped
// with numbers) when acting on a report could free live state. A caller
// such as coil-controller then releases nothing and reports why.
var (
	// ErrNotSynced: the informer cache has not completed its first list,
	// so an absent object may merely not have arrived yet.
	ErrNotSynced = errors.New("informer cache not synced")
	// ErrNoNodes: the API lists no Node although etcd holds blocks. A
	// cluster running coil-controller has at least the node it runs on,
	// so the list is wrong (wrong cluster, wrong credentials, bad cache).
	ErrNoNodes = errors.New("API lists no nodes")
	// ErrNoPods: the API lists no Pod although etcd holds addresses.
	ErrNoPods = errors.New("API lists no pods")
	// ErrTooManyLeaks: more records than the configured share look
	// leaked, which points at an incomplete pod list, not at real leaks.
	ErrTooManyLeaks = errors.New("too many leak candidates")
	// ErrTooManyNodes: more than the configured share of the nodes known
	// to etcd look deleted, which points at the wrong cluster or a bad
	// node list, not at that many real deletions.
	ErrTooManyNodes = errors.New("too many missing nodes")
)

// LeakReason says why an address record looks leaked.
type LeakReason string

// Leak reasons.
const (
	// ReasonPodNotFound: no Pod of the record's namespace and name exists.
	ReasonPodNotFound LeakReason = "pod-not-found"
	// ReasonPodOnOtherNode: the Pod exists but is scheduled to another node
	// (or to none), so the record belongs to an earlier incarnation.
	ReasonPodOnOtherNode LeakReason = "pod-on-other-node"
	// ReasonPodReplaced: a Pod of that namespace and name exists on the
	// record's node, but it is a later pod (another UID) than the one the
	// address was allocated to.
	ReasonPodReplaced LeakReason = "pod-replaced"
)

// MissingNode is a node that owns blocks or has a node record in etcd but
// no Node in the API.
type MissingNode struct {
	Name string
	// Blocks are the node's blocks; releasing them frees their addresses.
	Blocks []model.Block
	// Addresses counts the address records inside Blocks.
	Addresses int
	// HasRecord is true when etcd holds a node record for it.
	HasRecord bool
}

// LeakCandidate is an address record whose pod is gone or elsewhere. It is
// only a candidate: coil-controller waits for --leak-grace before acting.
type LeakCandidate struct {
	Address model.Address
	Reason  LeakReason
	// PodNode is the node the pod is scheduled to, for ReasonPodOnOtherNode.
	PodNode string
}

// Usage counts the blocks and addresses one node holds in one pool.
type Usage struct {
	Pool      string
	Node      string
	Blocks    int
	Addresses int
}

// Report is the result of comparing etcd with the API. It is a value:
// producing it changes nothing.
type Report struct {
	// Time is when the comparison was made.
	Time time.Time
	// Nodes and Pods count the objects listed from the API. PodsChecked is
	// false when the pod list was not available, so no leak candidates were
	// computed.
	Nodes       int
	Pods        int
	PodsChecked bool
	// Blocks and Addresses count the records in etcd.
	Blocks    int
	Addresses int
	// EtcdNodes counts the nodes known to etcd: those owning blocks or
	// having a node record.
	EtcdNodes int
	// Unattributed counts address records without a namespace and pod name
	// (allocated outside Kubernetes); they are never leak candidates
	// because no pod can be compared with them.
	Unattributed int
	// Usage is per pool and node, sorted by pool then node.
	Usage []Usage
	// MissingNodes is sorted by name.
	MissingNodes []MissingNode
	// LeakCandidates is sorted by pool, subnet, block and offset. Addresses
	// in blocks of missing nodes are not listed: they go with the block.
	LeakCandidates []LeakCandidate
	// Corrupt lists the records the reads skipped because they do not
	// decode or sit under a key of the wrong shape, sorted by key. The
	// caller fills it from the store's OnCorrupt hook.
	Corrupt []model.CorruptRecord
}

// Snapshot is what the comparison reads from etcd.
type Snapshot struct {
	Blocks    []model.Block
	Addresses []model.Address
	Nodes     []model.Node
}

// ReadSnapshot reads every block, address record and node record.
func ReadSnapshot(ctx context.Context, st Reader) (Snapshot, error) {
	var s Snapshot
	var err error
	// Blocks first: an address allocated in a block acquired after this read
	// is simply not considered now; the next sweep sees both.
	if s.Blocks, err = st.ListBlocks(ctx, ""); err != nil {
		return Snapshot{}, fmt.Errorf("read blocks: %w", err)
	}
	if s.Addresses, err = st.ListAddresses(ctx, ""); err != nil {
		return Snapshot{}, fmt.Errorf("read addresses: %w", err)
	}
	if s.Nodes, err = st.ListNodes(ctx); err != nil {
		return Snapshot{}, fmt.Errorf("read node records: %w", err)
	}
	return s, nil
}

// Check compares Coil's state in etcd with the cluster's Nodes and Pods and
// reports blocks of nodes that no longer exist and addresses whose pod is
// gone. It only reads. nodes and pods must be complete lists (for example
// from ListCluster); apply Report.NodeGuard and Report.LeakGuard before
// acting on the result.
func Check(ctx context.Context, st Reader, nodes []*corev1.Node, pods []*corev1.Pod) (Report, error) {
	snap, err := ReadSnapshot(ctx, st)
	if err != nil {
		return Report{}, fmt.Errorf("check: %w", err)
	}
	return Compare(snap, nodes, pods, true, time.Now()), nil
}

type blockID struct {
	pool          string
	subnet, index int
}

func addressBlock(a model.Address) blockID { return blockID{a.Pool, a.Subnet, a.Block} }

// Compare is the pure part of Check, for callers that read the snapshot
// and the API themselves (coil-controller, from its informer caches). With
// checkPods false the pod list is ignored and no leak candidates are
// computed; now becomes Report.Time.
func Compare(snap Snapshot, nodes []*corev1.Node, pods []*corev1.Pod, checkPods bool, now time.Time) Report {
	r := Report{
		Time:        now,
		Nodes:       len(nodes),
		Pods:        len(pods),
		PodsChecked: checkPods,
		Blocks:      len(snap.Blocks),
		Addresses:   len(snap.Addresses),
	}
	if !checkPods {
		r.Pods = 0
	}
	existing := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		existing[n.Name] = true
	}

	// Usage and missing nodes.
	type poolNode struct{ pool, node string }
	usage := map[poolNode]*Usage{}
	use := func(pool, node string) *Usage {
		k := poolNode{pool, node}
		if usage[k] == nil {
			usage[k] = &Usage{Pool: pool, Node: node}
		}
		return usage[k]
	}
	missing := map[string]*MissingNode{}
	miss := func(name string) *MissingNode {
		if missing[name] == nil {
			missing[name] = &MissingNode{Name: name}
		}
		return missing[name]
	}
	missingBlock := map[blockID]*MissingNode{}
	for _, b := range snap.Blocks {
		use(b.Pool, b.Node).Blocks++
		if !existing[b.Node] {
			m := miss(b.Node)
			m.Blocks = append(m.Blocks, b)
			missingBlock[blockID{b.Pool, b.Subnet, b.Index}] = m
		}
	}
	for _, n := range snap.Nodes {
		if !existing[n.Name] {
			miss(n.Name).HasRecord = true
		}
	}
	known := make(map[string]bool, len(snap.Nodes))
	for _, b := range snap.Blocks {
		known[b.Node] = true
	}
	for _, n := range snap.Nodes {
		known[n.Name] = true
	}
	r.EtcdNodes = len(known)

	type podKey struct{ namespace, name string }
	var podIndex map[podKey]*corev1.Pod
	if checkPods {
		podIndex = make(map[podKey]*corev1.Pod, len(pods))
		for _, p := range pods {
			podIndex[podKey{p.Namespace, p.Name}] = p
		}
	}
	for _, a := range snap.Addresses {
		use(a.Pool, a.Node).Addresses++
		if m := missingBlock[addressBlock(a)]; m != nil {
			m.Addresses++
			continue
		}
		if a.Namespace == "" || a.Pod == "" {
			r.Unattributed++
			continue
		}
		if !checkPods {
			continue
		}
		p, ok := podIndex[podKey{a.Namespace, a.Pod}]
		switch {
		case !ok:
			r.LeakCandidates = append(r.LeakCandidates, LeakCandidate{Address: a, Reason: ReasonPodNotFound})
		case p.Spec.NodeName != a.Node:
			r.LeakCandidates = append(r.LeakCandidates, LeakCandidate{Address: a, Reason: ReasonPodOnOtherNode, PodNode: p.Spec.NodeName})
		case !IsPodUID(p, a.PodUID):
			r.LeakCandidates = append(r.LeakCandidates, LeakCandidate{Address: a, Reason: ReasonPodReplaced, PodNode: p.Spec.NodeName})
		}
	}

	for _, u := range usage {
		r.Usage = append(r.Usage, *u)
	}
	sort.Slice(r.Usage, func(i, j int) bool {
		if r.Usage[i].Pool != r.Usage[j].Pool {
			return r.Usage[i].Pool < r.Usage[j].Pool
		}
		return r.Usage[i].Node < r.Usage[j].Node
	})
	for _, m := range missing {
		r.MissingNodes = append(r.MissingNodes, *m)
	}
	sort.Slice(r.MissingNodes, func(i, j int) bool { return r.MissingNodes[i].Name < r.MissingNodes[j].Name })
	sort.Slice(r.LeakCandidates, func(i, j int) bool {
		a, b := r.LeakCandidates[i].Address, r.LeakCandidates[j].Address
		if a.Pool != b.Pool {
			return a.Pool < b.Pool
		}
		if a.Subnet != b.Subnet {
			return a.Subnet < b.Subnet
		}
		if a.Block != b.Block {
			return a.Block < b.Block
		}
		return a.Offset < b.Offset
	})
	return r
}

// MirrorPodAnnotation is the annotation kubelet puts on the mirror Pod of
// a static pod: the static pod's config hash. kubelet passes that hash to
// CNI as K8S_POD_UID, while the mirror Pod in the API has a UID of its own.
const MirrorPodAnnotation = "kubernetes.io/config.mirror"

// IsPodUID reports whether uid, the K8S_POD_UID an address was allocated
// under, names the pod p: its UID or, for the mirror Pod of a static pod,
// the config hash in its MirrorPodAnnotation. An empty uid (a runtime
// that passed none) matches any pod.
func IsPodUID(p *corev1.Pod, uid string) bool {
	if uid == "" || string(p.UID) == uid {
		return true
	}
	hash, ok := p.Annotations[MirrorPodAnnotation]
	return ok && hash == uid
}

// NodeGuard returns nil when it is safe to release the blocks of
// MissingNodes, or ErrNoNodes when the node list cannot be right.
func (r Report) NodeGuard() error {
	if r.Nodes == 0 && len(r.MissingNodes) > 0 {
		return fmt.Errorf("%w while %d nodes own blocks or records in etcd", ErrNoNodes, len(r.MissingNodes))
	}
	return nil
}

// NodeReleaseGuard returns nil when releasing every one of MissingNodes
// at once is plausible: at most maxRatio of the nodes known to etcd are
// missing from the API. Otherwise it returns ErrTooManyNodes, and nothing
// of the batch should be released: a wrong kubeconfig or two clusters
// sharing one etcd prefix make most nodes look deleted.
func (r Report) NodeReleaseGuard(maxRatio float64) error {
	if len(r.MissingNodes) == 0 {
		return nil
	}
	ratio := float64(len(r.MissingNodes)) / float64(max(r.EtcdNodes, 1))
	if ratio > maxRatio {
		return fmt.Errorf("%w: %d of %d nodes known to etcd (%.0f%%, limit %.0f%%)",
			ErrTooManyNodes, len(r.MissingNodes), r.EtcdNodes, 100*ratio, 100*maxRatio)
	}
	return nil
}

// LeakGuard returns nil when it is safe to reclaim LeakCandidates: the pod
// list was read, is not empty, and at most maxRatio of the address records
// compared with it (those outside blocks of missing nodes and with a pod
// name) look leaked. Otherwise it returns ErrNotSynced, ErrNoNodes, ErrNoPods or
// ErrTooManyLeaks.
func (r Report) LeakGuard(maxRatio float64) error {
	switch {
	case !r.PodsChecked:
		return fmt.Errorf("pods: %w", ErrNotSynced)
	case len(r.LeakCandidates) == 0:
		return nil
	case r.Nodes == 0:
		return fmt.Errorf("%w while %d address records exist", ErrNoNodes, r.Addresses)
	case r.Pods == 0:
		return fmt.Errorf("%w while %d address records exist", ErrNoPods, r.Addresses)
	}
	// The share is taken of the records that were judged by the pod list:
	// counting those of missing nodes or without a pod would dilute it.
	judged := r.Addresses - r.Unattributed
	for _, m := range r.MissingNodes {
		judged -= m.Addresses
	}
	ratio := float64(len(r.LeakCandidates)) / float64(max(judged, 1))
	if ratio > maxRatio {
		return fmt.Errorf("%w: %d of %d address records (%.0f%%, limit %.0f%%)",
			ErrTooManyLeaks, len(r.LeakCandidates), judged, 100*ratio, 100*maxRatio)
	}
	return nil
}

// WriteTable writes the report as aligned text tables: usage, missing
// nodes and leak candidates.
func (r Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "API: %d nodes, %d pods; etcd: %d blocks, %d addresses (%d without pod)\n",
		r.Nodes, r.Pods, r.Blocks, r.Addresses, r.Unattributed)
	fmt.Fprintln(tw, "\nPOOL\tNODE\tBLOCKS\tADDRESSES")
	for _, u := range r.Usage {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", u.Pool, u.Node, u.Blocks, u.Addresses)
	}
	fmt.Fprintln(tw, "\nMISSING NODE\tBLOCKS\tADDRESSES\tNODE RECORD\tBLOCK LIST")
	for _, m := range r.MissingNodes {
		ids := make([]string, 0, len(m.Blocks))
		for _, b := range m.Blocks {
			ids = append(ids, b.ID()+"="+b.String())
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%t\t%s\n", m.Name, len(m.Blocks), m.Addresses, m.HasRecord, strings.Join(ids, " "))
	}
	if len(r.Corrupt) > 0 {
		fmt.Fprintln(tw, "\nCORRUPT RECORD\tKIND\tPROBLEM")
		for _, c := range r.Corrupt {
			fmt.Fprintf(tw, "%s\t%s\t%v\n", c.Key, c.Kind, c.Err)
		}
	}
	if !r.PodsChecked {
		fmt.Fprintln(tw, "\nleak candidates: not checked (pod list unavailable)")
		return tw.Flush()
	}
	fmt.Fprintln(tw, "\nADDRESS\tPOOL\tNODE\tPOD\tCONTAINER\tCREATED\tREASON")
	for _, c := range r.LeakCandidates {
		a := c.Address
		ips := make([]string, 0, 2)
		for _, ip := range a.IPs() {
			ips = append(ips, ip.String())
		}
		reason := string(c.Reason)
		if c.Reason == ReasonPodOnOtherNode {
			reason += " (" + valueOr(c.PodNode, "unscheduled") + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s/%s\t%s\t%s\t%s\n", strings.Join(ips, ","), a.Pool, a.Node,
			a.Namespace, a.Pod, ShortID(a.ContainerID), a.CreatedAt.UTC().Format(time.RFC3339), reason)
	}
	return tw.Flush()
}

func valueOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// ShortID shortens a container ID to its first 12 characters, as tables
// and events show it.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
