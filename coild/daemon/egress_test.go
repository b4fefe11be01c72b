package daemon_test

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	nodetest "github.com/coil-project/coil/internal/testenv/node"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/nodenet"
)

// The external host of the egress tests hangs off the node by a veth; it
// routes back only to the egress pool, so only NATed traffic is answered.
var (
	externalV4 = netip.MustParseAddr("192.168.77.2")
	externalV6 = netip.MustParseAddr("fd77::2")
	egressPool = []string{"10.11.0.0/24", "fd00:11::/120"}
)

// external is a host outside the cluster with servers that tell each
// client the address they saw it come from.
type external struct {
	ns               ns.NetNS
	server4, server6 netip.AddrPort
}

func newExternal(t *testing.T, n *nodetest.Node) *external {
	t.Helper()
	e := &external{ns: netnstest.New(t)}
	netnstest.Do(t, n.NS, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{Name: "ext0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(e.ns.Fd())),
		}); err != nil {
			return err
		}
		return netnstest.LinkUp("ext0", "192.168.77.1/24", "fd77::1/64")
	})
	netnstest.Do(t, e.ns, func() error {
		if err := netnstest.LinkUp("eth0", "192.168.77.2/24", "fd77::2/64"); err != nil {
			return err
		}
		for _, r := range []struct{ dst, via string }{{egressPool[0], "192.168.77.1"}, {egressPool[1], "fd77::1"}} {
			if err := netnstest.AddRoute(r.dst, r.via); err != nil {
				return err
			}
		}
		return nil
	})
	e.server4 = netnstest.PeerServer(t, e.ns, externalV4)
	e.server6 = netnstest.PeerServer(t, e.ns, externalV6)
	return e
}

// newEgressNode starts a node with a default pool and an egress pool, the
// namespaces "internet" (egress pool) and "app", an external host, and the
// egress internet/nat to the external host's networks.
func newEgressNode(t *testing.T) (*nodetest.Node, *external, model.Egress) {
	t.Helper()
	n := env.NewNode(t, nodetest.Options{
		Pools: []model.Pool{
			pool(t, "default", 4, "10.10.0.0/24,fd00:10::/120"),
			pool(t, "egress", 4, egressPool[0]+","+egressPool[1]),
		},
		Namespaces: []*corev1.Namespace{nodetest.Namespace("internet", "egress"), nodetest.Namespace("app", "")},
	})
	ext := newExternal(t, n)
	dest, err := model.ParseDestinations([]string{"192.168.77.0/24", "fd77::/64"})
	if err != nil {
		t.Fatal(err)
	}
	eg, err := n.Store.CreateEgress(context.Background(), model.Egress{Namespace: "internet", Name: "nat", Destinations: dest})
	if err != nil {
		t.Fatal(err)
	}
	return n, ext, eg
}

func summary(t *testing.T, p *nodetest.Pod) nodenet.EgressSummary {
	t.Helper()
	s, err := nodenet.SummarizeEgress(p.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestEgress runs the egress feature on one node, with coild in-process:
// ADD of an annotated pod sets up its tunnel before it returns, an
// unannotated pod is untouched, a deleted gateway's clients move within
// seconds, a restart of coild leaves exactly one copy of everything, and
// deleting a client or the egress removes the tunnels on both sides.
func TestEgress(t *testing.T) {
	n, ext, _ := newEgressNode(t)
	ctx := context.Background()
	gwLabel := map[string]string{model.EgressGatewayLabel: "nat"}
	optIn := map[string]string{model.EgressClientAnnotationPrefix + "internet": "nat"}

	gws := map[netip.Addr]*nodetest.Pod{}
	gwAddrs := map[string][]netip.Addr{}
	for i := range 2 {
		p := nodetest.NewPod(t, "internet", fmt.Sprintf("gw-%d", i))
		ips := n.StartPod(p, gwLabel, nil)
		for _, ip := range ips {
			gws[ip] = p
		}
		gwAddrs[p.Name] = ips
	}

	// The gateways were reported running through the API; let coild's
	// informer see them before a client is added (else, on a busy host,
	// the client's ADD may find no running gateway and fail closed).
	testenv.Eventually(t, 5*time.Second, "coild to see the gateways running", func() error {
		if want := `coild_egress_gateways{egress="internet/nat"} 2`; !strings.Contains(n.Metrics(), want) {
			return fmt.Errorf("metrics lack %q", want)
		}
		return nil
	})
	// And to program them: a gateway that answers the probes unstamped
	// is not chosen, so a client added before that would find none.
	testenv.Eventually(t, 10*time.Second, "coild to program the gateways", func() error {
		for _, p := range gws {
			if s, err := nodenet.SummarizeEgress(p.NS.Path()); err != nil || !s.NFTTable {
				return fmt.Errorf("gateway %s not programmed yet (%+v, %v)", p.Name, s, err)
			}
		}
		return nil
	})

	// Pods that outlive a subtest belong to the whole test.
	top := t
	var clients []*nodetest.Pod
	var chosen *nodetest.Pod
	t.Run("ADD of a client sets up its tunnel", func(t *testing.T) {
		for i := range 2 {
			c := nodetest.NewPod(top, "app", fmt.Sprintf("client-%d", i))
			n.CreatePod(c, nil, optIn)
			ips := n.Add(c)
			// No waiting: the first connection already goes out
			// through a gateway, over both families.
			var seen4 netip.Addr
			for _, target := range []netip.AddrPort{ext.server4, ext.server6} {
				seen, err := netnstest.SeenAs(c.NS, target, 5*time.Second)
				if err != nil {
					dbg, _ := exec.Command("sh", "-c", "ip -n "+filepath.Base(c.NS.Path())+" rule; ip -n "+filepath.Base(c.NS.Path())+" route show table all; ip -n "+filepath.Base(c.NS.Path())+" -d link; ip -n "+filepath.Base(c.NS.Path())+" neigh; bridge -n "+filepath.Base(c.NS.Path())+" fdb").CombinedOutput()
					t.Fatalf("client %s cannot reach %s right after ADD: %v\n%s", c.Name, target, err, dbg)
				}
				gw, ok := gws[seen]
				if !ok {
					t.Fatalf("external host saw %s as %s, not as a gateway (%v)", c.Name, seen, gwAddrs)
				}
				if target == ext.server4 {
					seen4 = seen
					if i == 0 {
						chosen = gw
					}
				} else if gws[seen4] != gw {
					t.Errorf("IPv4 and IPv6 of %s go through different gateways", c.Name)
				}
			}
			n.SetRunning(c, ips)
			clients = append(clients, c)
		}
		// Pod networks and the gateways' own addresses stay direct.
		if err := netnstest.Dial(clients[0].NS, netnstest.Listen(t, n.NS, nodetest.IPv4, 0)); err != nil {
			t.Errorf("client cannot reach the node: %v", err)
		}
		for _, gw := range gws {
			if err := netnstest.Dial(clients[0].NS, netnstest.Listen(t, gw.NS, gwAddrs[gw.Name][0], 0)); err != nil {
				t.Errorf("client cannot reach gateway pod %s directly: %v", gw.Name, err)
			}
		}
	})

	t.Run("unannotated pods are untouched", func(t *testing.T) {
		u := nodetest.NewPod(t, "app", "plain")
		n.StartPod(u, nil, nil)
		if _, err := netnstest.SeenAs(u.NS, ext.server4, time.Second); err == nil {
			t.Errorf("a pod without the annotation reached the external host")
		}
		if s := summary(t, u); s != (nodenet.EgressSummary{}) {
			t.Errorf("unannotated pod holds egress settings %+v", s)
		}
	})

	t.Run("a client the API does not hold yet is set up from the runtime's annotations", func(t *testing.T) {
		// A static pod before its mirror exists: the API server cannot
		// tell coild about it, the annotations containerd passes can.
		before := map[string]nodenet.EgressSummary{}
		for _, g := range gws {
			before[g.Name] = summary(t, g)
		}
		c := nodetest.NewPod(t, "app", "static-client")
		c.Annotations = map[string]string{"kubernetes.io/config.source": "file"}
		maps.Copy(c.Annotations, optIn)
		ips := n.Add(c)
		seen, err := netnstest.SeenAs(c.NS, ext.server4, 5*time.Second)
		if err != nil {
			t.Fatalf("client cannot reach the external host right after ADD: %v", err)
		}
		if _, ok := gws[seen]; !ok {
			t.Errorf("external host saw the client as %s, not as a gateway", seen)
		}
		for _, a := range n.Kube.Actions() {
			if g, ok := a.(interface{ GetName() string }); ok && a.GetVerb() == "get" && a.GetResource().Resource == "pods" && g.GetName() == c.Name {
				t.Errorf("coild asked the API server for the pod: %v", a)
			}
		}
		// A pass of the reconciler (woken here by an update of a
		// gateway) builds the gateways' clients from the API, which
		// does not hold this one: the gateways must keep serving it.
		serving := map[string]nodenet.EgressSummary{}
		for _, g := range gws {
			serving[g.Name] = summary(t, g)
			if serving[g.Name] == before[g.Name] {
				t.Errorf("gateway %s does not serve the client after its ADD: %+v", g.Name, serving[g.Name])
			}
		}
		for _, g := range gws {
			n.SetRunning(g, gwAddrs[g.Name])
			break
		}
		for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			for _, g := range gws {
				if s := summary(t, g); s != serving[g.Name] {
					t.Fatalf("a pass changed gateway %s from %+v to %+v: it dropped the client the API does not hold", g.Name, serving[g.Name], s)
				}
			}
		}
		if _, err := netnstest.SeenAs(c.NS, ext.server4, 5*time.Second); err != nil {
			t.Fatalf("client cannot reach the external host after a pass: %v", err)
		}
		// Its mirror shows up; then it goes.
		n.CreatePod(c, nil, optIn)
		n.SetRunning(c, ips)
		n.Del(c)
		testenv.Eventually(t, 10*time.Second, "the host veth to go after DEL", func() bool { return !n.LinkExists(c.HostVeth()) })
		if err := n.Kube.CoreV1().Pods(c.Namespace).Delete(ctx, c.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// The subtests after this one find the gateways as before.
		testenv.Eventually(t, 5*time.Second, "the gateways to forget the client", func() error {
			for _, g := range gws {
				if s := summary(t, g); s != before[g.Name] {
					return fmt.Errorf("gateway %s holds %+v, before the client %+v", g.Name, s, before[g.Name])
				}
			}
			return nil
		})
	})

	t.Run("metrics", func(t *testing.T) {
		testenv.Eventually(t, 5*time.Second, "egress metrics", func() error {
			m := n.Metrics()
			for _, want := range []string{
				`coild_egress_clients{egress="internet/nat"} 2`,
				`coild_egress_gateways{egress="internet/nat"} 2`,
				// Every gateway accepts every client of its egress.
				`coild_egress_gateway_clients{egress="internet/nat"} 4`,
				// Both gateways answer this node's probes.
				`coild_egress_gateway_up{egress="internet/nat",gateway="internet/gw-0"} 1`,
				`coild_egress_gateway_up{egress="internet/nat",gateway="internet/gw-1"} 1`,
				`coild_egress_probe_rtt_seconds_count{egress="internet/nat"}`,
				`coild_egress_gateway_foreign_packets_dropped{egress="internet/nat"} 0`,
			} {
				if !strings.Contains(m, want) {
					return fmt.Errorf("metrics lack %q", want)
				}
			}
			return nil
		})
		// The gateway counters, read from the gateways' namespaces at
		// the scrape: the clients' connections above were masqueraded by
		// the chosen gateway, and another connection raises its count.
		chosenPod := `{egress="internet/nat",pod="internet/` + chosen.Name + `"}`
		before := metricSample(t, n.Metrics(), "coild_egress_gateway_masqueraded_packets_total"+chosenPod)
		bytes := metricSample(t, n.Metrics(), "coild_egress_gateway_masqueraded_bytes_total"+chosenPod)
		if before <= 0 || bytes < 20*before {
			t.Errorf("chosen gateway masqueraded %v packets, %v bytes", before, bytes)
		}
		for name := range gwAddrs {
			sel := `{egress="internet/nat",pod="internet/` + name + `"}`
			if limit := metricSample(t, n.Metrics(), "coild_egress_gateway_conntrack_limit"+sel); limit <= 0 {
				t.Errorf("gateway %s: conntrack limit %v", name, limit)
			}
		}
		if entries := metricSample(t, n.Metrics(), "coild_egress_gateway_conntrack_entries"+chosenPod); entries <= 0 {
			t.Errorf("chosen gateway tracks %v connections", entries)
		}
		if _, err := netnstest.SeenAs(clients[0].NS, ext.server4, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if after := metricSample(t, n.Metrics(), "coild_egress_gateway_masqueraded_packets_total"+chosenPod); after <= before {
			t.Errorf("masqueraded packets went from %v to %v after a connection", before, after)
		}
	})

	t.Run("coild restart leaves one copy of everything", func(t *testing.T) {
		var watched []*nodetest.Pod
		for _, p := range gws {
			if !slices.Contains(watched, p) {
				watched = append(watched, p)
			}
		}
		watched = append(watched, clients...)
		before := map[string]nodenet.EgressSummary{}
		for _, p := range watched {
			before[p.Name] = summary(t, p)
		}
		if s := before[clients[0].Name]; s.Links != 1 || s.FDB != 1 || s.Rules == 0 || s.ClientRoutes != 2 {
			t.Errorf("client holds %+v, want one tunnel, one FDB entry, rules and two routes", s)
		}
		served := before[chosen.Name].FDB
		if served == 0 || !before[chosen.Name].NFTTable {
			t.Errorf("chosen gateway %s holds %+v, want FDB entries and its nftables table", chosen.Name, before[chosen.Name])
		}
		for range 2 {
			n.Stop()
			n.Start()
			// A few full resyncs (200ms each) after the restart.
			time.Sleep(time.Second)
			for _, p := range watched {
				if got := summary(t, p); got != before[p.Name] {
					t.Errorf("%s after a restart holds %+v, before %+v", p.Name, got, before[p.Name])
				}
			}
		}
		if seen, err := netnstest.SeenAs(clients[0].NS, ext.server4, 5*time.Second); err != nil || gws[seen] != chosen {
			t.Errorf("after restarts client-0 reaches the external host as %s (%v), want through %s", seen, err, chosen.Name)
		}
	})

	t.Run("failover within 5s", func(t *testing.T) {
		var other *nodetest.Pod
		for _, p := range gws {
			if p != chosen {
				other = p
			}
		}
		start := time.Now()
		// Like a deletion: the API object goes, then kubelet runs DEL.
		if err := n.Kube.CoreV1().Pods("internet").Delete(ctx, chosen.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		n.Del(chosen)
		// The 5 seconds count from the deletion, not from here.
		testenv.Eventually(t, 5*time.Second-time.Since(start), "client through "+other.Name+" after "+chosen.Name+" was deleted", func() error {
			seen, err := netnstest.SeenAs(clients[0].NS, ext.server4, time.Second)
			if err == nil && gws[seen] != other {
				err = fmt.Errorf("seen as %s", seen)
			}
			return err
		})
		took := time.Since(start)
		t.Logf("egress failover: new connections go through the other gateway %v after the gateway pod was deleted", took.Round(time.Millisecond))
		testenv.Eventually(t, 5*time.Second, "failover metric", func() error {
			if m := n.Metrics(); !strings.Contains(m, `coild_egress_failovers_total{egress="internet/nat"} 1`) &&
				!strings.Contains(m, `coild_egress_failovers_total{egress="internet/nat"} 2`) {
				return fmt.Errorf("no failover counted")
			}
			return nil
		})
		for _, c := range clients {
			if seen, err := netnstest.SeenAs(c.NS, ext.server6, 5*time.Second); err != nil || gws[seen] != other {
				t.Errorf("%s over IPv6 seen as %s (%v), want %s", c.Name, seen, err, other.Name)
			}
		}
		chosen = other
	})

	t.Run("DEL of a client removes it from its gateway", func(t *testing.T) {
		gone := clients[1]
		before := summary(t, chosen)
		if err := n.Kube.CoreV1().Pods("app").Delete(ctx, gone.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		n.Del(gone)
		// Removed with the pod's veth, right after DEL answered.
		testenv.Eventually(t, 5*time.Second, "DEL to remove the egress settings in the pod", func() error {
			if s := summary(t, gone); s != (nodenet.EgressSummary{}) {
				return fmt.Errorf("DEL left egress settings %+v in the pod", s)
			}
			return nil
		})
		testenv.Eventually(t, 5*time.Second, "gateway drops the deleted client", func() error {
			if got := summary(t, chosen); got.FDB != before.FDB-1 || got.GatewayRoutes != before.GatewayRoutes-2 {
				return fmt.Errorf("gateway holds %+v, before %+v", got, before)
			}
			return nil
		})
		clients = clients[:1]
	})

	t.Run("annotation changes of a running pod", func(t *testing.T) {
		c := clients[0]
		setAnnotations := func(a map[string]string) {
			t.Helper()
			o, err := n.Kube.CoreV1().Pods(c.Namespace).Get(ctx, c.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			o.Annotations = a
			if _, err := n.Kube.CoreV1().Pods(c.Namespace).Update(ctx, o, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		before := summary(t, c)
		setAnnotations(nil)
		testenv.Eventually(t, 5*time.Second, "settings of a pod that opted out removed", func() error {
			if s := summary(t, c); s != (nodenet.EgressSummary{}) {
				return fmt.Errorf("pod holds %+v", s)
			}
			return nil
		})
		setAnnotations(optIn)
		testenv.Eventually(t, 5*time.Second, "settings of a pod that opted in", func() error {
			if s := summary(t, c); s != before {
				return fmt.Errorf("pod holds %+v, want %+v", s, before)
			}
			return nil
		})
		// Opting out while coild is down: the restarted coild cleans up.
		n.Stop()
		setAnnotations(map[string]string{"unrelated": "x"})
		n.Start()
		testenv.Eventually(t, 5*time.Second, "leftovers removed after a restart", func() error {
			if s := summary(t, c); s != (nodenet.EgressSummary{}) {
				return fmt.Errorf("pod holds %+v", s)
			}
			return nil
		})
		setAnnotations(optIn)
		testenv.Eventually(t, 5*time.Second, "settings back", func() error {
			if s := summary(t, c); s != before {
				return fmt.Errorf("pod holds %+v, want %+v", s, before)
			}
			return nil
		})
		if seen, err := netnstest.SeenAs(c.NS, ext.server4, 5*time.Second); err != nil || gws[seen] != chosen {
			t.Errorf("client seen as %s (%v), want through %s", seen, err, chosen.Name)
		}
	})

	t.Run("deleting the egress removes the tunnels", func(t *testing.T) {
		if err := n.Store.DeleteEgress(ctx, "internet", "nat"); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 5*time.Second, "tunnels removed", func() error {
			for _, p := range []*nodetest.Pod{clients[0], chosen} {
				if s := summary(t, p); s != (nodenet.EgressSummary{}) {
					return fmt.Errorf("%s still holds %+v", p.Name, s)
				}
			}
			return nil
		})
		if _, err := netnstest.SeenAs(clients[0].NS, ext.server4, time.Second); err == nil {
			t.Errorf("client still reaches the external host without the egress")
		}
		if err := netnstest.Dial(clients[0].NS, netnstest.Listen(t, n.NS, nodetest.IPv4, 0)); err != nil {
			t.Errorf("client cannot reach the node: %v", err)
		}
	})
}

// metricSample returns the value of the sample named exactly series
// (name and labels as the text format prints them), or -1 if absent.
func metricSample(t *testing.T, text, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("sample %q: %v", line, err)
			}
			return f
		}
	}
	return -1
}
