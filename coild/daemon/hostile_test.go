package daemon_test

import (
	"testing"
	"time"

	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	nodetest "github.com/coil-project/coil/internal/testenv/node"
	"github.com/vishvananda/netlink"

	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/nodenet"
)

// TestHostilePodCannotCrashCoild: a pod with CAP_NET_ADMIN that creates a
// link of another type under the name of coil's client tunnel and opts in
// to an egress gets a failed ADD (and its address back); coild keeps
// running and serves the next pod, whose egress works. Before, coild
// panicked on the link, and again after every restart.
func TestHostilePodCannotCrashCoild(t *testing.T) {
	n, ext, eg := newEgressNode(t)
	n.StartPod(nodetest.NewPod(t, "internet", "gw-0"), map[string]string{model.EgressGatewayLabel: "nat"}, nil)
	optIn := map[string]string{model.EgressClientAnnotationPrefix + "internet": "nat"}

	hostile := nodetest.NewPod(t, "app", "hostile")
	netnstest.Do(t, hostile.NS, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nodenet.EgressClientLinkName(eg.VNI)}, PeerName: "decoy0"})
	})
	n.CreatePod(hostile, nil, optIn)
	if _, err := n.TryAdd(hostile); err == nil {
		t.Errorf("ADD of a pod whose tunnel name is taken by a veth succeeded")
	}
	for _, a := range n.AddressRecords() {
		if a.Pod == "hostile" {
			t.Errorf("the failed ADD kept address %s", a.IPv4)
		}
	}

	// coild is still there, and the next pod gets its egress.
	n.Status()
	good := nodetest.NewPod(t, "app", "good")
	n.CreatePod(good, nil, optIn)
	n.Add(good)
	if _, err := netnstest.SeenAs(good.NS, ext.server4, 5*time.Second); err != nil {
		t.Errorf("a well-behaved client after the hostile one cannot reach the external host: %v", err)
	}
}
