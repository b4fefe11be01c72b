package mtest

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestEgress runs egress NAT across nodes: a client pod on one node reaches
// an external host through gateway pods on the others, which the external
// host sees as the source; a pod without the annotation cannot get an
// answer; a coild restart leaves exactly one copy of every setting; when
// a gateway goes away its clients move to the other one within 5 seconds;
// changing the egress's destinations in place moves the clients' routes
// without cutting connections to the destinations that stay; deleting the
// egress removes the tunnels.
func TestEgress(t *testing.T) {
	c := newCluster(t, Options{Nodes: 3, FlatL2: true, External: true})
	ctx := context.Background()
	ext := c.External
	mustCoilctl(t, c, "pool", "create", "default", "10.100.0.0/16", "5", "--ipv6", "fd00:10:100::/112")
	mustCoilctl(t, c, "pool", "create", "egress", "10.102.0.0/24", "4", "--ipv6", "fd00:10:102::/120")
	if err := c.CreateNamespace(ctx, "internet", map[string]string{"coil.cybozu.com/pool": "egress"}); err != nil {
		t.Fatal(err)
	}
	mustCoilctl(t, c, "egress", "create", "internet", "nat", "--destinations", externalNet4+","+externalNet6)

	gateways := map[netip.Addr]*Pod{}
	var gwPods []*Pod
	step(t, "gateway pods", func(t *testing.T) {
		for i, n := range c.Nodes[:2] {
			p, err := n.StartPodWith(ctx, "internet", fmt.Sprintf("nat-%d", i), PodMeta{Labels: map[string]string{"coil.cybozu.com/egress": "nat"}})
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range p.IPs {
				gateways[a] = p
			}
			gwPods = append(gwPods, p)
		}
		// The outside routes back to the egress pool, and only to it.
		if err := ext.RouteBlocks("egress"); err != nil {
			t.Fatal(err)
		}
	})

	optIn := PodMeta{Annotations: map[string]string{"egress.coil.cybozu.com/internet": "nat"}}
	var client *Pod
	var chosen *Pod
	step(t, "client on another node goes out through a gateway", func(t *testing.T) {
		var err error
		client, err = c.Nodes[2].StartPodWith(ctx, "app", "client", optIn)
		if err != nil {
			t.Fatal(err)
		}
		for _, target := range []netip.AddrPort{ext.Server4, ext.Server6} {
			// Right after ADD: no waiting for anything.
			seen, err := client.SeenAs(target, 5*time.Second)
			if err != nil {
				t.Fatalf("client cannot reach %s: %v", target, err)
			}
			gw, ok := gateways[seen]
			if !ok {
				t.Fatalf("the external host saw the client as %s, not as a gateway pod", seen)
			}
			if chosen != nil && gw != chosen {
				t.Errorf("IPv4 and IPv6 go through different gateways")
			}
			chosen = gw
			t.Logf("%s seen as %s (gateway %s on %s)", target, seen, gw.Name, gw.Node.Name)
		}
		// The gateway returns the replies through the tunnel once it
		// knows the client, which takes the client's status update.
		if err := Eventually(10*time.Second, func() error {
			st, err := chosen.EgressState()
			if err != nil {
				return err
			}
			if st.FDB != 1 || st.Routes != 2 || st.NFTRules == 0 {
				return fmt.Errorf("gateway %s holds %+v, want the client's FDB entry, two return routes and nftables rules", chosen.Name, st)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("gateway metrics count the clients' traffic", func(t *testing.T) {
		m, err := chosen.Node.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		pod := fmt.Sprintf(`pod="%s/%s"`, chosen.Namespace, chosen.Name)
		for metric, min := range map[string]float64{
			"coild_egress_gateway_masqueraded_packets_total": 1,
			"coild_egress_gateway_masqueraded_bytes_total":   1,
			"coild_egress_gateway_conntrack_limit":           1,
		} {
			v, ok := sampleOf(m, metric, pod)
			if !ok || v < min {
				t.Errorf("%s of %s on %s: %v (found %v), want at least %v", metric, chosen.Name, chosen.Node.Name, v, ok, min)
			}
		}
		if _, ok := sampleOf(m, "coild_egress_gateway_conntrack_entries", pod); !ok {
			t.Errorf("no coild_egress_gateway_conntrack_entries for %s", chosen.Name)
		}
	})

	step(t, "pod without the annotation cannot get an answer", func(t *testing.T) {
		plain := mustStartPod(t, c.Nodes[2], "app", "plain")
		if seen, err := plain.SeenAs(ext.Server4, 2*time.Second); err == nil {
			t.Fatalf("unannotated pod reached the external host, seen as %s", seen)
		}
		if st, err := plain.EgressState(); err != nil || st != (EgressState{}) {
			t.Fatalf("unannotated pod holds egress settings %+v (%v)", st, err)
		}
		// Pod-to-pod traffic is direct for the client too.
		pingEventually(t, client, plain.IPv4())
		pingEventually(t, client, plain.IPv6())
	})

	step(t, "coild restart leaves one copy of everything", func(t *testing.T) {
		watched := append([]*Pod{client}, gwPods...)
		before := map[*Pod]EgressState{}
		for _, p := range watched {
			st, err := p.EgressState()
			if err != nil {
				t.Fatal(err)
			}
			before[p] = st
		}
		t.Logf("client holds %+v, gateway %s %+v", before[client], chosen.Name, before[chosen])
		if st := before[client]; st.Links != 1 || st.FDB != 1 || st.Rules == 0 || st.Routes != 2 {
			t.Fatalf("client holds %+v", st)
		}
		for _, n := range []*Node{client.Node, chosen.Node} {
			n.StopCoild()
			if err := n.StartCoild(); err != nil {
				t.Fatal(err)
			}
			if err := n.WaitReady(60 * time.Second); err != nil {
				t.Fatal(err)
			}
		}
		// Two full passes (--scan-interval 2s) after the restarts.
		time.Sleep(5 * time.Second)
		for _, p := range watched {
			st, err := p.EgressState()
			if err != nil {
				t.Fatal(err)
			}
			if st != before[p] {
				t.Errorf("%s after restarts holds %+v, before %+v", p.Name, st, before[p])
			}
		}
		if seen, err := client.SeenAs(ext.Server4, 5*time.Second); err != nil || gateways[seen] != chosen {
			t.Fatalf("after restarts the client is seen as %s (%v), want through %s", seen, err, chosen.Name)
		}
	})

	step(t, "a deleted gateway's clients move within 5s", func(t *testing.T) {
		other := gwPods[0]
		if other == chosen {
			other = gwPods[1]
		}
		start := time.Now()
		// As when a pod is deleted: the API object goes, then kubelet
		// tears the sandbox down.
		if err := c.Kube.CoreV1().Pods("internet").Delete(ctx, chosen.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
		if err := chosen.Remove(ctx); err != nil {
			t.Fatal(err)
		}
		var took time.Duration
		for {
			seen, err := client.SeenAs(ext.Server4, time.Second)
			if err == nil && gateways[seen] == other {
				took = time.Since(start)
				break
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("5s after %s was deleted the client is seen as %s (%v), want through %s", chosen.Name, seen, err, other.Name)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("egress failover: new connections go through %s %v after %s was deleted", other.Name, took.Round(time.Millisecond), chosen.Name)
		if seen, err := client.SeenAs(ext.Server6, 5*time.Second); err != nil || gateways[seen] != other {
			t.Errorf("over IPv6 the client is seen as %s (%v), want through %s", seen, err, other.Name)
		}
		chosen = other
	})

	step(t, "destinations changed in place: routes follow, unchanged destinations keep their connections", func(t *testing.T) {
		conv, err := client.Converse(ext.Echo4, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conv.Close()
		talk := func() {
			t.Helper()
			if seen, err := conv.SeenAs(3 * time.Second); err != nil || gateways[seen] == nil {
				t.Fatalf("the open IPv4 connection is seen as %s (%v), want a gateway", seen, err)
			}
		}
		talk()
		start := time.Now()
		mustCoilctl(t, c, "egress", "update", "internet", "nat", "--remove-destination", externalNet6)
		if err := Eventually(10*time.Second, func() error {
			if seen, err := client.SeenAs(ext.Server6, time.Second); err == nil {
				return fmt.Errorf("IPv6 still goes out (seen as %s) after its destination was removed", seen)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("destination removed: the client's IPv6 traffic left the egress within %v", time.Since(start).Round(time.Millisecond))
		talk()
		start = time.Now()
		mustCoilctl(t, c, "egress", "update", "internet", "nat", "--add-destination", externalNet6)
		if err := Eventually(10*time.Second, func() error {
			seen, err := client.SeenAs(ext.Server6, time.Second)
			if err != nil || gateways[seen] == nil {
				return fmt.Errorf("IPv6 seen as %s (%v), want a gateway", seen, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("destination added: the client's IPv6 traffic went through a gateway within %v", time.Since(start).Round(time.Millisecond))
		talk()
	})

	step(t, "deleting the egress removes the tunnels", func(t *testing.T) {
		mustCoilctl(t, c, "egress", "delete", "internet", "nat")
		if err := Eventually(10*time.Second, func() error {
			for _, p := range []*Pod{client, chosen} {
				st, err := p.EgressState()
				if err != nil {
					return err
				}
				if st != (EgressState{}) {
					return fmt.Errorf("%s still holds %+v", p.Name, st)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.SeenAs(ext.Server4, 2*time.Second); err == nil {
			t.Errorf("the client still reaches the external host without the egress")
		}
	})
}

// sampleOf returns the value of the first sample of metric whose labels
// contain label (for example pod="ns/name") in a Prometheus text scrape.
func sampleOf(scrape, metric, label string) (float64, bool) {
	for _, line := range strings.Split(scrape, "\n") {
		if !strings.HasPrefix(line, metric+"{") || !strings.Contains(line, label) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		return v, err == nil
	}
	return 0, false
}
