package mtest

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// mtestGatewayImage is what coil-controller is told the Coil image is.
const mtestGatewayImage = "coil.local/coil:mtest"

// TestEgressManagedGateways: `coilctl egress create --replicas` makes the
// coil-controller binary create the gateway Deployment and
// PodDisruptionBudget in the real kube-apiserver; pods made from the
// Deployment's template (started here as the ReplicaSet controller and
// kubelet would: this bed has neither) are working gateways; `coilctl
// egress update --replicas --image` changes the Deployment, and deleting
// the egress deletes both objects and the tunnels.
func TestEgressManagedGateways(t *testing.T) {
	c := newCluster(t, Options{Nodes: 3, FlatL2: true, External: true, Controller: true,
		ControllerArgs: []string{"--egress-gateway-image", mtestGatewayImage}})
	ctx := context.Background()
	ext := c.External
	mustCoilctl(t, c, "pool", "create", "default", "10.100.0.0/16", "5", "--ipv6", "fd00:10:100::/112")
	mustCoilctl(t, c, "pool", "create", "egress", "10.102.0.0/24", "4", "--ipv6", "fd00:10:102::/120")
	if err := c.CreateNamespace(ctx, "internet", map[string]string{"coil.cybozu.com/pool": "egress"}); err != nil {
		t.Fatal(err)
	}
	mustCoilctl(t, c, "egress", "create", "internet", "nat", "--destinations", externalNet4+","+externalNet6, "--replicas", "2")

	deployment := func(ok func(*appsv1.Deployment) error) *appsv1.Deployment {
		t.Helper()
		var d *appsv1.Deployment
		if err := Eventually(15*time.Second, func() error {
			var err error
			if d, err = c.Kube.AppsV1().Deployments("internet").Get(ctx, "nat-gateway", metav1.GetOptions{}); err != nil {
				return err
			}
			return ok(d)
		}); err != nil {
			t.Fatalf("gateway Deployment: %v", err)
		}
		return d
	}

	var template map[string]string
	step(t, "coil-controller creates the Deployment and PodDisruptionBudget", func(t *testing.T) {
		d := deployment(func(d *appsv1.Deployment) error {
			if *d.Spec.Replicas != 2 || d.Spec.Template.Spec.Containers[0].Image != mtestGatewayImage {
				return fmt.Errorf("replicas %d, image %s", *d.Spec.Replicas, d.Spec.Template.Spec.Containers[0].Image)
			}
			return nil
		})
		template = d.Spec.Template.Labels
		if template["coil.cybozu.com/egress"] != "nat" {
			t.Fatalf("pod template labels %v", template)
		}
		// The controller creates the budget after the Deployment.
		var pdb *policyv1.PodDisruptionBudget
		if err := Eventually(15*time.Second, func() error {
			var err error
			pdb, err = c.Kube.PolicyV1().PodDisruptionBudgets("internet").Get(ctx, "nat-gateway", metav1.GetOptions{})
			return err
		}); err != nil {
			t.Fatalf("gateway PodDisruptionBudget: %v", err)
		}
		if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 {
			t.Errorf("PodDisruptionBudget %+v", pdb.Spec)
		}
	})

	gateways := map[netip.Addr]*Pod{}
	step(t, "pods of the template are gateways", func(t *testing.T) {
		for i, n := range c.Nodes[:2] {
			p, err := n.StartPodWith(ctx, "internet", fmt.Sprintf("nat-gateway-%d", i), PodMeta{Labels: maps.Clone(template)})
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range p.IPs {
				gateways[a] = p
			}
		}
		if err := ext.RouteBlocks("egress"); err != nil {
			t.Fatal(err)
		}
		client, err := c.Nodes[2].StartPodWith(ctx, "app", "client", PodMeta{Annotations: map[string]string{"egress.coil.cybozu.com/internet": "nat"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, target := range []netip.AddrPort{ext.Server4, ext.Server6} {
			seen, err := client.SeenAs(target, 5*time.Second)
			if err != nil {
				t.Fatalf("client cannot reach %s: %v", target, err)
			}
			if gateways[seen] == nil {
				t.Fatalf("the external host saw the client as %s, not as a managed gateway pod", seen)
			}
		}
	})

	step(t, "coilctl egress update changes the Deployment", func(t *testing.T) {
		mustCoilctl(t, c, "egress", "update", "internet", "nat", "--replicas", "3", "--image", "registry.example.com/pause:3.10")
		deployment(func(d *appsv1.Deployment) error {
			if *d.Spec.Replicas != 3 || d.Spec.Template.Spec.Containers[0].Image != "registry.example.com/pause:3.10" {
				return fmt.Errorf("replicas %d, image %s", *d.Spec.Replicas, d.Spec.Template.Spec.Containers[0].Image)
			}
			return nil
		})
	})

	step(t, "deleting the egress deletes the Deployment and PodDisruptionBudget", func(t *testing.T) {
		mustCoilctl(t, c, "egress", "delete", "internet", "nat")
		if err := Eventually(15*time.Second, func() error {
			if _, err := c.Kube.AppsV1().Deployments("internet").Get(ctx, "nat-gateway", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("deployment: %v", err)
			}
			if _, err := c.Kube.PolicyV1().PodDisruptionBudgets("internet").Get(ctx, "nat-gateway", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return fmt.Errorf("poddisruptionbudget: %v", err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := Eventually(10*time.Second, func() error {
			for _, p := range gateways {
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
	})
}
