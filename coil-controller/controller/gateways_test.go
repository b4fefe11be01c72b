package controller

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	"github.com/coil-project/coil/model"
	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

const testGatewayImage = "registry.example.com/coil:test"

// startGateways runs a gateway manager as the restricted controller user
// (exactly ClusterRules), so the RBAC is tested with it.
func startGateways(t *testing.T, c *cluster, st EgressStore) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	client := c.clientAs(t, controllerUser)
	recorder, stopEvents := NewEventRecorder(client)
	t.Cleanup(stopEvents)
	g := NewGateways(st, client, GatewayOptions{
		Image: testGatewayImage, Recorder: recorder, Metrics: NewMetrics(reg), Logger: testLogger(t, "gateways"),
	})
	runInBackground(t, g.Run)
	return reg
}

func (c *cluster) deployment(t *testing.T, name string) (*appsv1.Deployment, bool) {
	t.Helper()
	d, err := c.admin.AppsV1().Deployments(c.ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return d, true
}

func (c *cluster) pdb(t *testing.T, name string) (*policyv1.PodDisruptionBudget, bool) {
	t.Helper()
	p, err := c.admin.PolicyV1().PodDisruptionBudgets(c.ns).Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return p, true
}

// waitDeployment waits until the Deployment name exists and ok accepts it.
func (c *cluster) waitDeployment(t *testing.T, name, what string, ok func(*appsv1.Deployment) bool) *appsv1.Deployment {
	t.Helper()
	var got *appsv1.Deployment
	testenv.Eventually(t, 15*time.Second, what, func() bool {
		d, found := c.deployment(t, name)
		got = d
		return found && ok(d)
	})
	return got
}

func (c *cluster) waitGone(t *testing.T, name string) {
	t.Helper()
	testenv.Eventually(t, 15*time.Second, name+" Deployment and PodDisruptionBudget deleted", func() bool {
		_, d := c.deployment(t, name)
		_, p := c.pdb(t, name)
		return !d && !p
	})
}

// TestManagedGateways runs the gateway manager against the real
// kube-apiserver: an egress with replicas gets a Deployment and a
// PodDisruptionBudget, both follow changes of replicas and image, come
// back when deleted by hand and go with the egress or with --replicas 0;
// an egress without replicas, and objects coil-controller does not
// manage, are left alone.
func TestManagedGateways(t *testing.T) {
	c := newCluster(t)
	st := newStore(t)
	ctx := context.Background()
	t.Cleanup(func() {
		c.admin.AppsV1().Deployments(c.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		c.admin.PolicyV1().PodDisruptionBudgets(c.ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	})
	dst := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}

	// Objects of an egress deleted while no controller ran.
	ghost := model.Egress{Namespace: c.ns, Name: "ghost", Replicas: 1}
	if _, err := c.admin.AppsV1().Deployments(c.ns).Create(ctx, GatewayDeployment(ghost, "x", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.admin.PolicyV1().PodDisruptionBudgets(c.ns).Create(ctx, GatewayPDB(ghost), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A Deployment of the user's under the name an egress will want.
	foreign := GatewayDeployment(model.Egress{Namespace: c.ns, Name: "taken", Replicas: 1}, "users/own:1", nil)
	foreign.Labels = map[string]string{"app": "mine"}
	if _, err := c.admin.AppsV1().Deployments(c.ns).Create(ctx, foreign, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, e := range []model.Egress{
		{Namespace: c.ns, Name: "byo", Destinations: dst},
		{Namespace: c.ns, Name: "taken", Destinations: dst, Replicas: 1},
	} {
		if _, err := st.CreateEgress(ctx, e); err != nil {
			t.Fatal(err)
		}
	}

	reg := startGateways(t, c, st)
	c.waitGone(t, GatewayObjectName("ghost"))

	if _, err := st.CreateEgress(ctx, model.Egress{Namespace: c.ns, Name: "nat", Destinations: dst, Replicas: 2}); err != nil {
		t.Fatal(err)
	}
	name := GatewayObjectName("nat")
	d := c.waitDeployment(t, name, "gateway Deployment created", func(*appsv1.Deployment) bool { return true })
	t.Run("deployment", func(t *testing.T) {
		lbl := map[string]string{model.EgressGatewayLabel: "nat", ManagedByLabel: ManagedByValue}
		spec := d.Spec.Template.Spec
		switch {
		case *d.Spec.Replicas != 2:
			t.Errorf("replicas %d", *d.Spec.Replicas)
		case fmt.Sprint(d.Spec.Selector.MatchLabels) != fmt.Sprint(lbl) || fmt.Sprint(d.Spec.Template.Labels) != fmt.Sprint(lbl):
			t.Errorf("selector %v, pod labels %v", d.Spec.Selector.MatchLabels, d.Spec.Template.Labels)
		case len(spec.Containers) != 1 || spec.Containers[0].Image != testGatewayImage || !slices.Equal(spec.Containers[0].Command, []string{GatewayCommand}):
			t.Errorf("containers %+v", spec.Containers)
		case spec.Affinity == nil || spec.Affinity.PodAntiAffinity == nil ||
			spec.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.TopologyKey != corev1.LabelHostname:
			t.Errorf("affinity %+v", spec.Affinity)
		case spec.SecurityContext == nil || spec.SecurityContext.RunAsNonRoot == nil || !*spec.SecurityContext.RunAsNonRoot:
			t.Errorf("pod security context %+v", spec.SecurityContext)
		case d.Spec.Strategy.RollingUpdate == nil || d.Spec.Strategy.RollingUpdate.MaxUnavailable.IntValue() != 0:
			t.Errorf("strategy %+v", d.Spec.Strategy)
		}
		p, ok := c.pdb(t, name)
		if !ok {
			testenv.Eventually(t, 10*time.Second, "PodDisruptionBudget", func() bool { p, ok = c.pdb(t, name); return ok })
		}
		if p.Spec.MaxUnavailable == nil || *p.Spec.MaxUnavailable != intstr.FromInt32(1) || p.Spec.MinAvailable != nil ||
			fmt.Sprint(p.Spec.Selector.MatchLabels) != fmt.Sprint(lbl) {
			t.Errorf("PodDisruptionBudget spec %+v", p.Spec)
		}
		testenv.Eventually(t, 10*time.Second, "desired gateways metric", func() bool {
			return metricValue(t, reg, "coil_controller_egress_gateways_desired", map[string]string{"namespace": c.ns, "egress": "nat"}) == 2
		})
	})

	t.Run("bring your own is left alone", func(t *testing.T) {
		if _, found := c.deployment(t, GatewayObjectName("byo")); found {
			t.Error("an egress without replicas got a Deployment")
		}
		if got, _ := c.deployment(t, GatewayObjectName("taken")); got.Spec.Template.Spec.Containers[0].Image != "users/own:1" || got.Labels["app"] != "mine" {
			t.Errorf("the user's Deployment was changed: %+v", got)
		}
		testenv.Eventually(t, 10*time.Second, "NameTaken event", func() bool {
			return hasReason(c.events(t, c.ns, GatewayObjectName("taken")), EventGatewayNameTaken)
		})
	})

	replicas := func(n int32) model.EgressChange { return model.EgressChange{Replicas: &n} }
	image := func(s string) model.EgressChange { return model.EgressChange{Image: &s} }
	t.Run("scale", func(t *testing.T) {
		if _, _, err := st.ChangeEgress(ctx, c.ns, "nat", replicas(3)); err != nil {
			t.Fatal(err)
		}
		c.waitDeployment(t, name, "3 replicas", func(d *appsv1.Deployment) bool { return *d.Spec.Replicas == 3 })
	})
	t.Run("image", func(t *testing.T) {
		if _, _, err := st.ChangeEgress(ctx, c.ns, "nat", image("registry.example.com/pause:3.10")); err != nil {
			t.Fatal(err)
		}
		d := c.waitDeployment(t, name, "new image", func(d *appsv1.Deployment) bool {
			return d.Spec.Template.Spec.Containers[0].Image == "registry.example.com/pause:3.10"
		})
		// The image's own entrypoint runs.
		if cmd := d.Spec.Template.Spec.Containers[0].Command; cmd != nil || *d.Spec.Replicas != 3 {
			t.Errorf("command %v, replicas %d", cmd, *d.Spec.Replicas)
		}
	})
	t.Run("hand edits are undone", func(t *testing.T) {
		d, _ := c.deployment(t, name)
		d.Spec.Template.Spec.Containers[0].Image = "evil:1"
		if _, err := c.admin.AppsV1().Deployments(c.ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		c.waitDeployment(t, name, "image restored", func(d *appsv1.Deployment) bool {
			return d.Spec.Template.Spec.Containers[0].Image == "registry.example.com/pause:3.10"
		})
		if err := c.admin.AppsV1().Deployments(c.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := c.admin.PolicyV1().PodDisruptionBudgets(c.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		c.waitDeployment(t, name, "Deployment created again", func(d *appsv1.Deployment) bool { return *d.Spec.Replicas == 3 })
		testenv.Eventually(t, 10*time.Second, "PodDisruptionBudget created again", func() bool { _, ok := c.pdb(t, name); return ok })
	})
	t.Run("replicas 0 hands the gateways back", func(t *testing.T) {
		if _, _, err := st.ChangeEgress(ctx, c.ns, "nat", replicas(0)); err != nil {
			t.Fatal(err)
		}
		c.waitGone(t, name)
		testenv.Eventually(t, 10*time.Second, "desired metric gone", func() bool {
			return metricValue(t, reg, "coil_controller_egress_gateways_desired", map[string]string{"namespace": c.ns, "egress": "nat"}) == 0
		})
	})
	t.Run("deleted with the egress", func(t *testing.T) {
		if _, _, err := st.ChangeEgress(ctx, c.ns, "nat", replicas(1)); err != nil {
			t.Fatal(err)
		}
		c.waitDeployment(t, name, "1 replica, default image", func(d *appsv1.Deployment) bool {
			return *d.Spec.Replicas == 1 && d.Spec.Template.Spec.Containers[0].Image == testGatewayImage
		})
		if err := st.DeleteEgress(ctx, c.ns, "nat"); err != nil {
			t.Fatal(err)
		}
		c.waitGone(t, name)
	})
	if got, _ := c.deployment(t, GatewayObjectName("taken")); got == nil || got.Labels["app"] != "mine" {
		t.Errorf("the user's Deployment is gone or changed: %+v", got)
	}
}

// TestOwnImage: with no --egress-gateway-image, the default gateway image
// is the image of the controller's own container, read from its Pod as the
// restricted controller user.
func TestOwnImage(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "coil-controller-abc", Namespace: c.ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "proxy", Image: "registry.example.com/proxy:1"},
			{Name: "coil-controller", Image: "registry.example.com/coil:v1.2.3"},
		}},
	}
	if _, err := c.admin.CoreV1().Pods(c.ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	client := c.clientAs(t, controllerUser)
	if got, err := ownImage(ctx, client, c.ns, pod.Name); err != nil || got != "registry.example.com/coil:v1.2.3" {
		t.Errorf("ownImage = %q, %v", got, err)
	}
	if got, err := ownImage(ctx, client, "", ""); err == nil {
		t.Errorf("ownImage without POD_NAMESPACE and POD_NAME = %q", got)
	}
}

// TestRunAll: one function failing stops the others, and its error is
// returned once all have returned.
func TestRunAll(t *testing.T) {
	stopped := make(chan struct{})
	err := runAll(context.Background(),
		func(ctx context.Context) error { <-ctx.Done(); close(stopped); return nil },
		func(context.Context) error { return fmt.Errorf("boom") })
	select {
	case <-stopped:
	default:
		t.Error("runAll returned before the other function stopped")
	}
	if err == nil || err.Error() != "boom" {
		t.Errorf("runAll = %v", err)
	}
}
