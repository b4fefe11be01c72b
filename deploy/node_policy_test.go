package deploy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/coil-installer/installer"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// TestCoildOwnNodePolicy: with the shipped ValidatingAdmissionPolicy, a
// coild token bound to one node can remove that node's bootstrap taint and
// nothing else: not another node's taint, not its own node's labels or
// other taints. Real kube-apiserver, real service account tokens bound to
// Node objects (the node claim pod-bound tokens carry as well).
func TestCoildOwnNodePolicy(t *testing.T) {
	s := cluster(t)
	ctx := context.Background()
	applyKinds(t, s, "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
	admin := kubernetes.NewForConfigOrDie(s.Config)
	taints := []corev1.Taint{
		{Key: installer.BootstrapTaint, Effect: corev1.TaintEffectNoSchedule},
		{Key: "example.com/other", Effect: corev1.TaintEffectNoSchedule},
	}
	coildAs := map[string]kubernetes.Interface{}
	for _, name := range []string{"policy-node-a", "policy-node-b"} {
		n, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"role": "worker"}},
			Spec:       corev1.NodeSpec{Taints: taints},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = admin.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
		tr, err := admin.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, coildSA, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{
				BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Node", APIVersion: "v1", Name: name, UID: n.UID},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("token bound to node %s: %v", name, err)
		}
		cfg := rest.AnonymousClientConfig(s.Config)
		cfg.BearerToken = tr.Status.Token
		coildAs[name] = kubernetes.NewForConfigOrDie(cfg)
	}

	// The policy takes effect once the API server has loaded it: wait
	// until the first forbidden write is refused.
	forbidden := func(err error, want string) bool {
		return apierrors.IsInvalid(err) || apierrors.IsForbidden(err) && strings.Contains(err.Error(), want)
	}
	patchLabel := []byte(`{"metadata":{"labels":{"role":"gateway"}}}`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := coildAs["policy-node-a"].CoreV1().Nodes().Patch(ctx, "policy-node-b", types.MergePatchType, patchLabel, metav1.PatchOptions{})
		if err != nil && forbidden(err, "only the Node it runs on") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("coild bound to node-a may still change node-b: %v", err)
		}
		if err == nil {
			// Undo, so that the checks below start from the original.
			_, _ = admin.CoreV1().Nodes().Patch(ctx, "policy-node-b", types.MergePatchType, []byte(`{"metadata":{"labels":{"role":"worker"}}}`), metav1.PatchOptions{})
		}
		time.Sleep(200 * time.Millisecond)
	}

	a := coildAs["policy-node-a"]
	for _, tc := range []struct {
		name, node string
		patch      string
		want       string // "" means allowed
	}{
		{"another node's bootstrap taint", "policy-node-b", `{"spec":{"taints":[{"key":"example.com/other","effect":"NoSchedule"}]}}`, "only the Node it runs on"},
		{"own node's labels", "policy-node-a", `{"metadata":{"labels":{"role":"gateway"}}}`, "only the coil.cybozu.com/bootstrap taint"},
		{"own node's other taint", "policy-node-a", `{"spec":{"taints":[{"key":"coil.cybozu.com/bootstrap","effect":"NoSchedule"}]}}`, "only the coil.cybozu.com/bootstrap taint"},
		{"own node unschedulable", "policy-node-a", `{"spec":{"unschedulable":true}}`, "only the coil.cybozu.com/bootstrap taint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := a.CoreV1().Nodes().Patch(ctx, tc.node, types.MergePatchType, []byte(tc.patch), metav1.PatchOptions{})
			if err == nil || !forbidden(err, tc.want) {
				t.Errorf("patch = %v, want refused with %q", err, tc.want)
			}
		})
	}

	// What the untaint sidecar does is allowed, on its own node only.
	if removed, err := installer.RemoveTaint(ctx, a, "policy-node-a", installer.BootstrapTaint); err != nil || !removed {
		t.Fatalf("coild removing its own node's bootstrap taint: %v, %v", removed, err)
	}
	if _, err := installer.RemoveTaint(ctx, a, "policy-node-b", installer.BootstrapTaint); err == nil {
		t.Errorf("coild bound to node-a removed node-b's bootstrap taint")
	}
	for name, wantBootstrap := range map[string]bool{"policy-node-a": false, "policy-node-b": true} {
		n, err := admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		has := map[string]bool{}
		for _, taint := range n.Spec.Taints {
			has[taint.Key] = true
		}
		if has[installer.BootstrapTaint] != wantBootstrap || !has["example.com/other"] || n.Labels["role"] != "worker" || n.Spec.Unschedulable {
			t.Errorf("node %s: taints %v, labels %v, unschedulable %v; want bootstrap taint %v, the other taint and role=worker", name, n.Spec.Taints, n.Labels, n.Spec.Unschedulable, wantBootstrap)
		}
	}

	// A coild token without a node claim may change no Node at all.
	tr, err := admin.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, coildSA, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(s.Config)
	cfg.BearerToken = tr.Status.Token
	unbound := kubernetes.NewForConfigOrDie(cfg)
	if _, err := installer.RemoveTaint(ctx, unbound, "policy-node-b", installer.BootstrapTaint); err == nil || !forbidden(err, "only the Node it runs on") {
		t.Errorf("coild token without a node claim removing a taint: %v, want refused", err)
	}
}
