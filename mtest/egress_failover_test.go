package mtest

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// egressSetup is an egress with a gateway pod on each of the first two
// nodes and a client pod on the third, which reaches the external host.
type egressSetup struct {
	c        *Cluster
	ext      *External
	gateways map[netip.Addr]*Pod
	gwPods   []*Pod
	client   *Pod
}

func newEgressSetup(t *testing.T) *egressSetup {
	t.Helper()
	c := newCluster(t, Options{Nodes: 3, FlatL2: true, External: true})
	ctx := context.Background()
	s := &egressSetup{c: c, ext: c.External, gateways: map[netip.Addr]*Pod{}}
	mustCoilctl(t, c, "pool", "create", "default", "10.100.0.0/16", "5", "--ipv6", "fd00:10:100::/112")
	mustCoilctl(t, c, "pool", "create", "egress", "10.102.0.0/24", "4", "--ipv6", "fd00:10:102::/120")
	if err := c.CreateNamespace(ctx, "internet", map[string]string{"coil.cybozu.com/pool": "egress"}); err != nil {
		t.Fatal(err)
	}
	mustCoilctl(t, c, "egress", "create", "internet", "nat", "--destinations", externalNet4+","+externalNet6)
	for i, n := range c.Nodes[:2] {
		p, err := n.StartPodWith(ctx, "internet", fmt.Sprintf("nat-%d", i), PodMeta{Labels: map[string]string{"coil.cybozu.com/egress": "nat"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range p.IPs {
			s.gateways[a] = p
		}
		s.gwPods = append(s.gwPods, p)
	}
	if err := s.ext.RouteBlocks("egress"); err != nil {
		t.Fatal(err)
	}
	var err error
	s.client, err = c.Nodes[2].StartPodWith(ctx, "app", "client", PodMeta{Annotations: map[string]string{"egress.coil.cybozu.com/internet": "nat"}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// through returns the gateway pod a new connection of the client goes
// through, nil if it fails within timeout or is not seen as a gateway.
func (s *egressSetup) through(target netip.AddrPort, timeout time.Duration) *Pod {
	seen, err := s.client.SeenAs(target, timeout)
	if err != nil {
		return nil
	}
	return s.gateways[seen]
}

// firstThrough waits for a new connection of the client to go through
// gateway gw (see Pod.FirstSeenAs).
func (s *egressSetup) firstThrough(gw *Pod, start time.Time, limit time.Duration) (time.Duration, bool) {
	return s.client.FirstSeenAs(s.ext.Server4, func(a netip.Addr) bool { return s.gateways[a] == gw }, start, limit)
}

// TestEgressGatewayNodeLoss cuts the node of the gateway a client uses off
// the network and freezes its coild, as a power loss would, without
// telling the API (the gateway pod stays Running there): the client's
// node notices from its probes and new connections go out through the
// other gateway; when the node comes back, the client returns to it. It
// measures, over EGRESS_FAILOVER_RUNS runs (default 5), the pause from the
// loss until a new connection gets through, and logs the median and the
// worst; docs/egress.md has the figures. The only bound it enforces is
// 15 seconds, which the API-driven failover could not meet either (the
// node controller takes longer).
func TestEgressGatewayNodeLoss(t *testing.T) {
	runs := 5
	if v, err := strconv.Atoi(os.Getenv("EGRESS_FAILOVER_RUNS")); err == nil && v > 0 {
		runs = v
	}
	s := newEgressSetup(t)
	var preferred *Pod
	if err := Eventually(10*time.Second, func() error {
		if preferred = s.through(s.ext.Server4, 2*time.Second); preferred == nil {
			return fmt.Errorf("the client does not get out through a gateway")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("the client goes out through %s on %s", preferred.Name, preferred.Node.Name)
	other := s.gwPods[0]
	if other == preferred {
		other = s.gwPods[1]
	}

	var pauses []time.Duration
	for run := range runs {
		n := preferred.Node
		t.Cleanup(func() { n.PowerOn() })
		start := time.Now()
		if err := n.PowerOff(); err != nil {
			t.Fatal(err)
		}
		took, ok := s.firstThrough(other, start, 15*time.Second)
		if !ok {
			t.Fatalf("run %d: 15s after %s lost power the client does not get out through %s", run, n.Name, other.Name)
		}
		pauses = append(pauses, took)
		if run == 0 {
			// The client's node says why: the probes, not the API.
			m, err := s.client.Node.Metrics(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range []string{
				`coild_egress_gateway_up{egress="internet/nat",gateway="internet/` + preferred.Name + `"} 0`,
				`coild_egress_gateway_selected_clients{egress="internet/nat",gateway="internet/` + other.Name + `"} 1`,
				`coild_egress_probe_failures_total{egress="internet/nat",reason="timeout"}`,
				`coild_egress_probe_rtt_seconds_count{egress="internet/nat"}`,
				`coild_egress_failovers_total{egress="internet/nat"} 1`,
			} {
				if !strings.Contains(m, want) {
					t.Errorf("the client's node's metrics lack %q", want)
				}
			}
		}
		t.Logf("run %d: new connections go through %s %v after %s lost power", run, other.Name, took.Round(time.Millisecond), n.Name)
		if gw := s.through(s.ext.Server6, 2*time.Second); gw != other {
			t.Errorf("run %d: over IPv6 the client does not go through %s", run, other.Name)
		}

		if err := n.PowerOn(); err != nil {
			t.Fatal(err)
		}
		// Back up, the gateway answers the probes again and gets its
		// clients back (rendezvous hashing prefers it for this one).
		if err := Eventually(15*time.Second, func() error {
			if gw := s.through(s.ext.Server4, time.Second); gw != preferred {
				return fmt.Errorf("the client does not go through %s again", preferred.Name)
			}
			return nil
		}); err != nil {
			t.Fatalf("run %d: after %s came back: %v", run, n.Name, err)
		}
	}
	if data, err := os.ReadFile(s.client.Node.coild.logPath); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, "probes") || strings.Contains(l, "moved off") {
				t.Log(l)
			}
		}
	}
	slices.Sort(pauses)
	t.Logf("egress failover on gateway node loss over %d runs: median %v, worst %v, all %v",
		len(pauses), pauses[len(pauses)/2].Round(time.Millisecond), pauses[len(pauses)-1].Round(time.Millisecond), pauses)

	step(t, "a gateway that answers but is not programmed gets no new connections", func(t *testing.T) {
		// Its settings gone behind coild's back, as before its coild
		// programmed it: the pod answers the probes, unstamped. Its
		// coild is frozen meanwhile, or its next full pass would
		// repair it at once.
		preferred.Node.FreezeCoild()
		defer preferred.Node.ThawCoild()
		if _, err := runIn(preferred.NetNS, nil, "nft", "delete", "table", "inet", "coil-egress"); err != nil {
			t.Fatal(err)
		}
		if _, ok := s.firstThrough(other, time.Now(), 15*time.Second); !ok {
			t.Fatalf("new connections do not go through %s", other.Name)
		}
		m, err := s.client.Node.Metrics(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if want := `coild_egress_probe_failures_total{egress="internet/nat",reason="unprogrammed"}`; !strings.Contains(m, want) {
			t.Errorf("the client's node's metrics lack %q", want)
		}
		// Its coild's next full pass (--scan-interval 2s) programs it
		// again, and it gets the client back.
		preferred.Node.ThawCoild()
		if err := Eventually(15*time.Second, func() error {
			if gw := s.through(s.ext.Server4, time.Second); gw != preferred {
				return fmt.Errorf("the client does not go through %s again", preferred.Name)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
}

// TestEgressGatewayDrain replaces the gateway a client uses as a rolling
// restart of a gateway Deployment does: a new gateway pod starts, then the
// old one is deleted with a grace period (it keeps running, being deleted,
// until it exits). Long-lived TCP connections (IPv4 and IPv6) opened
// through the old gateway keep working, through it, all along; a new
// connection made during the drain goes through another gateway; once the
// old gateway exits, new connections still work.
func TestEgressGatewayDrain(t *testing.T) {
	s := newEgressSetup(t)
	ctx := context.Background()
	var old *Pod
	if err := Eventually(10*time.Second, func() error {
		if old = s.through(s.ext.Server4, 2*time.Second); old == nil {
			return fmt.Errorf("the client does not get out through a gateway")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var convs []*Conversation
	for _, target := range []netip.AddrPort{s.ext.Echo4, s.ext.Echo6} {
		conv, err := s.client.Converse(target, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conv.Close()
		convs = append(convs, conv)
	}
	stillThroughOld := func(when string) {
		t.Helper()
		for i, conv := range convs {
			seen, err := conv.SeenAs(3 * time.Second)
			if err != nil || s.gateways[seen] != old {
				t.Fatalf("%s: long-lived connection %d is seen as %s (%v), want through %s", when, i, seen, err, old.Name)
			}
		}
	}
	stillThroughOld("before the restart")
	t.Logf("long-lived connections go through %s on %s", old.Name, old.Node.Name)

	step(t, "a new gateway pod starts", func(t *testing.T) {
		p, err := old.Node.StartPodWith(ctx, "internet", "nat-new", PodMeta{Labels: map[string]string{"coil.cybozu.com/egress": "nat"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range p.IPs {
			s.gateways[a] = p
		}
		// Rendezvous hashing may give it the client's new connections
		// at once; the open ones stay where they are.
		time.Sleep(time.Second)
		stillThroughOld("after a new gateway started")
	})

	step(t, "the old gateway drains", func(t *testing.T) {
		grace := int64(60)
		if err := s.c.Kube.CoreV1().Pods("internet").Delete(ctx, old.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
			t.Fatal(err)
		}
		var next *Pod
		if err := Eventually(5*time.Second, func() error {
			next = s.through(s.ext.Server4, time.Second)
			if next == nil || next == old {
				return fmt.Errorf("a new connection does not go through another gateway than %s", old.Name)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if gw := s.through(s.ext.Server6, 2*time.Second); gw == nil || gw == old {
			t.Errorf("a new IPv6 connection does not go through another gateway than %s", old.Name)
		}
		t.Logf("during the drain new connections go through %s", next.Name)
		// Several times over a few seconds: full reconcile passes
		// (--scan-interval 2s) must not undo the steering.
		for range 5 {
			stillThroughOld("during the drain")
			time.Sleep(time.Second)
		}
	})

	step(t, "the old gateway exits", func(t *testing.T) {
		if err := old.Remove(ctx); err != nil {
			t.Fatal(err)
		}
		if err := Eventually(5*time.Second, func() error {
			if gw := s.through(s.ext.Server4, time.Second); gw == nil || gw == old {
				return fmt.Errorf("new connections do not get out")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
}
