package controller

import rbacv1 "k8s.io/api/rbac/v1"

// ClusterRules are the cluster-wide permissions coil-controller needs, for
// a ClusterRole bound to its service account. docs/coil-controller.md shows
// them as YAML; the integration tests run the controller with exactly
// these, so a missing verb fails a test rather than a cluster.
func ClusterRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		// Informers list and watch; deletion is confirmed with a get.
		{APIGroups: []string{""}, Resources: []string{"nodes", "pods"}, Verbs: []string{"get", "list", "watch"}},
		// The UID of kube-system is the cluster identity stamped into etcd.
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get"}},
		// Events about reclaimed blocks and addresses; the recorder
		// patches an event when it repeats.
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch", "update"}},
		// Managed egress gateways, in whatever namespace an egress names:
		// informers list and watch the objects labelled as managed; get
		// looks at an object of the same name the cache lacks (never
		// updated unless it is labelled as managed).
		{APIGroups: []string{"apps"}, Resources: []string{"deployments"}, Verbs: []string{"get", "list", "watch", "create", "update", "delete"}},
		{APIGroups: []string{"policy"}, Resources: []string{"poddisruptionbudgets"}, Verbs: []string{"get", "list", "watch", "create", "update", "delete"}},
	}
}

// LeaseRules are the permissions on the leader-election Lease, for a Role
// in the --leader-elect-namespace.
func LeaseRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		// create: the first replica makes the Lease; get/update: campaign and renew.
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{DefaultLeaseName}, Verbs: []string{"get", "update"}},
	}
}
