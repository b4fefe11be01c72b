package daemon_test

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/coil-project/coil/internal/testenv"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	nodetest "github.com/coil-project/coil/internal/testenv/node"
	"github.com/coil-project/coil/model"
)

// TestSecondInterface checks that a pod attached by coil twice (eth0 by
// the node's network, net1 by a second network as Multus does it) keeps
// both interfaces: each has its own host veth and address and passes
// traffic, and DEL of net1 leaves eth0 working. Before, both interfaces
// got the same host veth name, so ADD of net1 deleted eth0's veth.
func TestSecondInterface(t *testing.T) {
	n := env.NewNode(t, nodetest.Options{Pools: []model.Pool{pool(t, "default", 4, "10.10.0.0/24")}})
	second := n.SecondConflist("coil-second")
	nodeListener := netnstest.Listen(t, n.NS, nodetest.IPv4, 0)

	p := nodetest.NewPod(t, "default", "multi")
	eth0 := n.Add(p)
	net1 := n.AddOn(p, second, "net1")
	if len(eth0) != 1 || len(net1) != 1 || eth0[0] == net1[0] {
		t.Fatalf("eth0 got %v, net1 got %v: want one distinct address each", eth0, net1)
	}
	if p.HostVeth() == p.HostVethOf("net1") {
		t.Errorf("eth0 and net1 share the host veth name %s", p.HostVeth())
	}

	// reachable says whether the node reaches the pod on each address.
	reachable := func(when string, addrs ...netip.Addr) {
		t.Helper()
		for _, a := range addrs {
			if err := netnstest.Dial(n.NS, netnstest.Listen(t, p.NS, a, 0)); err != nil {
				t.Errorf("%s: the node cannot reach the pod at %s: %v", when, a, err)
			}
		}
		if err := netnstest.Dial(p.NS, nodeListener); err != nil {
			t.Errorf("%s: the pod cannot reach the node: %v", when, err)
		}
	}

	tests := []struct {
		ifName, veth string
		addrs        []netip.Addr
	}{
		{"eth0", p.HostVeth(), eth0},
		{"net1", p.HostVethOf("net1"), net1},
	}
	for _, tt := range tests {
		if !n.LinkExists(tt.veth) {
			t.Errorf("host veth %s of %s missing after both ADDs", tt.veth, tt.ifName)
		}
		if got := p.AddrsOn(t, tt.ifName); !slices.Equal(got, tt.addrs) {
			t.Errorf("%s holds %v, want %v", tt.ifName, got, tt.addrs)
		}
		if got, want := n.HostRoutes(tt.veth), []netip.Prefix{netip.PrefixFrom(tt.addrs[0], 32)}; !slices.Equal(got, want) {
			t.Errorf("node routes through %s: %v, want %v", tt.veth, got, want)
		}
	}
	reachable("after both ADDs", eth0[0], net1[0])

	// A house-keeping scan must keep both veths: neither is a leftover.
	time.Sleep(3 * 200 * time.Millisecond)
	for _, tt := range tests {
		if !n.LinkExists(tt.veth) {
			t.Errorf("house-keeping removed host veth %s of %s", tt.veth, tt.ifName)
		}
	}

	n.DelOn(p, second, "net1")
	testenv.Eventually(t, 10*time.Second, "the host veth of net1 to go after its DEL", func() bool { return !n.LinkExists(p.HostVethOf("net1")) })
	if !n.LinkExists(p.HostVeth()) {
		t.Fatalf("DEL of net1 removed eth0's host veth %s", p.HostVeth())
	}
	reachable("after DEL of net1", eth0[0])
	if err := n.Check(p); err != nil {
		t.Errorf("CHECK of eth0 after DEL of net1: %v", err)
	}
	recs := n.AddressRecords()
	if len(recs) != 1 || recs[0].Interface != "eth0" {
		t.Errorf("address records after DEL of net1: %+v, want eth0's alone", recs)
	}
}

// TestGCOfOneNetworkKeepsOthers checks that CNI GC of one network
// configuration frees only that network's stale addresses: a pod attached
// to two coil networks keeps its second network's address when the first
// network is collected (and the other way round), while a stale
// attachment of the collected network is freed. Before, GC freed every
// attachment the runtime did not list, and a runtime lists only the
// attachments of the network it collects.
func TestGCOfOneNetworkKeepsOthers(t *testing.T) {
	n := env.NewNode(t, nodetest.Options{
		Pools:    []model.Pool{pool(t, "default", 4, "10.10.0.0/24")},
		GCMinAge: time.Nanosecond,
	})
	first, second := n.Conflist(), n.SecondConflist("coil-second")

	p := nodetest.NewPod(t, "default", "multi")
	eth0 := n.Add(p)
	net1 := n.AddOn(p, second, "net1")
	stale := nodetest.NewPod(t, "default", "stale")
	n.Add(stale)

	tests := []struct {
		name     string
		conflist []byte
		valid    []types.GCAttachment
		// want are the attachments (container/interface) left afterwards.
		want []string
	}{
		{"gc of the first network", first, []types.GCAttachment{{ContainerID: p.ContainerID, IfName: "eth0"}},
			[]string{p.ContainerID + "/eth0", p.ContainerID + "/net1"}},
		{"gc of the second network", second, []types.GCAttachment{{ContainerID: p.ContainerID, IfName: "net1"}},
			[]string{p.ContainerID + "/eth0", p.ContainerID + "/net1"}},
		{"gc of the second network without the pod", second, nil,
			[]string{p.ContainerID + "/eth0"}},
	}
	for _, tt := range tests {
		if err := n.GCOn(tt.conflist, tt.valid); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var got []string
		for _, r := range n.AddressRecords() {
			got = append(got, r.ContainerID+"/"+r.Interface)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(tt.want))
		if !slices.Equal(got, want) {
			t.Errorf("%s: address records %v, want %v", tt.name, got, want)
		}
	}
	if got := n.StatusAddresses(); !slices.Contains(got, eth0[0]) || slices.Contains(got, net1[0]) {
		t.Errorf("/status after the GCs: %v, want %s and not %s", got, eth0[0], net1[0])
	}
}
