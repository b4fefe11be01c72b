package audit

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func node(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func pod(ns, name, nodeName string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.PodSpec{NodeName: nodeName}}
}

func block(nodeName string, index int) model.Block {
	return model.Block{Pool: "default", Index: index, Node: nodeName, Revision: int64(100 + index),
		IPv4: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(index * 4)}), 30)}
}

func addr(nodeName string, blk, off int, ns, podName string) model.Address {
	return model.Address{Pool: "default", Block: blk, Offset: off, Revision: int64(1000 + blk*10 + off),
		IPv4:  netip.AddrFrom4([4]byte{10, 0, 0, byte(blk*4 + off)}),
		Owner: model.Owner{Node: nodeName, Namespace: ns, Pod: podName, ContainerID: "c-" + podName}}
}

func withUID(a model.Address, uid string) model.Address {
	a.PodUID = uid
	return a
}

func podUID(p *corev1.Pod, uid string) *corev1.Pod {
	p.UID = types.UID(uid)
	return p
}

// mirror makes p the mirror Pod of a static pod whose config hash (the UID
// kubelet passes to CNI) is hash.
func mirror(p *corev1.Pod, hash string) *corev1.Pod {
	p.Annotations = map[string]string{MirrorPodAnnotation: hash}
	return p
}

func TestCompare(t *testing.T) {
	// n1 exists with blocks 0 and 1; n2 was deleted and owns block 2;
	// n3 was deleted and only has a node record.
	snap := Snapshot{
		Blocks: []model.Block{block("n1", 0), block("n1", 1), block("n2", 2)},
		Addresses: []model.Address{
			addr("n1", 0, 0, "ns", "live"),
			addr("n1", 0, 1, "ns", "gone"),
			addr("n1", 0, 2, "ns", "moved"),
			addr("n1", 1, 0, "ns", "unscheduled"),
			addr("n1", 1, 1, "", ""),
			withUID(addr("n1", 1, 2, "ns", "replaced"), "uid-old"),
			withUID(addr("n1", 1, 3, "ns", "same-uid"), "uid-1"),
			addr("n2", 2, 0, "ns", "on-deleted-node"),
			withUID(addr("n1", 0, 3, "ns", "static"), "hash-1"),
			withUID(addr("n1", 1, 4, "ns", "static-changed"), "hash-old"),
		},
		Nodes: []model.Node{{Name: "n1"}, {Name: "n3"}},
	}
	nodes := []*corev1.Node{node("n1"), node("other")}
	pods := []*corev1.Pod{pod("ns", "live", "n1"), pod("ns", "moved", "other"), pod("ns", "unscheduled", ""),
		podUID(pod("ns", "replaced", "n1"), "uid-new"), podUID(pod("ns", "same-uid", "n1"), "uid-1"),
		mirror(podUID(pod("ns", "static", "n1"), "uid-mirror-1"), "hash-1"),
		mirror(podUID(pod("ns", "static-changed", "n1"), "uid-mirror-2"), "hash-new")}

	type leak struct {
		pod    string
		reason LeakReason
	}
	tests := []struct {
		name         string
		checkPods    bool
		pods         []*corev1.Pod
		wantMissing  []string
		wantLeaks    []leak
		unattributed int
	}{
		{
			name: "pods checked", checkPods: true, pods: pods,
			wantMissing: []string{"n2", "n3"},
			wantLeaks: []leak{{"gone", ReasonPodNotFound}, {"moved", ReasonPodOnOtherNode}, {"unscheduled", ReasonPodOnOtherNode},
				{"replaced", ReasonPodReplaced}, {"static-changed", ReasonPodReplaced}},
			unattributed: 1,
		},
		{
			name: "pods not checked", checkPods: false, pods: nil,
			wantMissing:  []string{"n2", "n3"},
			unattributed: 1,
		},
		{
			name: "no pods: every attributed record outside missing nodes", checkPods: true, pods: nil,
			wantMissing: []string{"n2", "n3"},
			wantLeaks: []leak{{"live", ReasonPodNotFound}, {"gone", ReasonPodNotFound}, {"moved", ReasonPodNotFound},
				{"static", ReasonPodNotFound}, {"unscheduled", ReasonPodNotFound}, {"replaced", ReasonPodNotFound},
				{"same-uid", ReasonPodNotFound}, {"static-changed", ReasonPodNotFound}},
			unattributed: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := Compare(snap, nodes, tc.pods, tc.checkPods, time.Now())
			var missing []string
			for _, m := range r.MissingNodes {
				missing = append(missing, m.Name)
			}
			if !slices.Equal(missing, tc.wantMissing) {
				t.Errorf("missing nodes = %v, want %v", missing, tc.wantMissing)
			}
			var leaks []leak
			for _, c := range r.LeakCandidates {
				leaks = append(leaks, leak{c.Address.Pod, c.Reason})
			}
			if !slices.Equal(leaks, tc.wantLeaks) {
				t.Errorf("leaks = %v, want %v", leaks, tc.wantLeaks)
			}
			if r.Unattributed != tc.unattributed {
				t.Errorf("unattributed = %d, want %d", r.Unattributed, tc.unattributed)
			}
			if r.Blocks != 3 || r.Addresses != 10 {
				t.Errorf("counts = %d blocks, %d addresses", r.Blocks, r.Addresses)
			}
		})
	}

	r := Compare(snap, nodes, pods, true, time.Now())
	if n2 := r.MissingNodes[0]; len(n2.Blocks) != 1 || n2.Addresses != 1 || n2.HasRecord {
		t.Errorf("n2 = %+v, want 1 block with 1 address and no record", n2)
	}
	if n3 := r.MissingNodes[1]; len(n3.Blocks) != 0 || !n3.HasRecord {
		t.Errorf("n3 = %+v, want only a record", n3)
	}
	wantUsage := []Usage{{"default", "n1", 2, 9}, {"default", "n2", 1, 1}}
	if !slices.Equal(r.Usage, wantUsage) {
		t.Errorf("usage = %v, want %v", r.Usage, wantUsage)
	}
	var out strings.Builder
	if err := r.WriteTable(&out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"MISSING NODE", "n2", "ns/gone", "pod-on-other-node (other)", "pod-on-other-node (unscheduled)", "pod-replaced"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestGuards(t *testing.T) {
	cands := func(n int) []LeakCandidate { return make([]LeakCandidate, n) }
	tests := []struct {
		name      string
		report    Report
		ratio     float64
		wantLeak  error
		wantNodes error
	}{
		{name: "healthy", report: Report{Nodes: 3, Pods: 10, PodsChecked: true, Addresses: 10, LeakCandidates: cands(2)}, ratio: 0.5},
		{name: "nothing to do", report: Report{PodsChecked: true}, ratio: 0.5},
		{name: "exactly at the ratio", report: Report{Nodes: 1, Pods: 2, PodsChecked: true, Addresses: 4, LeakCandidates: cands(2)}, ratio: 0.5},
		{
			name: "records of missing nodes do not dilute the ratio",
			report: Report{Nodes: 1, Pods: 1, PodsChecked: true, Addresses: 5, Unattributed: 1, LeakCandidates: cands(2),
				MissingNodes: []MissingNode{{Name: "gone", Addresses: 1}}},
			ratio: 0.5, wantLeak: ErrTooManyLeaks,
		},
		{name: "over the ratio", report: Report{Nodes: 1, Pods: 1, PodsChecked: true, Addresses: 4, LeakCandidates: cands(3)}, ratio: 0.5, wantLeak: ErrTooManyLeaks},
		{name: "pods not synced", report: Report{Nodes: 1, Addresses: 4}, ratio: 0.5, wantLeak: ErrNotSynced},
		{name: "empty pod list", report: Report{Nodes: 1, PodsChecked: true, Addresses: 4, LeakCandidates: cands(1)}, ratio: 1, wantLeak: ErrNoPods},
		{
			name:   "empty node list",
			report: Report{PodsChecked: true, Pods: 3, Addresses: 4, LeakCandidates: cands(1), MissingNodes: []MissingNode{{Name: "a"}}}, ratio: 1,
			wantLeak: ErrNoNodes, wantNodes: ErrNoNodes,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.report.LeakGuard(tc.ratio); !errors.Is(err, tc.wantLeak) || (err == nil) != (tc.wantLeak == nil) {
				t.Errorf("LeakGuard = %v, want %v", err, tc.wantLeak)
			}
			if err := tc.report.NodeGuard(); !errors.Is(err, tc.wantNodes) || (err == nil) != (tc.wantNodes == nil) {
				t.Errorf("NodeGuard = %v, want %v", err, tc.wantNodes)
			}
		})
	}
}

func TestNodeReleaseGuard(t *testing.T) {
	missing := func(n int) []MissingNode { return make([]MissingNode, n) }
	tests := []struct {
		name   string
		report Report
		ratio  float64
		want   error
	}{
		{name: "nothing missing", report: Report{EtcdNodes: 3}, ratio: 0.5},
		{name: "one of three", report: Report{EtcdNodes: 3, MissingNodes: missing(1)}, ratio: 0.5},
		{name: "exactly at the ratio", report: Report{EtcdNodes: 4, MissingNodes: missing(2)}, ratio: 0.5},
		{name: "two of three", report: Report{EtcdNodes: 3, MissingNodes: missing(2)}, ratio: 0.5, want: ErrTooManyNodes},
		{name: "every node", report: Report{EtcdNodes: 5, MissingNodes: missing(5)}, ratio: 0.5, want: ErrTooManyNodes},
		{name: "every node, ratio 1", report: Report{EtcdNodes: 5, MissingNodes: missing(5)}, ratio: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.report.NodeReleaseGuard(tc.ratio); !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Errorf("NodeReleaseGuard = %v, want %v", err, tc.want)
			}
		})
	}
	// Compare counts the nodes known to etcd: block owners and records.
	snap := Snapshot{Blocks: []model.Block{block("a", 0), block("a", 1), block("b", 2)}, Nodes: []model.Node{{Name: "b"}, {Name: "c"}}}
	if r := Compare(snap, []*corev1.Node{node("a")}, nil, false, time.Now()); r.EtcdNodes != 3 {
		t.Errorf("EtcdNodes = %d, want 3", r.EtcdNodes)
	}
}
