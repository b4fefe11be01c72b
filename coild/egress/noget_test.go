package egress

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/coil-project/coil/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
)

// TestSetupPodAsksTheAPIOnlyWhenItMatters: the ADD of a pod the cache does
// not hold yet asks the API server for it only while an egress exists that
// the pod could use; with none, there is nothing to program, and no round
// trip (nor the client's rate limit) delays the ADD.
func TestSetupPodAsksTheAPIOnlyWhenItMatters(t *testing.T) {
	ctx := context.Background()
	kube := fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web",
		Annotations: map[string]string{"egress.coil.cybozu.com/internet": "nat"}}})
	r := New(Config{Node: "n1", Kube: kube})
	addr := model.Address{IPv4: netip.MustParseAddr("10.1.0.5"), Owner: model.Owner{Namespace: "app", Pod: "web", NetNS: "/nonexistent"}}
	gets := func() int {
		n := 0
		for _, a := range kube.Actions() {
			if a.GetVerb() == "get" && a.GetResource().Resource == "pods" {
				n++
			}
		}
		return n
	}

	r.setEgresses(nil)
	if _, err := r.SetupPod(ctx, addr); err != nil {
		t.Fatalf("SetupPod with no egress = %v", err)
	}
	if n := gets(); n != 0 {
		t.Errorf("SetupPod with no egress sent %d GETs of the pod", n)
	}

	r.setEgresses([]model.Egress{{Namespace: "internet", Name: "nat", Destinations: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, VNI: 5}})
	// The pod is a client; coild is not ready (no pools, no informers),
	// so the ADD fails closed, after asking the API for the pod.
	if _, err := r.SetupPod(ctx, addr); err == nil {
		t.Error("SetupPod of a client before coild is ready succeeded")
	}
	if n := gets(); n != 1 {
		t.Errorf("SetupPod with an egress sent %d GETs of the pod, want 1", n)
	}

	// PrepareSetup, called at the ADD's allocation, starts the one GET
	// that SetupPod then uses.
	ctx2, cancel := context.WithCancel(ctx)
	stop := r.runPrefetch(ctx2)
	for range 2 { // a retried allocation: still one GET
		if !r.PrepareSetup("app", "web", nil) {
			t.Error("PrepareSetup of a pod not cached while an egress exists = false")
		}
	}
	if _, err := r.SetupPod(ctx, addr); err == nil {
		t.Error("SetupPod of a client before coild is ready succeeded")
	}
	if n := gets(); n != 2 {
		t.Errorf("prefetch and SetupPod sent %d GETs of the pod in all, want 1 more", n)
	}
	cancel()
	stop()
	r.PrepareSetup("app", "web", nil) // not running: nothing started
	if n := gets(); n != 2 {
		t.Errorf("PrepareSetup of a stopped reconciler sent a GET")
	}
}

// TestPrepareSetup: the judgement coild sends with an allocation (the
// plugin skips POST /egress on false) is false only where SetupPod would
// set nothing up, and true whenever the reconciler cannot tell.
func TestPrepareSetup(t *testing.T) {
	nat := model.Egress{Namespace: "internet", Name: "nat", Destinations: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, VNI: 5}
	pod := func(name string, annotations, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: name, Annotations: annotations, Labels: labels},
			Spec: corev1.PodSpec{NodeName: "n1"}}
	}
	client := map[string]string{model.EgressClientAnnotationPrefix + "internet": "nat"}
	// The runtime's annotations (io.kubernetes.cri.pod-annotations, as
	// containerd passes them): nil when it passed none.
	none := map[string]string{}
	inApp := model.Egress{Namespace: "app", Name: "out", Destinations: nat.Destinations, VNI: 6}
	tests := []struct {
		name        string
		egresses    []model.Egress // nil: not loaded yet
		loaded      bool
		cached      *corev1.Pod
		annotations map[string]string
		want        bool
	}{
		{"egresses not loaded, pod not cached", nil, false, nil, nil, true},
		{"no egress, pod not cached", nil, true, nil, nil, false},
		{"an egress, pod not cached", []model.Egress{nat}, true, nil, nil, true},
		{"an egress, cached pod uses none", []model.Egress{nat}, true, pod("web", nil, nil), nil, false},
		{"an egress, cached client", []model.Egress{nat}, true, pod("web", client, nil), nil, true},
		{"no egress, cached client of a missing one", nil, true, pod("web", client, nil), nil, true},
		{"an egress, cached gateway", []model.Egress{nat}, true, pod("web", nil, map[string]string{model.EgressGatewayLabel: "nat"}), nil, true},
		// The runtime's annotations answer for a pod not cached, unless
		// it may be a gateway (labels are not passed).
		{"an egress elsewhere, runtime says no client", []model.Egress{nat}, true, nil, none, false},
		{"an egress elsewhere, runtime says client", []model.Egress{nat}, true, nil, client, true},
		{"an egress in the pod's namespace, runtime says no client", []model.Egress{nat, inApp}, true, nil, none, true},
		{"egresses not loaded, runtime says no client", nil, false, nil, none, true},
		{"cache wins over the runtime", []model.Egress{nat}, true, pod("web", client, nil), none, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var objs []runtime.Object
			fromRuntime := tt.cached == nil && tt.annotations != nil
			if fromRuntime {
				// The API holds the pod as the runtime described it.
				objs = append(objs, pod("web", tt.annotations, nil))
			}
			kube := fake.NewClientset(objs...)
			r := New(Config{Node: "n1", Kube: kube})
			if tt.loaded {
				r.setEgresses(tt.egresses)
			}
			if tt.cached != nil {
				if err := r.pods.localInf.GetStore().Add(tt.cached); err != nil {
					t.Fatal(err)
				}
			}
			if got := r.PrepareSetup("app", "web", tt.annotations); got != tt.want {
				t.Fatalf("PrepareSetup = %v, want %v", got, tt.want)
			}
			if tt.want {
				return
			}
			if n := len(kube.Actions()); n != 0 {
				t.Errorf("PrepareSetup sent %d API requests", n)
			}
			// Where it says no, SetupPod does nothing either: no answer,
			// no error, and no API round trip when the cache told.
			addr := model.Address{IPv4: netip.MustParseAddr("10.1.0.5"), Owner: model.Owner{Namespace: "app", Pod: "web", NetNS: "/nonexistent"}}
			got, err := r.SetupPod(context.Background(), addr)
			if err != nil || len(got.Clients) > 0 || got.Gateway != "" || len(got.Missing) > 0 {
				t.Errorf("SetupPod = %+v, %v; want nothing set up", got, err)
			}
			if n := len(kube.Actions()); n != 0 && !fromRuntime {
				t.Errorf("SetupPod sent %d API requests", n)
			}
		})
	}
}

// TestSetupPodOfAClientFromTheRuntimesAnnotations: a client pod the cache
// does not hold yet is set up from the annotations the runtime passed,
// without asking the API server, unless an egress lives in its namespace
// (it may be a gateway, which only the API can tell).
func TestSetupPodOfAClientFromTheRuntimesAnnotations(t *testing.T) {
	nat := model.Egress{Namespace: "internet", Name: "nat", Destinations: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, VNI: 5}
	inApp := model.Egress{Namespace: "app", Name: "out", Destinations: nat.Destinations, VNI: 6}
	client := map[string]string{model.EgressClientAnnotationPrefix + "internet": "nat"}
	tests := []struct {
		name     string
		egresses []model.Egress
		gets     int
	}{
		{"no egress in the pod's namespace", []model.Egress{nat}, 0},
		{"an egress in the pod's namespace", []model.Egress{nat, inApp}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kube := fake.NewClientset(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web", Annotations: client}})
			r := New(Config{Node: "n1", Kube: kube})
			r.setEgresses(tt.egresses)
			ctx, cancel := context.WithCancel(context.Background())
			stop := r.runPrefetch(ctx)
			defer func() { cancel(); stop() }()

			if !r.PrepareSetup("app", "web", client) {
				t.Fatal("PrepareSetup of a client = false")
			}
			// coild is not ready (no pools, no informers): SetupPod fails
			// closed, having found that the pod is a client.
			addr := model.Address{IPv4: netip.MustParseAddr("10.1.0.5"), Owner: model.Owner{Namespace: "app", Pod: "web", NetNS: "/nonexistent"}}
			if _, err := r.SetupPod(ctx, addr); !errors.Is(err, ErrNotReady) {
				t.Errorf("SetupPod = %v, want the client refused as not ready", err)
			}
			stop() // waits for the fetch PrepareSetup may have started
			n := 0
			for _, a := range kube.Actions() {
				if a.GetVerb() == "get" && a.GetResource().Resource == "pods" {
					n++
				}
			}
			if n != tt.gets {
				t.Errorf("%d GETs of the pod, want %d", n, tt.gets)
			}
		})
	}
}
