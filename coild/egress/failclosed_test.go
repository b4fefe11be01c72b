package egress

import (
	"errors"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/coil-project/coil/nodenet"
	"k8s.io/client-go/kubernetes/fake"
)

// TestApplyFailsClosed: programming a pod whose namespace path coild
// cannot see (its sandbox is gone, or the path lives in a mount namespace
// coild does not share) is an error, never a success, and leaves nothing
// recorded as programmed. Before, apply turned the failure into success,
// and SetupPod reported a gateway for a pod whose traffic left with its
// own address.
func TestApplyFailsClosed(t *testing.T) {
	r := New(Config{Node: "n1", Kube: fake.NewClientset()})
	missing := filepath.Join(t.TempDir(), "no-such-netns")
	client := &nodenet.EgressClient{
		IPv4:    netip.MustParseAddr("10.1.0.5"),
		Tunnels: []nodenet.EgressTunnel{{VNI: 7, Destinations: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/24")}, Gateway: netip.MustParseAddr("10.1.0.6")}},
	}
	d := podState{netns: missing, client: client, chosen: map[string]string{"internet/nat": "internet/gw-0"}}
	err := r.apply("app/client", d, true)
	if !errors.Is(err, ErrNetNSGone) {
		t.Errorf("apply into a namespace coild cannot see = %v, want ErrNetNSGone", err)
	}
	if st := r.appliedState("app/client"); !st.empty() || st.netns != "" {
		t.Errorf("state recorded as programmed: %+v", st)
	}
}
