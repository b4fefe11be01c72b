package controller

import (
	"context"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	"github.com/coil-project/coil/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// mirrorAnnotation is what kubelet sets on the mirror Pod of a static pod:
// the static pod's config hash, which is also the UID kubelet passes to CNI.
const mirrorAnnotation = "kubernetes.io/config.mirror"

// createMirrorPod creates the mirror Pod kubelet would create for a static
// pod with config hash hash: an ordinary Pod carrying the hash in its
// mirror annotation and bound to its node (the API server gives it a UID
// of its own).
func (c *cluster) createMirrorPod(t *testing.T, name, nodeName, hash string) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.ns, Annotations: map[string]string{mirrorAnnotation: hash}},
		Spec: corev1.PodSpec{
			NodeName:   nodeName,
			Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
	created, err := c.admin.CoreV1().Pods(c.ns).Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create mirror pod: %v", err)
	}
	if string(created.UID) == hash {
		t.Fatal("the API server gave the mirror pod the static pod's UID; the test would prove nothing")
	}
	return created
}

// allocFor allocates the next offset of node's block (acquiring one if
// needed) for a pod whose runtime passed uid as K8S_POD_UID.
func allocFor(t *testing.T, al *allocator, nodeName, ns, name, uid string) model.Address {
	t.Helper()
	ctx := context.Background()
	owner := model.Owner{Node: nodeName, Namespace: ns, Pod: name, ContainerID: "cid-" + name, Interface: "eth0", PodUID: uid}
	b, ok := al.blocks[nodeName]
	if !ok || al.next[nodeName] >= b.Size() {
		b, a, err := al.st.AcquireBlock(ctx, "default", owner)
		if err != nil {
			t.Fatal(err)
		}
		al.blocks[nodeName] = b
		al.next[nodeName] = 1
		return a
	}
	a, err := al.st.AllocateAddress(ctx, b, al.next[nodeName], owner)
	if err != nil {
		t.Fatal(err)
	}
	al.next[nodeName]++
	return a
}

// TestStaticPodAddressKept runs the sweep with a zero grace period against
// the real API: the address of a static pod, recorded under the config
// hash kubelet passed as K8S_POD_UID, matches its mirror Pod (another UID,
// the hash in its annotation) and is kept, while the record of an earlier
// incarnation of a static pod (another hash) and of a replaced ordinary
// pod are still reclaimed.
func TestStaticPodAddressKept(t *testing.T) {
	c := newCluster(t)
	st := newStore(t)
	al := newAllocator(st)
	n1 := c.createNode(t, "n1")

	tests := []struct {
		pod       string
		recordUID string // K8S_POD_UID the record was allocated with
		mirror    string // mirror annotation of the Pod in the API; "" for an ordinary pod
		podUID    bool   // the record carries the ordinary pod's real UID
		kept      bool
	}{
		{pod: "static", recordUID: "hash-current", mirror: "hash-current", kept: true},
		{pod: "static-changed", recordUID: "hash-before", mirror: "hash-after", kept: false},
		{pod: "ordinary", podUID: true, kept: true},
		{pod: "ordinary-replaced", recordUID: "uid-of-earlier-pod", kept: false},
		{pod: "plain-1", kept: true},
		{pod: "plain-2", kept: true},
	}
	records := map[string]model.Address{}
	for _, tc := range tests {
		var uid string
		switch {
		case tc.mirror != "":
			c.createMirrorPod(t, tc.pod, n1, tc.mirror)
			uid = tc.recordUID
		case tc.podUID:
			c.createPod(t, tc.pod, n1)
			p, err := c.admin.CoreV1().Pods(c.ns).Get(context.Background(), tc.pod, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			uid = string(p.UID)
		default:
			c.createPod(t, tc.pod, n1)
			uid = tc.recordUID
		}
		records[tc.pod] = allocFor(t, al, n1, c.ns, tc.pod, uid)
	}

	in := c.start(t, "solo", st, instanceOptions{user: controllerUser,
		opts: Options{ScanInterval: 200 * time.Millisecond, LeakGrace: 0}})
	in.waitLeading(t)
	testenv.Eventually(t, 15*time.Second, "reclaim of the records of replaced pods", func() bool {
		for _, tc := range tests {
			if !tc.kept && exists(t, st, records[tc.pod]) {
				return false
			}
		}
		return true
	})
	// Several more complete sweeps: anything they would reclaim is gone by then.
	since := in.metric(t, "coil_controller_last_successful_sweep_timestamp_seconds", nil)
	sweeps := 0
	testenv.Eventually(t, 15*time.Second, "three more complete sweeps", func() bool {
		if v := in.metric(t, "coil_controller_last_successful_sweep_timestamp_seconds", nil); v > since {
			since = v
			sweeps++
		}
		return sweeps >= 3
	})
	for _, tc := range tests {
		if got := exists(t, st, records[tc.pod]); got != tc.kept {
			t.Errorf("record of %s exists = %v, want %v", tc.pod, got, tc.kept)
		}
	}
	if got := in.metric(t, "coil_controller_leak_candidates", nil); got != 0 {
		t.Errorf("leak candidates after the reclaim = %v, want 0", got)
	}
}
