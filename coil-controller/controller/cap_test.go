package controller

import (
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestNodeReleaseCapped runs the sweep against the real API while etcd
// holds the blocks of nodes this API server never had (another cluster's,
// or the controller was given the wrong kubeconfig): 2 of the 3 nodes
// known to etcd look deleted. With the default --max-node-release-ratio
// the sweep releases none of them and says why (metric, event); with the
// ratio raised to 1 it releases both.
func TestNodeReleaseCapped(t *testing.T) {
	tests := []struct {
		name         string
		ratio        float64 // 0: the default
		wantReleased bool
	}{
		{name: "default ratio refuses the batch", wantReleased: false},
		{name: "ratio 1 releases", ratio: 1, wantReleased: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			st := newStore(t)
			al := newAllocator(st)
			ours := c.createNode(t, "ours")
			al.alloc(t, ours, c.ns, "a", false)
			c.createPod(t, "a", ours)
			foreign := []string{c.nodeName("foreign-1"), c.nodeName("foreign-2")}
			for i, n := range foreign {
				al.alloc(t, n, c.ns, "f"+string(rune('1'+i)), false)
			}

			in := c.start(t, "solo", st, instanceOptions{user: controllerUser,
				opts: Options{ScanInterval: 200 * time.Millisecond, LeakGrace: time.Hour, MaxNodeReleaseRatio: tc.ratio}})
			in.waitLeading(t)
			if tc.wantReleased {
				testenv.Eventually(t, 10*time.Second, "release of the missing nodes' blocks", func() bool {
					return nodeBlocks(t, st, foreign[0]) == 0 && nodeBlocks(t, st, foreign[1]) == 0
				})
			} else {
				testenv.Eventually(t, 10*time.Second, "the node release cap to trip 3 times", func() bool {
					return in.metric(t, "coil_controller_sweep_skipped_total", map[string]string{"reason": "too-many-nodes"}) >= 3
				})
				for _, n := range foreign {
					if nodeBlocks(t, st, n) != 1 {
						t.Errorf("block of %s released although the cap tripped", n)
					}
				}
				if got := in.metric(t, "coil_controller_reclaimed_blocks_total", nil); got != 0 {
					t.Errorf("reclaimed blocks = %v, want 0", got)
				}
				testenv.Eventually(t, 10*time.Second, "a NodeReleaseRefused event", func() bool {
					return hasReason(c.events(t, metav1.NamespaceDefault, "kube-system"), EventNodeReleaseRefused)
				})
			}
			if nodeBlocks(t, st, ours) != 1 {
				t.Error("the block of the existing node was released")
			}
		})
	}
}
