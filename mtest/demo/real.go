package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/coil-project/coil/mtest"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// upReal runs the demo on real nodes: kubelet and containerd in every node
// namespace, Coil installed from deploy/ as docs/setup.md says, pods
// started by the kubelet.
func upReal(ctx context.Context, statePath string) error {
	step("starting etcd (TLS), kube-apiserver, kube-scheduler, kube-controller-manager, and kubelet + containerd on 3 node namespaces")
	c, show, err := startCluster(ctx, statePath, mtest.Options{Nodes: 3, RealNodes: true, Detached: true, External: true})
	if err != nil {
		return err
	}
	kubectl := func(args ...string) error {
		out, err := c.Kubectl(ctx, c.Dir, args...)
		fmt.Printf("$ kubectl %s\n%s", strings.Join(args, " "), out)
		return err
	}

	step("installing Coil with the commands of docs/setup.md (kubectl apply -k of an overlay of deploy/)")
	steps, err := c.InstallCoil(ctx)
	for _, s := range steps {
		if slices.Contains(s.Command, "logs") {
			continue
		}
		fmt.Printf("$ %s\n%s", strings.Join(s.Command, " "), s.Output)
	}
	if err != nil {
		return err
	}

	step("a second pool, for the namespace tenant-a")
	if err := show("pool", "create", "tenant", "10.65.0.0/16", "4"); err != nil {
		return err
	}
	if err := c.CreateNamespace(ctx, "tenant-a", map[string]string{"coil.cybozu.com/pool": "tenant"}); err != nil {
		return err
	}
	fmt.Println("namespace tenant-a annotated coil.cybozu.com/pool=tenant")

	step("Deployments: the kubelet starts the pods, and calls coil through containerd")
	for ns, replicas := range map[string]int32{"default": 3, "tenant-a": 1} {
		if _, err := c.Kube.AppsV1().Deployments(ns).Create(ctx, demoDeployment("web", replicas), metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	var pods []corev1.Pod
	for ns, want := range map[string]int{"default": 3, "tenant-a": 1} {
		got, err := waitPods(ctx, c, ns, "app=web", want)
		if err != nil {
			return err
		}
		pods = append(pods, got...)
	}
	if err := kubectl("get", "pods", "-A", "-o", "wide", "--field-selector", "metadata.namespace!=coil-system"); err != nil {
		return err
	}

	step("blocks per node")
	if err := show("pool", "show", "default"); err != nil {
		return err
	}
	if err := show("pool", "list"); err != nil {
		return err
	}
	if err := showExportTables(c); err != nil {
		return err
	}

	step("cross-node traffic (flat L2: coild routes to other nodes' blocks)")
	from := pods[0]
	fromNode := c.NodeOf(from.Spec.NodeName)
	for _, to := range pods[1:] {
		if to.Spec.NodeName == from.Spec.NodeName {
			continue
		}
		result := "ok"
		var err error
		for try := 0; try < 20; try++ {
			if _, err = fromNode.PodExec(ctx, netip.MustParseAddr(from.Status.PodIP), "ping", "-c", "1", "-W", "1", to.Status.PodIP); err == nil {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		if err != nil {
			result = "FAILED: " + err.Error()
		}
		fmt.Printf("ping %s (%s on %s) -> %s (%s/%s on %s): %s\n", from.Status.PodIP, from.Name, from.Spec.NodeName, to.Status.PodIP, to.Namespace, to.Name, to.Spec.NodeName, result)
	}

	startTenantPod := func() (string, error) {
		if _, err := c.Kube.AppsV1().Deployments("tenant-a").Create(ctx, demoDeployment("app-2", 1), metav1.CreateOptions{}); err != nil {
			return "", err
		}
		pods, err := waitPods(ctx, c, "tenant-a", "app=app-2", 1)
		if err != nil {
			return "", err
		}
		p := pods[0]
		return fmt.Sprintf("new pod tenant-a/%s on %s: %s (tenant-a/web keeps its address in the drained subnet)", p.Name, p.Spec.NodeName, p.Status.PodIP), nil
	}
	if err := demoPoolOps(ctx, c, show, poolOps{drain: "10.65.0.0/16", add: "10.67.0.0/16", startPod: startTenantPod}); err != nil {
		return err
	}

	if err := demoRealEgress(ctx, c, show, kubectl); err != nil {
		return err
	}
	if err := c.SaveState(statePath); err != nil {
		return err
	}

	step("the demo keeps running; look around:")
	ctl := strings.SplitN(c.Nodes[0].NetNS, "-", 2)[0] + "-ctl"
	kube := fmt.Sprintf("ip netns exec %s env KUBECONFIG=%s %s", ctl, filepath.Join(c.Dir, "admin.kubeconfig"), kubectlPath(c))
	fmt.Printf("  %s get nodes -o wide\n", kube)
	fmt.Printf("  %s get pods -A -o wide\n", kube)
	fmt.Printf("  %s -n coil-system logs daemonset/coild -c coild\n", kube)
	fmt.Printf("  %s -n coil-system get daemonset,deployment,pods\n", kube)
	fmt.Printf("  ip netns exec %s ip route show table 119\n", c.Nodes[0].NetNS)
	fmt.Printf("  ip netns exec %s env COILCTL_ETCD_ENDPOINTS=%s COILCTL_ETCD_TLS_CA=%s COILCTL_ETCD_TLS_CERT=%s COILCTL_ETCD_TLS_KEY=%s %s/coilctl pool show default\n",
		ctl, c.EtcdEndpoints(), filepath.Join(c.Dir, "install", "ca.crt"), filepath.Join(c.Dir, "install", "coil.crt"), filepath.Join(c.Dir, "install", "coil.key"), c.BinDir)
	fmt.Printf("  logs: %s (kubelet and containerd: %s/node*/kube/log)\n", c.Dir, c.Dir)
	fmt.Println("remove it with: make demo-down")
	return nil
}

// kubectlPath is the kubectl the cluster uses (built from the Kubernetes
// module into the cache).
func kubectlPath(c *mtest.Cluster) string {
	p, err := c.KubectlPath()
	if err != nil {
		return "kubectl"
	}
	return p
}

// demoRealEgress applies deploy/examples/egress-gateway.yaml (with the
// locally built pause image), creates its egress and a client Deployment,
// and shows the external host seeing the client as a gateway.
func demoRealEgress(ctx context.Context, c *mtest.Cluster, show func(...string) error, kubectl func(...string) error) error {
	step("egress NAT: deploy/examples/egress-gateway.yaml, gateway pods run by the kubelet")
	if err := show("pool", "create", "internet", "10.66.0.0/24", "4"); err != nil {
		return err
	}
	if err := show("egress", "create", "internet-egress", "nat", "--destinations", mtest.ExternalV4+"/32"); err != nil {
		return err
	}
	example, err := os.ReadFile(filepath.Join(mtest.RepoRoot(), "deploy", "examples", "egress-gateway.yaml"))
	if err != nil {
		return err
	}
	manifest := filepath.Join(c.Dir, "egress-gateway.yaml")
	if err := os.WriteFile(manifest, []byte(strings.ReplaceAll(string(example), "registry.k8s.io/pause:3.10", mtest.PauseImage)), 0o644); err != nil {
		return err
	}
	if err := kubectl("apply", "-f", manifest); err != nil {
		return err
	}
	gws, err := waitPods(ctx, c, "internet-egress", "coil.cybozu.com/egress=nat", 2)
	if err != nil {
		return err
	}
	gateways := map[string]corev1.Pod{}
	for _, g := range gws {
		gateways[g.Status.PodIP] = g
		fmt.Printf("gateway pod internet-egress/%s on %s: %s\n", g.Name, g.Spec.NodeName, g.Status.PodIP)
	}
	if err := c.External.RouteBlocks("internet"); err != nil {
		return err
	}

	step("a client Deployment opts in with the annotation egress.coil.cybozu.com/internet-egress=nat")
	client := demoDeployment("client", 1)
	client.Spec.Template.Annotations = map[string]string{"egress.coil.cybozu.com/internet-egress": "nat"}
	// Not beside a gateway: the demo cuts a gateway's node off below.
	client.Spec.Template.Spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
			TopologyKey:   "kubernetes.io/hostname",
			Namespaces:    []string{"internet-egress"},
			LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"coil.cybozu.com/egress": "nat"}},
		}},
	}}
	if _, err := c.Kube.AppsV1().Deployments("default").Create(ctx, client, metav1.CreateOptions{}); err != nil {
		return err
	}
	clients, err := waitPods(ctx, c, "default", "app=client", 1)
	if err != nil {
		return err
	}
	cl := clients[0]
	ns, err := c.NodeOf(cl.Spec.NodeName).PodNetNSPath(ctx, netip.MustParseAddr(cl.Status.PodIP))
	if err != nil {
		return err
	}
	var seen netip.Addr
	for try := 0; try < 20; try++ {
		if seen, err = mtest.SeenFrom(ns, c.External.Server4, 3*time.Second); err == nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	switch g, ok := gateways[seen.String()]; {
	case err != nil:
		fmt.Printf("client %s -> external host %s: no answer: %v\n", cl.Status.PodIP, c.External.Server4.Addr(), err)
	case ok:
		fmt.Printf("client %s on %s -> external host %s: seen as %s, gateway pod %s on %s\n", cl.Status.PodIP, cl.Spec.NodeName, c.External.Server4.Addr(), seen, g.Name, g.Spec.NodeName)
	default:
		fmt.Printf("client %s -> external host %s: seen as %s\n", cl.Status.PodIP, c.External.Server4.Addr(), seen)
	}
	if err := show("egress", "list"); err != nil {
		return err
	}
	return demoRealNodeLoss(c, ns, gateways)
}

// demoRealNodeLoss freezes the node of the client's gateway and cuts its
// uplink (a power loss the API is not told of), prints how long the
// client's new connections paused, and brings the node back.
func demoRealNodeLoss(c *mtest.Cluster, clientNS string, gateways map[string]corev1.Pod) error {
	ext := c.External
	seen, err := mtest.SeenFrom(clientNS, ext.Server4, 3*time.Second)
	if err != nil {
		return fmt.Errorf("client through a gateway: %w", err)
	}
	gw, ok := gateways[seen.String()]
	if !ok {
		return fmt.Errorf("the client is seen as %s, not as a gateway", seen)
	}
	node := c.NodeOf(gw.Spec.NodeName)
	step("%s, the node of the client's gateway %s, loses power (uplink cut, kubelet, containerd and coild frozen; the API is not told)", node.Name, gw.Name)
	start := time.Now()
	if err := node.PowerOff(); err != nil {
		return err
	}
	other := func(a netip.Addr) bool { g, ok := gateways[a.String()]; return ok && g.Name != gw.Name }
	took, ok := mtest.FirstSeenFrom(clientNS, ext.Server4, other, start, 15*time.Second)
	if !ok {
		node.PowerOn()
		return fmt.Errorf("15s after %s lost power the client does not get out through another gateway", node.Name)
	}
	now, _ := mtest.SeenFrom(clientNS, ext.Server4, 3*time.Second)
	fmt.Printf("new connections of the client paused %v, then went out as %s (gateway pod %s): coild's probes found %s down\n",
		took.Round(time.Millisecond), now, gateways[now.String()].Name, gw.Name)
	step("%s comes back", node.Name)
	if err := node.PowerOn(); err != nil {
		return err
	}
	took, ok = mtest.FirstSeenFrom(clientNS, ext.Server4, func(a netip.Addr) bool { return a.String() == gw.Status.PodIP }, time.Now(), 15*time.Second)
	if !ok {
		return fmt.Errorf("the client does not go through %s again", gw.Name)
	}
	fmt.Printf("after %v (three good probes) new connections go through %s again\n", took.Round(time.Millisecond), gw.Name)
	return nil
}

// demoDeployment is a Deployment of pause pods, one per node as far as
// replicas allow.
func demoDeployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: new(int64),
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: "kubernetes.io/hostname",
						WhenUnsatisfiable: corev1.ScheduleAnyway,
						LabelSelector:     &metav1.LabelSelector{MatchLabels: labels},
					}},
					Containers: []corev1.Container{{Name: "pause", Image: mtest.PauseImage, ImagePullPolicy: corev1.PullNever}},
				},
			},
		},
	}
}

// waitPods waits until want pods of the selector run with an address.
func waitPods(ctx context.Context, c *mtest.Cluster, namespace, selector string, want int) ([]corev1.Pod, error) {
	var pods []corev1.Pod
	err := mtest.Eventually(3*time.Minute, func() error {
		list, err := c.Kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return err
		}
		pods = pods[:0]
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
				pods = append(pods, p)
			}
		}
		if len(pods) != want {
			return fmt.Errorf("%s: %d of %d pods running", namespace, len(pods), want)
		}
		return nil
	})
	return pods, err
}

// showExportTables prints every node's table 119.
func showExportTables(c *mtest.Cluster) error {
	step("export tables (routing table 119, for BIRD or any routing daemon)")
	for _, n := range c.Nodes {
		for _, fam := range []string{"-4", "-6"} {
			routes, err := n.Routes(fam, "119")
			if err != nil {
				return err
			}
			for _, r := range routes {
				fmt.Printf("%s: %s dev %s proto %s\n", n.Name, r.Dst, r.Dev, r.Protocol)
			}
		}
	}
	return nil
}
