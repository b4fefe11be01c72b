package egress

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestClientEgresses(t *testing.T) {
	tests := []struct {
		name        string
		annotations map[string]string
		want        []string
	}{
		{"none", nil, nil},
		{"one", map[string]string{"egress.coil.cybozu.com/internet": "nat"}, []string{"internet/nat"}},
		{"comma-separated", map[string]string{"egress.coil.cybozu.com/internet": "nat, other ,,nat"}, []string{"internet/nat", "internet/other"}},
		{"several namespaces", map[string]string{
			"egress.coil.cybozu.com/b": "y",
			"egress.coil.cybozu.com/a": "x",
			"coil.cybozu.com/pool":     "tenant",
		}, []string{"a/x", "b/y"}},
		{"empty namespace", map[string]string{"egress.coil.cybozu.com/": "x"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: tt.annotations}}
			if got := clientEgresses(p); !slices.Equal(got, tt.want) {
				t.Errorf("clientEgresses = %q, want %q", got, tt.want)
			}
		})
	}
}

func a(s string) netip.Addr {
	if s == "" {
		return netip.Addr{}
	}
	return netip.MustParseAddr(s)
}

func TestOuter(t *testing.T) {
	tests := []struct {
		name            string
		client, gateway addrs
		wantC, wantG    string
		ok              bool
	}{
		{"both dual: IPv4", addrs{a("10.0.0.1"), a("fd00::1")}, addrs{a("10.0.0.2"), a("fd00::2")}, "10.0.0.1", "10.0.0.2", true},
		{"v6 client", addrs{v6: a("fd00::1")}, addrs{a("10.0.0.2"), a("fd00::2")}, "fd00::1", "fd00::2", true},
		{"v4 gateway, dual client", addrs{a("10.0.0.1"), a("fd00::1")}, addrs{v4: a("10.0.0.2")}, "10.0.0.1", "10.0.0.2", true},
		{"no common family", addrs{v4: a("10.0.0.1")}, addrs{v6: a("fd00::2")}, "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, g, ok := outer(tt.client, tt.gateway)
			if ok != tt.ok || c != a(tt.wantC) || g != a(tt.wantG) {
				t.Errorf("outer = %s, %s, %v; want %s, %s, %v", c, g, ok, tt.wantC, tt.wantG, tt.ok)
			}
		})
	}
}

func TestEligible(t *testing.T) {
	now := metav1.NewTime(time.Now())
	running := corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}}}
	tests := []struct {
		name string
		pod  corev1.Pod
		want bool
	}{
		{"running with address", corev1.Pod{Status: running}, true},
		{"pending", corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodPending, PodIPs: running.PodIPs}}, false},
		{"running without address", corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodRunning}}, false},
		{"only the old podIP field", corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "fd00::1"}}, true},
		{"being deleted", corev1.Pod{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &now}, Status: running}, false},
		{"failed", corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodFailed, PodIPs: running.PodIPs}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := eligible(&tt.pod); got != tt.want {
				t.Errorf("eligible = %v, want %v", got, tt.want)
			}
		})
	}
}

func gateways(n int) []gateway {
	var out []gateway
	for i := range n {
		out = append(out, gateway{key: fmt.Sprintf("internet/gw-%d", i), addrs: addrs{v4: netip.AddrFrom4([4]byte{10, 9, 0, byte(i + 1)})}})
	}
	return out
}

// TestChooseMovesOnlyClientsOfLostGateway is the property failover relies
// on: removing a gateway moves its clients and nobody else's, the others
// spread evenly, and the answer does not depend on the order of the list.
func TestChooseMovesOnlyClientsOfLostGateway(t *testing.T) {
	gws := gateways(4)
	const clients = 1000
	before := map[string]string{}
	count := map[string]int{}
	for i := range clients {
		k := fmt.Sprintf("app/client-%d", i)
		g, ok := choose(k, addrs{v4: a("10.1.0.1")}, gws)
		if !ok {
			t.Fatal("no gateway chosen")
		}
		rev := slices.Clone(gws)
		slices.Reverse(rev)
		if g2, _ := choose(k, addrs{v4: a("10.1.0.1")}, rev); g2.key != g.key {
			t.Fatalf("choice of %s depends on the order of the gateways: %s vs %s", k, g.key, g2.key)
		}
		before[k] = g.key
		count[g.key]++
	}
	for g, n := range count {
		if n < clients/4*7/10 || n > clients/4*13/10 {
			t.Errorf("gateway %s has %d of %d clients: uneven spread %v", g, n, clients, count)
		}
	}
	lost := gws[1].key
	rest := slices.Delete(slices.Clone(gws), 1, 2)
	moved := 0
	for k, old := range before {
		g, _ := choose(k, addrs{v4: a("10.1.0.1")}, rest)
		switch {
		case old == lost:
			moved++
		case g.key != old:
			t.Errorf("%s moved from %s to %s though its gateway stayed", k, old, g.key)
		}
	}
	if moved != count[lost] {
		t.Errorf("%d clients moved, want the %d of the lost gateway", moved, count[lost])
	}
}

func TestChooseFamily(t *testing.T) {
	gws := []gateway{
		{key: "x/v4", addrs: addrs{v4: a("10.9.0.1")}},
		{key: "x/v6", addrs: addrs{v6: a("fd00:9::1")}},
	}
	for i := range 50 {
		k := fmt.Sprintf("app/c%d", i)
		if g, ok := choose(k, addrs{v6: a("fd00:1::1")}, gws); !ok || g.key != "x/v6" {
			t.Fatalf("IPv6-only client %s chose %v, %v", k, g, ok)
		}
	}
	if _, ok := choose("app/c", addrs{v4: a("10.1.0.1")}, gws[1:]); ok {
		t.Error("an IPv4-only client chose an IPv6-only gateway")
	}
	if _, ok := choose("app/c", addrs{v4: a("10.1.0.1")}, nil); ok {
		t.Error("a gateway was chosen from none")
	}
}

func TestTrimPod(t *testing.T) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "n",
			Labels:      map[string]string{"app": "web", "coil.cybozu.com/egress": "nat"},
			Annotations: map[string]string{"egress.coil.cybozu.com/internet": "nat", "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
		},
		Spec:   corev1.PodSpec{NodeName: "node1", Containers: []corev1.Container{{Name: "c", Image: "i"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}}, Conditions: []corev1.PodCondition{{Type: corev1.PodReady}}},
	}
	o, err := trimPod(p)
	if err != nil {
		t.Fatal(err)
	}
	got := o.(*corev1.Pod)
	if len(got.Labels) != 1 || len(got.Annotations) != 1 || len(got.Spec.Containers) != 0 || len(got.Status.Conditions) != 0 {
		t.Errorf("trimmed pod keeps too much: %+v", got)
	}
	if gatewayOf(got) != "n/nat" || !slices.Equal(clientEgresses(got), []string{"internet/nat"}) || !eligible(got) || got.Spec.NodeName != "node1" {
		t.Errorf("trimmed pod lost what egress reads: %+v", got)
	}
}
