package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/nodenet"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func nodeWith(addrs ...corev1.NodeAddress) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}
	n.Status.Addresses = addrs
	return n
}

func TestInternalIPs(t *testing.T) {
	internal := func(s string) corev1.NodeAddress { return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: s} }
	for _, tc := range []struct {
		name string
		node *corev1.Node
		want []string
	}{
		{"none", nodeWith(), nil},
		{"only other types", nodeWith(
			corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.1"},
			corev1.NodeAddress{Type: corev1.NodeHostName, Address: "node-1"}), nil},
		{"dual stack, IPv6 listed first", nodeWith(internal("2001:db8::1"), internal("192.0.2.1")), []string{"192.0.2.1", "2001:db8::1"}},
		{"first of each family", nodeWith(internal("192.0.2.1"), internal("192.0.2.2"), internal("2001:db8::1"), internal("2001:db8::2")), []string{"192.0.2.1", "2001:db8::1"}},
		{"ExternalIP is not taken", nodeWith(
			corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.1"}, internal("10.0.0.5")), []string{"10.0.0.5"}},
		{"unusable InternalIPs are skipped", nodeWith(
			internal("not-an-ip"), internal("127.0.0.1"), internal("fe80::1"), internal("0.0.0.0"), internal("10.0.0.5")), []string{"10.0.0.5"}},
		{"IPv4-mapped IPv6 is IPv4", nodeWith(internal("::ffff:10.0.0.5")), []string{"10.0.0.5"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := internalIPs(tc.node)
			var want []netip.Addr
			for _, s := range tc.want {
				want = append(want, netip.MustParseAddr(s))
			}
			if !slices.Equal(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}

func TestChooseNodeAddresses(t *testing.T) {
	a := netip.MustParseAddr
	eth0 := []nodenet.UplinkAddress{{Addr: a("192.0.2.10"), Link: "eth0"}, {Addr: a("2001:db8:1::10"), Link: "eth0"}}
	for _, tc := range []struct {
		name     string
		internal []netip.Addr
		uplink   []nodenet.UplinkAddress
		want     []nodeAddrSource
	}{
		{"nothing", nil, nil, nil},
		{"InternalIPs win over the default route", []netip.Addr{a("10.0.0.5"), a("fd00::5")}, eth0,
			[]nodeAddrSource{{a("10.0.0.5"), "Node InternalIP"}, {a("fd00::5"), "Node InternalIP"}}},
		{"default route only", nil, eth0,
			[]nodeAddrSource{{a("192.0.2.10"), "default route via eth0"}, {a("2001:db8:1::10"), "default route via eth0"}}},
		{"InternalIP for IPv6, default route for IPv4", []netip.Addr{a("fd00::5")}, eth0,
			[]nodeAddrSource{{a("192.0.2.10"), "default route via eth0"}, {a("fd00::5"), "Node InternalIP"}}},
		{"InternalIP for IPv4, no IPv6 default route", []netip.Addr{a("10.0.0.5")}, eth0[:1],
			[]nodeAddrSource{{a("10.0.0.5"), "Node InternalIP"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := chooseNodeAddresses(tc.internal, tc.uplink); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestWaitInternalIPs: the kubelet may register the Node after coild
// starts; coild waits for it, a bounded time.
func TestWaitInternalIPs(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	registered := nodeWith(corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.0.0.5"})

	t.Run("registered late", func(t *testing.T) {
		kube := fake.NewClientset()
		d := &daemon{cfg: Config{NodeName: "node-1", NodeWait: 20 * time.Second}, log: quiet}
		go func() {
			time.Sleep(1500 * time.Millisecond)
			kube.CoreV1().Nodes().Create(context.Background(), registered, metav1.CreateOptions{})
		}()
		start := time.Now()
		got, why := d.waitInternalIPs(context.Background(), kube)
		if !slices.Equal(got, []netip.Addr{netip.MustParseAddr("10.0.0.5")}) || why != "" {
			t.Errorf("got %v (%q), want 10.0.0.5", got, why)
		}
		if el := time.Since(start); el < time.Second || el > 10*time.Second {
			t.Errorf("took %v", el)
		}
	})
	t.Run("never registered", func(t *testing.T) {
		d := &daemon{cfg: Config{NodeName: "node-1", NodeWait: 1500 * time.Millisecond}, log: quiet}
		start := time.Now()
		got, why := d.waitInternalIPs(context.Background(), fake.NewClientset())
		if got != nil || !strings.Contains(why, "does not exist") {
			t.Errorf("got %v (%q), want none because the Node does not exist", got, why)
		}
		if el := time.Since(start); el < 1500*time.Millisecond || el > 5*time.Second {
			t.Errorf("waited %v, want about 1.5s", el)
		}
	})
	t.Run("registered without InternalIP", func(t *testing.T) {
		d := &daemon{cfg: Config{NodeName: "node-1", NodeWait: 500 * time.Millisecond}, log: quiet}
		got, why := d.waitInternalIPs(context.Background(), fake.NewClientset(nodeWith()))
		if got != nil || !strings.Contains(why, "no InternalIP") {
			t.Errorf("got %v (%q)", got, why)
		}
	})
	t.Run("context ends", func(t *testing.T) {
		d := &daemon{cfg: Config{NodeName: "node-1", NodeWait: time.Hour}, log: quiet}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		d.waitInternalIPs(ctx, fake.NewClientset())
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("waited %v after the context ended", el)
		}
	})
}
