package egress

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/coil-project/coil/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestDesiredClient checks what a client pod is programmed with, from the
// gateways the API shows and the verdicts of its node's probes: the tunnel
// leads to the rendezvous choice among the gateways that are eligible and
// up; every other running gateway that is not down (a draining one, one
// not judged yet) keeps the connections opened through it; the clients
// that used a gateway now down count as failed over.
func TestDesiredClient(t *testing.T) {
	const e = "internet/nat"
	gw := func(name, v4 string) gateway { return gateway{key: "internet/" + name, addrs: addrs{v4: a(v4)}} }
	g1, g2, g3 := gw("gw-1", "10.2.0.1"), gw("gw-2", "10.2.0.2"), gw("gw-3", "10.2.0.3")
	client := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "c",
		Annotations: map[string]string{model.EgressClientAnnotationPrefix + "internet": "nat"}}}
	net := model.Address{IPv4: a("10.1.0.5"), Owner: model.Owner{Namespace: "app", Pod: "c", NetNS: "/run/netns/c"}}
	// The gateways in the client's order of preference.
	order := []gateway{g1, g2, g3}
	slices.SortFunc(order, func(x, y gateway) int {
		sx, sy := score("app/c", x.key), score("app/c", y.key)
		switch {
		case sx > sy:
			return -1
		case sx < sy:
			return 1
		}
		return 0
	})
	best, second, third := order[0], order[1], order[2]

	tests := []struct {
		name        string
		eligible    []gateway // running, not being deleted
		draining    []gateway // running, being deleted
		health      map[string]probeHealth
		prev        string
		want        gateway // zero: none
		established []gateway
		lost        bool
	}{
		{name: "all up: the best",
			eligible: order, health: map[string]probeHealth{best.key: probeUp, second.key: probeUp, third.key: probeUp},
			want: best, established: []gateway{second, third}},
		{name: "the best is down: the next, and nothing steers to the dead one",
			eligible: order, health: map[string]probeHealth{best.key: probeDown, second.key: probeUp, third.key: probeUp},
			prev: best.key, want: second, established: []gateway{third}, lost: true},
		{name: "the best drains: the next, and the drained one keeps its connections",
			eligible: []gateway{second, third}, draining: []gateway{best},
			health: map[string]probeHealth{best.key: probeUp, second.key: probeUp, third.key: probeUp},
			prev:   best.key, want: second, established: []gateway{best, third}, lost: true},
		{name: "a new gateway not judged yet is not chosen",
			eligible: order, health: map[string]probeHealth{second.key: probeUp, third.key: probeUp},
			prev: second.key, want: second, established: []gateway{best, third}},
		{name: "a gateway not judged yet that the client uses is kept (restart)",
			eligible: order, health: map[string]probeHealth{},
			prev: third.key, want: third, established: []gateway{best, second}},
		{name: "none up: no gateway (fail closed)",
			eligible: order, health: map[string]probeHealth{best.key: probeDown, second.key: probeDown, third.key: probeDown},
			prev: best.key, lost: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Reconciler{probe: newProber(time.Second, 3, &recordSender{}, newMetrics(nil), nil, func() {})}
			for k, h := range tt.health {
				i := slices.IndexFunc(order, func(g gateway) bool { return g.key == k })
				r.probe.targets[probeTarget{gateway: k, addr: order[i].addrs.v4}] = &probeState{health: h, wanted: time.Now()}
			}
			s := &snapshot{
				egresses: map[string]model.Egress{e: {Namespace: "internet", Name: "nat", VNI: 7,
					Destinations: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}}},
				gateways: map[string][]gateway{e: tt.eligible},
				alive:    map[string][]gateway{e: append(slices.Clone(tt.eligible), tt.draining...)},
			}
			prev := podState{chosen: map[string]string{e: tt.prev}}
			d := r.desired(s, client, net, prev)
			if d.client == nil || len(d.client.Tunnels) != 1 {
				t.Fatalf("client programmed with %+v", d.client)
			}
			tun := d.client.Tunnels[0]
			if got := d.chosen[e]; got != tt.want.key {
				t.Errorf("chose %q, want %q", got, tt.want.key)
			}
			if tun.Gateway != tt.want.addrs.v4 {
				t.Errorf("tunnel to %s, want %s", tun.Gateway, tt.want.addrs.v4)
			}
			var want []netip.Addr
			for _, g := range tt.established {
				want = append(want, g.addrs.v4)
			}
			slices.SortFunc(want, func(x, y netip.Addr) int { return x.Compare(y) })
			if tt.want.key == "" {
				want = nil // no tunnel, nothing to steer
			}
			if !slices.Equal(tun.Established, want) {
				t.Errorf("established %v, want %v", tun.Established, want)
			}
			if lost := slices.Contains(d.lost, e); lost != tt.lost {
				t.Errorf("counted as failover: %v, want %v", lost, tt.lost)
			}
		})
	}
}

// TestServedClients checks that a gateway accepts every client of its
// egress, whichever gateway their node chose, and only those: a client
// may use two gateways at once (drain), and its node's probes decide.
func TestServedClients(t *testing.T) {
	const e = "internet/nat"
	pod := func(ns, name, ip string, ann map[string]string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: ann},
			Spec:   corev1.PodSpec{NodeName: "other"},
			Status: corev1.PodStatus{Phase: phase, PodIPs: []corev1.PodIP{{IP: ip}}}}
	}
	optIn := map[string]string{model.EgressClientAnnotationPrefix + "internet": "nat"}
	other := map[string]string{model.EgressClientAnnotationPrefix + "internet": "partners"}
	s := &snapshot{
		gateways: map[string][]gateway{e: {
			{key: "internet/gw-1", addrs: addrs{v4: a("10.2.0.1")}},
			{key: "internet/gw-2", addrs: addrs{v4: a("10.2.0.2")}},
		}},
		clients: []*corev1.Pod{
			pod("app", "c1", "10.1.0.1", optIn, corev1.PodRunning),
			pod("app", "c2", "10.1.0.2", optIn, corev1.PodRunning),
			pod("app", "c3", "10.1.0.3", optIn, corev1.PodRunning),
			pod("app", "done", "10.1.0.4", optIn, corev1.PodSucceeded),
			pod("app", "elsewhere", "10.1.0.5", other, corev1.PodRunning),
		},
	}
	r := &Reconciler{cfg: Config{Node: "gw-node"}}
	for _, g := range s.gateways[e] {
		got := r.servedClients(s, e, g.key, g.addrs)
		var outers []string
		for _, c := range got {
			outers = append(outers, c.Outer.String())
		}
		if want := []string{"10.1.0.1", "10.1.0.2", "10.1.0.3"}; !slices.Equal(outers, want) {
			t.Errorf("%s serves %v, want %v", g.key, outers, want)
		}
	}
}
