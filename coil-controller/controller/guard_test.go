package controller

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestGuardsKeepLiveAddresses runs the controller against the fake
// clientset with a zero grace period, so that anything the guards let
// through would be reclaimed at the first sweep, and checks that a pod
// list that fails, is empty or is mostly missing reclaims nothing, while
// the blocks of a deleted node are still released when pods can be
// listed (else a pod may still be bound to it).
func TestGuardsKeepLiveAddresses(t *testing.T) {
	tests := []struct {
		name       string
		pods       []string // pods of the three records that exist in the API
		failPods   bool     // every pod LIST fails: the cache never syncs
		wantReason string
	}{
		{name: "pod list fails", pods: []string{"a", "b", "c"}, failPods: true, wantReason: "pods-not-synced"},
		{name: "pod list empty", wantReason: "no-pods"},
		{name: "most pods missing", pods: []string{"a"}, wantReason: "too-many-leaks"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			al := newAllocator(st)
			var live []string
			for _, p := range []string{"a", "b", "c"} {
				live = append(live, p)
				al.alloc(t, "n1", "ns", p, false)
			}
			al.alloc(t, "gone", "ns", "x", true)

			objs := []runtime.Object{node("n1")}
			for _, p := range tc.pods {
				objs = append(objs, pod("ns", p, "n1"))
			}
			client := fake.NewClientset(objs...)
			if tc.failPods {
				client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
					return true, nil, errors.New("injected failure")
				})
			}
			reg := prometheus.NewRegistry()
			c := New(st, client, Options{
				ScanInterval: 100 * time.Millisecond, LeakGrace: 0,
				Metrics: NewMetrics(reg), Logger: testLogger(t, "c"),
			})
			stop := runInBackground(t, c.Run)

			if !tc.failPods {
				testenv.Eventually(t, 10*time.Second, "release of the deleted node's block", func() bool {
					return nodeBlocks(t, st, "gone") == 0
				})
			}
			testenv.Eventually(t, 10*time.Second, "guard "+tc.wantReason+" to trip 3 times", func() bool {
				return metricValue(t, reg, "coil_controller_sweep_skipped_total", map[string]string{"reason": tc.wantReason}) >= 3
			})
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if tc.failPods && nodeBlocks(t, st, "gone") != 1 {
				t.Error("the deleted node's block was released although its pods could not be listed")
			}
			addrs, err := st.ListAddresses(context.Background(), "")
			if err != nil {
				t.Fatal(err)
			}
			want := len(live)
			if tc.failPods {
				want++ // the deleted node's, kept with its block
			}
			if len(addrs) != want {
				t.Errorf("%d address records left, want all %d", len(addrs), want)
			}
			if n := metricValue(t, reg, "coil_controller_reclaimed_addresses_total", map[string]string{"cause": causeLeak}); n != 0 {
				t.Errorf("reclaimed %v leaked addresses, want 0", n)
			}
			if n := metricValue(t, reg, "coil_controller_last_successful_sweep_timestamp_seconds", nil); n != 0 {
				t.Errorf("last successful sweep set to %v although every sweep tripped a guard", n)
			}
		})
	}
}

// TestNodeGuard checks that an empty node list releases no block, and
// that a node present in the API is never touched even when its cache
// entry is missing (the quorum read wins).
func TestNodeGuard(t *testing.T) {
	st := newStore(t)
	al := newAllocator(st)
	al.alloc(t, "n1", "ns", "a", false)

	t.Run("empty node list", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		c := New(st, fake.NewClientset(), Options{ScanInterval: 100 * time.Millisecond, Metrics: NewMetrics(reg), Logger: testLogger(t, "c")})
		runInBackground(t, c.Run)
		testenv.Eventually(t, 10*time.Second, "the no-nodes guard", func() bool {
			return metricValue(t, reg, "coil_controller_sweep_skipped_total", map[string]string{"reason": "no-nodes"}) >= 3
		})
		if nodeBlocks(t, st, "n1") != 1 {
			t.Fatal("a block was released although the API listed no node at all")
		}
	})

	t.Run("node hidden from the cache", func(t *testing.T) {
		// The node LIST omits n1 (a stale or partial cache), but GET finds it.
		client := fake.NewClientset(node("n1"), node("n2"), pod("ns", "a", "n1"))
		client.PrependReactor("list", "nodes", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, &corev1.NodeList{Items: []corev1.Node{*node("n2")}}, nil
		})
		reg := prometheus.NewRegistry()
		c := New(st, client, Options{ScanInterval: 100 * time.Millisecond, Metrics: NewMetrics(reg), Logger: testLogger(t, "c")})
		runInBackground(t, c.Run)
		testenv.Eventually(t, 10*time.Second, "a complete sweep", func() bool {
			return metricValue(t, reg, "coil_controller_last_successful_sweep_timestamp_seconds", nil) > 0
		})
		time.Sleep(500 * time.Millisecond)
		if nodeBlocks(t, st, "n1") != 1 || metricValue(t, reg, "coil_controller_reclaimed_blocks_total", nil) != 0 {
			t.Fatal("the block of an existing node was released")
		}
	})
}

// TestCachedPodsOfDeletedNode: the pod cache, indexed by node, keeps the
// blocks of a deleted node while a pod bound to it runs, without the
// quorum list; pods of other nodes and finished pods do not keep them.
func TestCachedPodsOfDeletedNode(t *testing.T) {
	tests := []struct {
		name     string
		pods     []*corev1.Pod
		wantKept bool
	}{
		{name: "running pod bound to it", pods: []*corev1.Pod{pod("ns", "p", "gone")}, wantKept: true},
		{name: "pods of other nodes only", pods: []*corev1.Pod{pod("ns", "p", "n1"), pod("ns", "q", "")}},
		{name: "finished pod bound to it", pods: []*corev1.Pod{func() *corev1.Pod {
			p := pod("ns", "p", "gone")
			p.Status.Phase = corev1.PodSucceeded
			return p
		}()}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := newStore(t)
			al := newAllocator(st)
			// A live node beside it, so the deleted one is not most
			// nodes (the release cap).
			al.alloc(t, "n1", "ns", "a", false)
			al.alloc(t, "gone", "ns", "p", true)
			objs := []runtime.Object{node("n1"), pod("ns", "a", "n1")}
			for _, p := range tc.pods {
				objs = append(objs, p)
			}
			client := fake.NewClientset(objs...)
			// Only the cache may answer: the fake ignores field
			// selectors, and a per-node list would see every pod.
			var quorumLists atomic.Int64
			client.PrependReactor("list", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
				if f := a.(k8stesting.ListAction).GetListRestrictions().Fields; f != nil && !f.Empty() {
					quorumLists.Add(1)
					if tc.wantKept {
						return true, nil, errors.New("injected failure: the cache should have answered")
					}
					return true, &corev1.PodList{}, nil
				}
				return false, nil, nil
			})
			reg := prometheus.NewRegistry()
			c := New(st, client, Options{ScanInterval: 100 * time.Millisecond, NodeRecheckInterval: 100 * time.Millisecond,
				Metrics: NewMetrics(reg), Logger: testLogger(t, "c")})
			stop := runInBackground(t, c.Run)
			if tc.wantKept {
				testenv.Eventually(t, 10*time.Second, "release deferred for the bound pod", func() bool {
					return metricValue(t, reg, "coil_controller_node_release_deferred_total", map[string]string{"reason": deferPodsBound}) >= 1
				})
			} else {
				testenv.Eventually(t, 10*time.Second, "release of the deleted node's block", func() bool {
					return nodeBlocks(t, st, "gone") == 0
				})
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			if kept := nodeBlocks(t, st, "gone") == 1; kept != tc.wantKept {
				t.Errorf("block kept: %v, want %v", kept, tc.wantKept)
			}
		})
	}
}
