package daemon_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
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

func newExternal(t *testing.T, n *node) *external {
	t.Helper()
	e := &external{ns: newNetNS(t)}
	inNS(t, n.ns, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{
			LinkAttrs: netlink.LinkAttrs{Name: "ext0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(e.ns.Fd())),
		}); err != nil {
			return err
		}
		return linkUp("ext0", "192.168.77.1/24", "fd77::1/64")
	})
	inNS(t, e.ns, func() error {
		if err := linkUp("eth0", "192.168.77.2/24", "fd77::2/64"); err != nil {
			return err
		}
		for _, r := range []struct{ dst, via string }{{egressPool[0], "192.168.77.1"}, {egressPool[1], "fd77::1"}} {
			if err := netnstest.AddRoute(r.dst, r.via); err != nil {
				return err
			}
		}
		return nil
	})
	e.server4 = peerServer(t, e.ns, externalV4)
	e.server6 = peerServer(t, e.ns, externalV6)
	return e
}

// linkUp sets a link of the current netns up with addresses (see netnstest.LinkUp).
func linkUp(name string, cidrs ...string) error { return netnstest.LinkUp(name, cidrs...) }

// peerServer answers each connection with the client's address as seen.
func peerServer(t *testing.T, n ns.NetNS, addr netip.Addr) netip.AddrPort {
	return netnstest.PeerServer(t, n, addr)
}

// seenAs connects from the pod to target and returns the address the
// server saw.
func seenAs(p *pod, target netip.AddrPort, timeout time.Duration) (netip.Addr, error) {
	return netnstest.SeenAs(p.ns, target, timeout)
}

// createPod creates the Pod object of p on the node, as the scheduler
// would before kubelet runs ADD.
func (n *node) createPod(p *pod, labels, annotations map[string]string) {
	n.t.Helper()
	_, err := n.kube.CoreV1().Pods(p.namespace).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.namespace, Name: p.name, Labels: labels, Annotations: annotations},
		Spec:       corev1.PodSpec{NodeName: n.name},
		Status:     corev1.PodStatus{Phase: corev1.PodPending},
	}, metav1.CreateOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
}

// setRunning reports p running with its addresses, as kubelet does after
// ADD.
func (n *node) setRunning(p *pod, ips []netip.Addr) {
	n.t.Helper()
	ctx := context.Background()
	o, err := n.kube.CoreV1().Pods(p.namespace).Get(ctx, p.name, metav1.GetOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	o.Status.Phase = corev1.PodRunning
	o.Status.PodIPs = nil
	for _, ip := range ips {
		o.Status.PodIPs = append(o.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	o.Status.PodIP = ips[0].String()
	if _, err := n.kube.CoreV1().Pods(p.namespace).UpdateStatus(ctx, o, metav1.UpdateOptions{}); err != nil {
		n.t.Fatal(err)
	}
}

// startPod creates the Pod object, runs ADD and reports the pod running.
func (n *node) startPod(p *pod, labels, annotations map[string]string) []netip.Addr {
	n.t.Helper()
	n.createPod(p, labels, annotations)
	ips := n.add(p)
	n.setRunning(p, ips)
	return ips
}

// metrics returns coild's /metrics over its socket.
func (n *node) metrics() string {
	n.t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", n.socket)
	}}}
	resp, err := hc.Get("http://coild/metrics")
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func summary(t *testing.T, p *pod) nodenet.EgressSummary {
	t.Helper()
	s, err := nodenet.SummarizeEgress(p.ns.Path())
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
	n := newNode(t, nodeOptions{
		pools: []model.Pool{
			pool(t, "default", 4, "10.10.0.0/24,fd00:10::/120"),
			pool(t, "egress", 4, egressPool[0]+","+egressPool[1]),
		},
		namespaces: []*corev1.Namespace{namespace("internet", "egress"), namespace("app", "")},
	})
	ext := newExternal(t, n)
	ctx := context.Background()
	dest, err := model.ParseDestinations([]string{"192.168.77.0/24", "fd77::/64"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.store.CreateEgress(ctx, model.Egress{Namespace: "internet", Name: "nat", Destinations: dest}); err != nil {
		t.Fatal(err)
	}
	gwLabel := map[string]string{model.EgressGatewayLabel: "nat"}
	optIn := map[string]string{model.EgressClientAnnotationPrefix + "internet": "nat"}

	gws := map[netip.Addr]*pod{}
	gwAddrs := map[string][]netip.Addr{}
	for i := range 2 {
		p := newPod(t, "internet", fmt.Sprintf("gw-%d", i))
		ips := n.startPod(p, gwLabel, nil)
		for _, ip := range ips {
			gws[ip] = p
		}
		gwAddrs[p.name] = ips
	}

	// Pods that outlive a subtest belong to the whole test.
	top := t
	var clients []*pod
	var chosen *pod
	t.Run("ADD of a client sets up its tunnel", func(t *testing.T) {
		for i := range 2 {
			c := newPod(top, "app", fmt.Sprintf("client-%d", i))
			n.createPod(c, nil, optIn)
			ips := n.add(c)
			// No waiting: the first connection already goes out
			// through a gateway, over both families.
			var seen4 netip.Addr
			for _, target := range []netip.AddrPort{ext.server4, ext.server6} {
				seen, err := seenAs(c, target, 5*time.Second)
				if err != nil {
					t.Fatalf("client %s cannot reach %s right after ADD: %v", c.name, target, err)
				}
				gw, ok := gws[seen]
				if !ok {
					t.Fatalf("external host saw %s as %s, not as a gateway (%v)", c.name, seen, gwAddrs)
				}
				if target == ext.server4 {
					seen4 = seen
					if i == 0 {
						chosen = gw
					}
				} else if gws[seen4] != gw {
					t.Errorf("IPv4 and IPv6 of %s go through different gateways", c.name)
				}
			}
			n.setRunning(c, ips)
			clients = append(clients, c)
		}
		// Pod networks and the gateways' own addresses stay direct.
		if err := dial(clients[0].ns, listen(t, n.ns, nodeIPv4, 0)); err != nil {
			t.Errorf("client cannot reach the node: %v", err)
		}
		for _, gw := range gws {
			if err := dial(clients[0].ns, listen(t, gw.ns, gwAddrs[gw.name][0], 0)); err != nil {
				t.Errorf("client cannot reach gateway pod %s directly: %v", gw.name, err)
			}
		}
	})

	t.Run("unannotated pods are untouched", func(t *testing.T) {
		u := newPod(t, "app", "plain")
		n.startPod(u, nil, nil)
		if _, err := seenAs(u, ext.server4, time.Second); err == nil {
			t.Errorf("a pod without the annotation reached the external host")
		}
		if s := summary(t, u); s != (nodenet.EgressSummary{}) {
			t.Errorf("unannotated pod holds egress settings %+v", s)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		testenv.Eventually(t, 5*time.Second, "egress metrics", func() error {
			m := n.metrics()
			for _, want := range []string{
				`coild_egress_clients{egress="internet/nat"} 2`,
				`coild_egress_gateways{egress="internet/nat"} 2`,
				`coild_egress_gateway_clients{egress="internet/nat"} 2`,
			} {
				if !strings.Contains(m, want) {
					return fmt.Errorf("metrics lack %q", want)
				}
			}
			return nil
		})
	})

	t.Run("coild restart leaves one copy of everything", func(t *testing.T) {
		var watched []*pod
		for _, p := range gws {
			if !slices.Contains(watched, p) {
				watched = append(watched, p)
			}
		}
		watched = append(watched, clients...)
		before := map[string]nodenet.EgressSummary{}
		for _, p := range watched {
			before[p.name] = summary(t, p)
		}
		if s := before[clients[0].name]; s.Links != 1 || s.FDB != 1 || s.Rules == 0 || s.ClientRoutes != 2 {
			t.Errorf("client holds %+v, want one tunnel, one FDB entry, rules and two routes", s)
		}
		served := before[chosen.name].FDB
		if served == 0 || !before[chosen.name].NFTTable {
			t.Errorf("chosen gateway %s holds %+v, want FDB entries and its nftables table", chosen.name, before[chosen.name])
		}
		for range 2 {
			n.stop()
			n.start()
			// A few full resyncs (200ms each) after the restart.
			time.Sleep(time.Second)
			for _, p := range watched {
				if got := summary(t, p); got != before[p.name] {
					t.Errorf("%s after a restart holds %+v, before %+v", p.name, got, before[p.name])
				}
			}
		}
		if seen, err := seenAs(clients[0], ext.server4, 5*time.Second); err != nil || gws[seen] != chosen {
			t.Errorf("after restarts client-0 reaches the external host as %s (%v), want through %s", seen, err, chosen.name)
		}
	})

	t.Run("failover within 5s", func(t *testing.T) {
		var other *pod
		for _, p := range gws {
			if p != chosen {
				other = p
			}
		}
		start := time.Now()
		// Like a deletion: the API object goes, then kubelet runs DEL.
		if err := n.kube.CoreV1().Pods("internet").Delete(ctx, chosen.name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		n.del(chosen)
		var took time.Duration
		for {
			seen, err := seenAs(clients[0], ext.server4, time.Second)
			if err == nil && gws[seen] == other {
				took = time.Since(start)
				break
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("client still not through %s 5s after %s was deleted: last seen as %s (%v)", other.name, chosen.name, seen, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("egress failover: new connections go through the other gateway %v after the gateway pod was deleted", took.Round(time.Millisecond))
		testenv.Eventually(t, 5*time.Second, "failover metric", func() error {
			if m := n.metrics(); !strings.Contains(m, `coild_egress_failovers_total{egress="internet/nat"} 1`) &&
				!strings.Contains(m, `coild_egress_failovers_total{egress="internet/nat"} 2`) {
				return fmt.Errorf("no failover counted")
			}
			return nil
		})
		for _, c := range clients {
			if seen, err := seenAs(c, ext.server6, 5*time.Second); err != nil || gws[seen] != other {
				t.Errorf("%s over IPv6 seen as %s (%v), want %s", c.name, seen, err, other.name)
			}
		}
		chosen = other
	})

	t.Run("DEL of a client removes it from its gateway", func(t *testing.T) {
		gone := clients[1]
		before := summary(t, chosen)
		if err := n.kube.CoreV1().Pods("app").Delete(ctx, gone.name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		n.del(gone)
		if s := summary(t, gone); s != (nodenet.EgressSummary{}) {
			t.Errorf("DEL left egress settings %+v in the pod", s)
		}
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
			o, err := n.kube.CoreV1().Pods(c.namespace).Get(ctx, c.name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			o.Annotations = a
			if _, err := n.kube.CoreV1().Pods(c.namespace).Update(ctx, o, metav1.UpdateOptions{}); err != nil {
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
		n.stop()
		setAnnotations(map[string]string{"unrelated": "x"})
		n.start()
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
		if seen, err := seenAs(c, ext.server4, 5*time.Second); err != nil || gws[seen] != chosen {
			t.Errorf("client seen as %s (%v), want through %s", seen, err, chosen.name)
		}
	})

	t.Run("deleting the egress removes the tunnels", func(t *testing.T) {
		if err := n.store.DeleteEgress(ctx, "internet", "nat"); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 5*time.Second, "tunnels removed", func() error {
			for _, p := range []*pod{clients[0], chosen} {
				if s := summary(t, p); s != (nodenet.EgressSummary{}) {
					return fmt.Errorf("%s still holds %+v", p.name, s)
				}
			}
			return nil
		})
		if _, err := seenAs(clients[0], ext.server4, time.Second); err == nil {
			t.Errorf("client still reaches the external host without the egress")
		}
		if err := dial(clients[0].ns, listen(t, n.ns, nodeIPv4, 0)); err != nil {
			t.Errorf("client cannot reach the node: %v", err)
		}
	})
}
