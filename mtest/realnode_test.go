package mtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	kubenodetest "github.com/coil-project/coil/internal/testenv/kubenode"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
)

// Pools of the real-node scenarios: default is the one docs/setup.md
// creates; team serves the namespace annotated for it.
const (
	rnDefaultPool = "10.64.0.0/16"
	rnTeamPool    = "10.65.0.0/16"
	rnEgressPool  = "10.66.0.0/24"
)

// TestRealNodes runs Coil the way users do: kubelet, containerd and runc
// on every node, kube-scheduler and kube-controller-manager, Coil
// installed from deploy/ with the commands of docs/setup.md, pods started
// by the kubelet through the plugin the installer put in /opt/cni/bin.
func TestRealNodes(t *testing.T) {
	sysctlsBefore := hostSysctls(t)
	c := newCluster(t, Options{Nodes: 3, RealNodes: true, External: true})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var states []kubenodetest.State
	for _, n := range c.Nodes {
		states = append(states, n.NodeState())
	}

	// A bridge with an address, as Docker leaves one, must not be taken
	// for the node's address (the Node's InternalIP is).
	if _, err := run("ip", "-n", c.Nodes[0].NetNS, "link", "add", "docker0", "type", "bridge"); err != nil {
		t.Fatal(err)
	}
	for _, a := range [][]string{{"addr", "add", "172.17.0.1/16", "dev", "docker0"}, {"link", "set", "docker0", "up"}} {
		if _, err := run("ip", append([]string{"-n", c.Nodes[0].NetNS}, a...)...); err != nil {
			t.Fatal(err)
		}
	}

	mustCoilctl(t, c, "pool", "create", "team", rnTeamPool, "5")
	// The pool of deploy/examples/egress-gateway.yaml.
	mustCoilctl(t, c, "pool", "create", "internet", rnEgressPool, "4")
	if err := c.CreateNamespace(ctx, "team", map[string]string{"coil.cybozu.com/pool": "team"}); err != nil {
		t.Fatal(err)
	}
	// A workload exists before Coil: the bootstrap taint keeps it off the
	// nodes until coild is ready there.
	early := workload("default", "early", 3)
	early.Spec.Template.Spec.TopologySpreadConstraints[0].WhenUnsatisfiable = corev1.ScheduleAnyway
	if _, err := c.Kube.AppsV1().Deployments("default").Create(ctx, early, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	untainted := watchUntaint(ctx, t, c)

	step(t, "install from deploy/ with the commands of docs/setup.md", func(t *testing.T) {
		time.Sleep(3 * time.Second)
		pods, err := c.Kube.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=early"})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods.Items {
			if p.Spec.NodeName != "" {
				t.Fatalf("pod %s scheduled to %s before Coil was installed", p.Name, p.Spec.NodeName)
			}
		}
		steps, err := c.InstallCoil(ctx)
		for _, s := range steps {
			t.Logf("%s: %s\n%s", s.Section, strings.Join(s.Command, " "), s.Output)
		}
		if err != nil {
			t.Fatal(err)
		}
	})

	step(t, "the bootstrap taint goes only when coild is ready, and pods wait for it", func(t *testing.T) {
		if err := Eventually(time.Minute, func() error {
			if n := untainted.count(); n != len(c.Nodes) {
				return fmt.Errorf("%d of %d nodes untainted", n, len(c.Nodes))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for node, ready := range untainted.coildReady() {
			if !ready {
				t.Errorf("the bootstrap taint left %s while its coild was not ready", node)
			}
		}
		pods, err := waitWorkload(ctx, c, "default", "app=early", 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pods {
			sched := podCondition(p, corev1.PodScheduled)
			if at := untainted.at(p.Spec.NodeName); sched.Before(&metav1.Time{Time: at.Truncate(time.Second)}) {
				t.Errorf("pod %s scheduled to %s at %s, before the taint left at %s", p.Name, p.Spec.NodeName, sched, at)
			}
		}
		events, err := c.Kube.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("reason", "FailedCreatePodSandBox").String()})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range events.Items {
			t.Errorf("sandbox failure for %s/%s: %s", e.InvolvedObject.Namespace, e.InvolvedObject.Name, e.Message)
		}
	})

	var web []corev1.Pod
	step(t, "pods on every node get addresses of the right pool and reach each other", func(t *testing.T) {
		for _, ns := range []string{"default", "team"} {
			if err := createWorkload(ctx, c, ns, "web", 3); err != nil {
				t.Fatal(err)
			}
		}
		for ns, pool := range map[string]string{"default": rnDefaultPool, "team": rnTeamPool} {
			pods, err := waitWorkload(ctx, c, ns, "app=web", 3)
			if err != nil {
				t.Fatal(err)
			}
			nodes := map[string]bool{}
			for _, p := range pods {
				nodes[p.Spec.NodeName] = true
				if !netip.MustParsePrefix(pool).Contains(netip.MustParseAddr(p.Status.PodIP)) {
					t.Errorf("pod %s/%s got %s, want an address of %s", ns, p.Name, p.Status.PodIP, pool)
				}
			}
			if len(nodes) != len(c.Nodes) {
				t.Errorf("%s: pods on %d nodes, want one on each of %d", ns, len(nodes), len(c.Nodes))
			}
			web = append(web, pods...)
		}
		for _, from := range web {
			for _, to := range web {
				if from.Spec.NodeName == to.Spec.NodeName {
					continue
				}
				if err := podPing(ctx, c, from, to.Status.PodIP); err != nil {
					t.Error(err)
				}
			}
		}
	})

	step(t, "export tables match etcd and routes go to the nodes' InternalIPs", func(t *testing.T) {
		for _, n := range c.Nodes {
			want := nodeBlocks(t, c, n.Name)
			if err := Eventually(10*time.Second, func() error {
				if got := exportTable(t, n); !slices.Equal(got, want) {
					return fmt.Errorf("%s: table 119 holds %v, etcd says %v", n.Name, got, want)
				}
				return nil
			}); err != nil {
				t.Error(err)
			}
			// --flat-l2: the other nodes' blocks go via their InternalIPs,
			// never node1's docker0 address.
			routes, err := n.Routes("-4", "main")
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range routes {
				if r.Protocol != "30" && r.Protocol != "coil" {
					continue
				}
				if r.Gateway != "" && !kubeNodeNetwork.Contains(netip.MustParseAddr(r.Gateway)) {
					t.Errorf("%s routes %s via %s, not a node's InternalIP", n.Name, r.Dst, r.Gateway)
				}
			}
		}
	})

	step(t, "deleting a pod releases its address (the kubelet's DEL)", func(t *testing.T) {
		victim := web[0]
		if err := c.Kube.CoreV1().Pods(victim.Namespace).Delete(ctx, victim.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := Eventually(time.Minute, func() error {
			if held(t, c, victim.Status.PodIP) {
				return fmt.Errorf("%s of deleted pod %s still recorded in etcd", victim.Status.PodIP, victim.Name)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		pods, err := waitWorkload(ctx, c, victim.Namespace, "app=web", 3)
		if err != nil {
			t.Fatal(err)
		}
		web = web[1:]
		for _, p := range pods {
			if p.Name != victim.Name && !slices.ContainsFunc(web, func(w corev1.Pod) bool { return w.Name == p.Name }) {
				web = append(web, p)
			}
		}
	})

	step(t, "a restart of containerd with pods running loses nothing", func(t *testing.T) {
		n := c.Nodes[1]
		before := recordsByIP(t, c)
		kn := n.KubeNode()
		kn.KillContainerd()
		time.Sleep(2 * time.Second)
		if err := kn.StartContainerd(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second)
		for _, ns := range []string{"default", "team"} {
			pods, err := waitWorkload(ctx, c, ns, "app=web", 3)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pods {
				if !slices.ContainsFunc(web, func(w corev1.Pod) bool { return w.Name == p.Name && w.Status.PodIP == p.Status.PodIP }) {
					t.Errorf("pod %s/%s is new or changed address (%s) after the containerd restart", ns, p.Name, p.Status.PodIP)
				}
			}
		}
		if after := recordsByIP(t, c); !mapsEqual(before, after) {
			t.Errorf("address records changed across the containerd restart:\nbefore %v\nafter  %v", before, after)
		}
		checkCrossNode(ctx, t, c, web)
	})

	step(t, "rolling update of coild: no pod loses its address or traffic, no ADD fails for good", func(t *testing.T) {
		stop := make(chan struct{})
		var failures atomic.Int64
		var wg sync.WaitGroup
		from, to := crossNodePair(web)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(500 * time.Millisecond):
				}
				// One retry: a single lost echo on a busy machine is noise,
				// two in a row are an outage.
				if podPing(ctx, c, from, to.Status.PodIP) != nil && podPing(ctx, c, from, to.Status.PodIP) != nil {
					failures.Add(1)
				}
			}
		}()
		before := recordsByIP(t, c)
		// The Upgrading steps of docs/setup.md: a new tag in the overlay,
		// kubectl apply -k.
		work := filepath.Join(c.Dir, "install")
		overlay := filepath.Join(work, "my-coil", "kustomization.yaml")
		data, err := os.ReadFile(overlay)
		if err != nil {
			t.Fatal(err)
		}
		next := strings.Replace(string(data), "newTag: "+CoilImageTag, "newTag: "+strings.TrimPrefix(CoilImageNext, CoilImageName+":"), 1)
		if err := os.WriteFile(overlay, []byte(next), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := c.Kubectl(ctx, work, "apply", "-k", "my-coil/"); err != nil {
			t.Fatal(out, err)
		}
		// New pods while coild restarts node after node.
		if err := scaleWorkload(ctx, c, "default", "web", 6); err != nil {
			t.Fatal(err)
		}
		if out, err := c.Kubectl(ctx, work, "-n", "coil-system", "rollout", "status", "daemonset/coild", "--timeout=5m"); err != nil {
			t.Fatal(out, err)
		}
		close(stop)
		wg.Wait()
		if n := failures.Load(); n > 0 {
			t.Errorf("%s could not reach %s %d times during the rollout", from.Name, to.Name, n)
		}
		ds, err := c.Kube.AppsV1().DaemonSets("coil-system").Get(ctx, "coild", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if img := ds.Spec.Template.Spec.Containers[0].Image; img != CoilImageNext {
			t.Errorf("coild runs %s, want %s", img, CoilImageNext)
		}
		if _, err := waitWorkload(ctx, c, "default", "app=web", 6); err != nil {
			t.Fatal(err)
		}
		after := recordsByIP(t, c)
		for ip, owner := range before {
			// The new tag also replaces coil-controller's pods.
			if strings.HasPrefix(owner, "coil-system/") {
				continue
			}
			if after[ip] != owner {
				t.Errorf("address %s was held by %s before the rollout, by %q after", ip, owner, after[ip])
			}
		}
		checkUnique(ctx, t, c)
		if err := scaleWorkload(ctx, c, "default", "web", 3); err != nil {
			t.Fatal(err)
		}
	})

	step(t, "draining a node moves its pods and frees their addresses", func(t *testing.T) {
		n := c.Nodes[2]
		if _, err := waitWorkload(ctx, c, "default", "app=web", 3); err != nil {
			t.Fatal(err)
		}
		onNode := map[string]string{}
		for _, ns := range []string{"default", "team"} {
			pods, _ := c.RunningPodIPs(ctx, ns, "app=web")
			for _, p := range pods {
				if p.Spec.NodeName == n.Name {
					onNode[p.Status.PodIP] = ns + "/" + p.Name
				}
			}
		}
		if out, err := c.Kubectl(ctx, c.Dir, "drain", n.Name, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=2m"); err != nil {
			t.Fatal(out, err)
		}
		if err := Eventually(time.Minute, func() error {
			for ip, pod := range onNode {
				if held(t, c, ip) {
					return fmt.Errorf("%s of drained pod %s still held", ip, pod)
				}
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
		for _, ns := range []string{"default", "team"} {
			pods, err := waitWorkload(ctx, c, ns, "app=web", 3)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range pods {
				if p.Spec.NodeName == n.Name {
					t.Errorf("pod %s/%s still on drained %s", ns, p.Name, n.Name)
				}
			}
		}
		if out, err := c.Kubectl(ctx, c.Dir, "uncordon", n.Name); err != nil {
			t.Fatal(out, err)
		}
		checkUnique(ctx, t, c)
	})

	step(t, "kubectl delete node of a live node frees nothing its pods use", func(t *testing.T) {
		n := c.Nodes[0]
		blocks := nodeBlocks(t, c, n.Name)
		if len(blocks) == 0 {
			t.Fatalf("%s owns no blocks", n.Name)
		}
		if out, err := c.Kubectl(ctx, c.Dir, "delete", "node", n.Name); err != nil {
			t.Fatal(out, err)
		}
		// coild on the node is alive (its liveness key is kept), so the
		// controller must leave its blocks alone.
		time.Sleep(15 * time.Second)
		if got := nodeBlocks(t, c, n.Name); !slices.Equal(got, blocks) {
			t.Errorf("blocks of %s changed after its Node was deleted while it runs: %v, then %v", n.Name, blocks, got)
		}
		checkUnique(ctx, t, c)
		// The kubelet registers the node again when it restarts.
		kn := n.KubeNode()
		kn.StopKubelet()
		if err := kn.StartKubelet(); err != nil {
			t.Fatal(err)
		}
		if err := Eventually(time.Minute, func() error {
			_, err := c.Kube.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		for _, ns := range []string{"default", "team"} {
			if _, err := waitWorkload(ctx, c, ns, "app=web", 3); err != nil {
				t.Fatal(err)
			}
		}
		checkUnique(ctx, t, c)
	})

	t.Run("egress through gateway pods run by the kubelet; a rolling restart of them keeps open connections", func(t *testing.T) {
		ext := c.External
		// As the example's comment says, with the external host's
		// networks for destinations.
		mustCoilctl(t, c, "egress", "create", "internet-egress", "nat", "--destinations", externalNet4+","+externalNet6)
		example, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "examples", "egress-gateway.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		manifest := filepath.Join(c.Dir, "egress-gateway.yaml")
		// The nodes reach no registry: the locally built pause image.
		if err := os.WriteFile(manifest, []byte(strings.ReplaceAll(string(example), "registry.k8s.io/pause:3.10", PauseImage)), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := c.Kubectl(ctx, c.Dir, "apply", "-f", manifest); err != nil {
			t.Fatal(out, err)
		}
		gws, err := waitWorkload(ctx, c, "internet-egress", "coil.cybozu.com/egress=nat", 2)
		if err != nil {
			t.Fatal(err)
		}
		if err := ext.RouteBlocks("internet"); err != nil {
			t.Fatal(err)
		}
		gwIPs := map[string]bool{}
		for _, g := range gws {
			gwIPs[g.Status.PodIP] = true
		}
		ns := egressClientSeesGateway(ctx, t, c, "client", "nat", gwIPs)

		// A rolling restart of the gateway Deployment: the example's
		// preStop sleep keeps each old gateway draining; the open
		// connection stays with its gateway, new ones go to new pods.
		conv, err := ConverseFrom(ns, ext.Echo4, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conv.Close()
		via, err := conv.SeenAs(3 * time.Second)
		if err != nil || !gwIPs[via.String()] {
			t.Fatalf("the open connection is seen as %s (%v), want a gateway", via, err)
		}
		if out, err := c.Kubectl(ctx, c.Dir, "-n", "internet-egress", "rollout", "restart", "deployment/nat"); err != nil {
			t.Fatal(out, err)
		}
		var fresh map[string]bool
		var talks, lost int
		if err := Eventually(3*time.Minute, func() error {
			talks++
			if seen, err := conv.SeenAs(3 * time.Second); err != nil || seen != via {
				lost++
				t.Errorf("during the rollout the open connection is seen as %s (%v), want %s", seen, err, via)
			}
			pods, err := c.Kube.CoreV1().Pods("internet-egress").List(ctx, metav1.ListOptions{LabelSelector: "coil.cybozu.com/egress=nat"})
			if err != nil {
				return err
			}
			fresh = map[string]bool{}
			draining := 0
			for _, p := range pods.Items {
				switch {
				case gwIPs[p.Status.PodIP] && p.DeletionTimestamp != nil:
					draining++
				case !gwIPs[p.Status.PodIP] && p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "":
					fresh[p.Status.PodIP] = true
				}
			}
			if draining != len(gwIPs) || len(fresh) != 2 {
				return fmt.Errorf("%d of %d old gateways draining, %d new running", draining, len(gwIPs), len(fresh))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if err := ext.RouteBlocks("internet"); err != nil {
			t.Fatal(err)
		}
		if err := Eventually(30*time.Second, func() error {
			seen, err := SeenFrom(ns, ext.Server4, 3*time.Second)
			if err != nil || !fresh[seen.String()] {
				return fmt.Errorf("a new connection during the drain is seen as %s (%v), want a new gateway %v", seen, err, fresh)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if seen, err := conv.SeenAs(3 * time.Second); err != nil || seen != via {
			t.Errorf("after new gateways took new connections, the open one is seen as %s (%v), want %s", seen, err, via)
		}
		t.Logf("rolling restart of the gateways: the open connection answered %d times through draining %s (%d lost)", talks, via, lost)
	})

	t.Run("egress gateways run by coil-controller (--replicas) on the kubelet nodes", func(t *testing.T) {
		ext := c.External
		mustCoilctl(t, c, "egress", "create", "internet-egress", "managed", "--destinations", ExternalV4+"/32", "--replicas", "2")
		gws, err := waitWorkload(ctx, c, "internet-egress", "coil.cybozu.com/egress=managed", 2)
		if err != nil {
			t.Fatal(err)
		}
		gwIPs := map[string]bool{}
		for _, g := range gws {
			gwIPs[g.Status.PodIP] = true
			// The controller's own image, which runs coil-egress.
			if img := g.Spec.Containers[0].Image; img != CoilImageNext {
				t.Errorf("managed gateway %s runs %s, want the controller's image %s", g.Name, img, CoilImageNext)
			}
		}
		if err := ext.RouteBlocks("internet"); err != nil {
			t.Fatal(err)
		}
		egressClientSeesGateway(ctx, t, c, "client-managed", "managed", gwIPs)
		mustCoilctl(t, c, "egress", "delete", "internet-egress", "managed")
		if err := Eventually(time.Minute, func() error {
			pods, err := c.Kube.CoreV1().Pods("internet-egress").List(ctx, metav1.ListOptions{LabelSelector: "coil.cybozu.com/egress=managed"})
			if err != nil {
				return err
			}
			if len(pods.Items) > 0 {
				return fmt.Errorf("%d managed gateway pods left after the egress was deleted", len(pods.Items))
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	})

	t.Run("containerd passes the pod annotations to the plugin", func(t *testing.T) {
		// The manifests' configuration declares the capability: every
		// pod the kubelet started came with its annotations, which let
		// coild judge egress without the API server.
		total := 0.0
		for _, n := range c.Nodes {
			m, err := n.Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			all, ok1 := plainSample(m, "coild_allocations_total")
			annotated, ok2 := plainSample(m, "coild_allocations_with_pod_annotations_total")
			if !ok1 || !ok2 || annotated != all {
				t.Errorf("%s: %v of %v allocations carried the pod's annotations, want all", n.Name, annotated, all)
			}
			total += all
		}
		if total == 0 {
			t.Error("no allocation on any node")
		}
	})

	t.Run("leaves nothing on the host", func(t *testing.T) {
		// The kubelet did write its sysctls: into the node's shadow files.
		shadow, err := os.ReadFile(filepath.Join(states[0].Dir, "sysctl", "vm_overcommit_memory"))
		if err != nil || strings.TrimSpace(string(shadow)) != "1" {
			t.Errorf("the kubelet's vm.overcommit_memory did not reach node1's shadow file: %q, %v", shadow, err)
		}
		c.Close()
		for _, st := range states {
			if left := kubenodetest.Leftovers(st); len(left) > 0 {
				t.Errorf("node left behind:\n%s", strings.Join(left, "\n"))
			}
		}
		if got := hostSysctls(t); !mapsEqual(got, sysctlsBefore) {
			t.Errorf("host sysctls changed: before %v, after %v", sysctlsBefore, got)
		}
		out, _ := run("ip", "netns", "list")
		if strings.Contains(out, c.id) {
			t.Errorf("network namespaces left: %s", out)
		}
		for _, d := range []string{"/etc/cni", "/opt/cni", "/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/var/lib/containerd", "/run/containerd"} {
			if _, err := os.Stat(d); err == nil {
				t.Errorf("%s exists on the host", d)
			}
		}
	})
}

// egressClientSeesGateway runs a Deployment of one client pod annotated for
// the egress internet-egress/egress and checks that the external host sees
// its connections come from one of the gateway addresses gwIPs. It returns
// the host path of the client's network namespace.
func egressClientSeesGateway(ctx context.Context, t *testing.T, c *Cluster, name, egress string, gwIPs map[string]bool) string {
	t.Helper()
	client := workload("default", name, 1)
	client.Spec.Template.Annotations = map[string]string{"egress.coil.cybozu.com/internet-egress": egress}
	if _, err := c.Kube.AppsV1().Deployments("default").Create(ctx, client, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	clients, err := waitWorkload(ctx, c, "default", "app="+name, 1)
	if err != nil {
		t.Fatal(err)
	}
	cl := clients[0]
	ns, err := c.NodeOf(cl.Spec.NodeName).PodNetNSPath(ctx, netip.MustParseAddr(cl.Status.PodIP))
	if err != nil {
		t.Fatal(err)
	}
	if err := Eventually(30*time.Second, func() error {
		seen, err := SeenFrom(ns, c.External.Server4, 3*time.Second)
		if err != nil {
			return err
		}
		if !gwIPs[seen.String()] {
			return fmt.Errorf("external host saw %s, want a gateway of %s (%v)", seen, egress, gwIPs)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ns
}

// hostSysctls reads the machine-wide sysctls the kubelet writes.
func hostSysctls(t *testing.T) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, s := range kubenodetest.KubeletSysctls {
		v, err := os.ReadFile(filepath.Join("/proc/sys", s))
		if err != nil {
			t.Fatal(err)
		}
		m[s] = strings.TrimSpace(string(v))
	}
	return m
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

var honor = corev1.NodeInclusionPolicyHonor

// workload is a Deployment of pause pods spread over the nodes.
func workload(namespace, name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{MaxUnavailable: &intstr.IntOrString{Type: intstr.Int, IntVal: 1}}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: new(int64),
					// One per node, nodes that take no pods (cordoned,
					// tainted) left out of the count.
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew:           1,
						TopologyKey:       "kubernetes.io/hostname",
						WhenUnsatisfiable: corev1.DoNotSchedule,
						NodeTaintsPolicy:  &honor,
						LabelSelector:     &metav1.LabelSelector{MatchLabels: labels},
					}},
					Containers: []corev1.Container{{
						Name:            "pause",
						Image:           PauseImage,
						ImagePullPolicy: corev1.PullNever,
					}},
				},
			},
		},
	}
}

func createWorkload(ctx context.Context, c *Cluster, namespace, name string, replicas int32) error {
	_, err := c.Kube.AppsV1().Deployments(namespace).Create(ctx, workload(namespace, name, replicas), metav1.CreateOptions{})
	return err
}

func scaleWorkload(ctx context.Context, c *Cluster, namespace, name string, replicas int32) error {
	s, err := c.Kube.AppsV1().Deployments(namespace).GetScale(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	s.Spec.Replicas = replicas
	_, err = c.Kube.AppsV1().Deployments(namespace).UpdateScale(ctx, name, s, metav1.UpdateOptions{})
	return err
}

// waitWorkload waits until exactly want pods of the selector run with an
// address, and none is terminating.
func waitWorkload(ctx context.Context, c *Cluster, namespace, selector string, want int) ([]corev1.Pod, error) {
	var pods []corev1.Pod
	err := Eventually(3*time.Minute, func() error {
		all, err := c.Kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return err
		}
		pods = pods[:0]
		var states []string
		for _, p := range all.Items {
			states = append(states, fmt.Sprintf("%s@%s:%s/%s", p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.PodIP))
			if p.DeletionTimestamp != nil {
				return fmt.Errorf("pod %s terminating", p.Name)
			}
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
				pods = append(pods, p)
			}
		}
		if len(pods) != want || len(all.Items) != want {
			return fmt.Errorf("%s %s: %d running of %d, want %d: %v", namespace, selector, len(pods), len(all.Items), want, states)
		}
		return nil
	})
	return pods, err
}

func podCondition(p corev1.Pod, typ corev1.PodConditionType) *metav1.Time {
	for _, c := range p.Status.Conditions {
		if c.Type == typ {
			return &c.LastTransitionTime
		}
	}
	return &metav1.Time{}
}

// podPing pings addr from inside pod p's network namespace.
func podPing(ctx context.Context, c *Cluster, p corev1.Pod, addr string) error {
	n := c.NodeOf(p.Spec.NodeName)
	if n == nil {
		return fmt.Errorf("pod %s on unknown node %q", p.Name, p.Spec.NodeName)
	}
	_, err := n.PodExec(ctx, netip.MustParseAddr(p.Status.PodIP), "ping", "-c", "1", "-W", "2", addr)
	if err != nil {
		return fmt.Errorf("%s on %s cannot reach %s: %w", p.Name, p.Spec.NodeName, addr, err)
	}
	return nil
}

// checkCrossNode pings between every two pods on different nodes.
func checkCrossNode(ctx context.Context, t *testing.T, c *Cluster, pods []corev1.Pod) {
	t.Helper()
	for _, from := range pods {
		for _, to := range pods {
			if from.Spec.NodeName != to.Spec.NodeName {
				if err := podPing(ctx, c, from, to.Status.PodIP); err != nil {
					t.Error(err)
				}
			}
		}
	}
}

func crossNodePair(pods []corev1.Pod) (corev1.Pod, corev1.Pod) {
	for _, a := range pods {
		for _, b := range pods {
			if a.Spec.NodeName != b.Spec.NodeName {
				return a, b
			}
		}
	}
	panic("no two pods on different nodes")
}

// recordsByIP maps every address in etcd's records to its owner
// (namespace/pod, pod UID, container).
func recordsByIP(t *testing.T, c *Cluster) map[string]string {
	t.Helper()
	out, err := c.Etcdctl("get", "--prefix", "/coil/addresses/", "--print-value-only")
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var r struct {
			IPv4, IPv6                          string
			Namespace, Pod, PodUID, ContainerID string
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("address record %q: %v", line, err)
		}
		owner := fmt.Sprintf("%s/%s %s %s", r.Namespace, r.Pod, r.PodUID, r.ContainerID)
		for _, a := range []string{r.IPv4, r.IPv6} {
			if a != "" {
				m[a] = owner
			}
		}
	}
	return m
}

// held reports whether etcd records the address.
func held(t *testing.T, c *Cluster, ip string) bool {
	t.Helper()
	_, ok := recordsByIP(t, c)[ip]
	return ok
}

// checkUnique checks that no two running pods share an address and that
// etcd records every running pod's address.
func checkUnique(ctx context.Context, t *testing.T, c *Cluster) {
	t.Helper()
	pods, err := c.Kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	records := recordsByIP(t, c)
	owner := map[string]string{}
	for _, p := range pods.Items {
		// A terminating pod may have had its DEL already while the API
		// still shows it running.
		if p.Spec.HostNetwork || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || p.DeletionTimestamp != nil {
			continue
		}
		name := p.Namespace + "/" + p.Name
		if other, dup := owner[p.Status.PodIP]; dup {
			t.Errorf("pods %s and %s both have %s", other, name, p.Status.PodIP)
		}
		owner[p.Status.PodIP] = name
		if _, ok := records[p.Status.PodIP]; !ok {
			t.Errorf("address %s of running pod %s is not recorded in etcd", p.Status.PodIP, name)
		}
	}
}

// untaintWatch records when each Node lost the bootstrap taint and whether
// the coild of that node answered ready at that moment.
type untaintWatch struct {
	mu    sync.Mutex
	times map[string]time.Time
	ready map[string]bool
}

func (u *untaintWatch) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.times)
}

func (u *untaintWatch) at(node string) time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.times[node]
}

func (u *untaintWatch) coildReady() map[string]bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	m := map[string]bool{}
	for k, v := range u.ready {
		m[k] = v
	}
	return m
}

func watchUntaint(ctx context.Context, t *testing.T, c *Cluster) *untaintWatch {
	t.Helper()
	u := &untaintWatch{times: map[string]time.Time{}, ready: map[string]bool{}}
	w, err := c.Kube.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { w.Stop(); <-done })
	go func() {
		defer close(done)
		for ev := range w.ResultChan() {
			node, ok := ev.Object.(*corev1.Node)
			if !ok || ev.Type == watch.Deleted {
				continue
			}
			if slices.ContainsFunc(node.Spec.Taints, func(tn corev1.Taint) bool { return tn.Key == BootstrapTaint }) {
				continue
			}
			u.mu.Lock()
			_, seen := u.times[node.Name]
			u.mu.Unlock()
			if seen {
				continue
			}
			n := c.NodeOf(node.Name)
			ready := n != nil && n.coildAnswersReady(ctx)
			u.mu.Lock()
			u.times[node.Name] = time.Now()
			u.ready[node.Name] = ready
			u.mu.Unlock()
		}
	}()
	return u
}

// coildAnswersReady asks the node's coild for /readyz on its read-only
// listener (127.0.0.1:9383 in the manifests), from inside the node.
func (n *Node) coildAnswersReady(ctx context.Context) bool {
	conn, err := dialIn("/var/run/netns/"+n.NetNS, ctx, "tcp", "127.0.0.1:9383")
	if err != nil {
		return false
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprintf(conn, "GET /readyz HTTP/1.0\r\nHost: coild\r\n\r\n")
	buf := make([]byte, 64)
	k, _ := conn.Read(buf)
	return strings.HasPrefix(string(buf[:k]), "HTTP/1.0 200") || strings.HasPrefix(string(buf[:k]), "HTTP/1.1 200")
}

// plainSample returns the value of an unlabelled metric in a Prometheus
// text scrape.
func plainSample(scrape, metric string) (float64, bool) {
	for line := range strings.SplitSeq(scrape, "\n") {
		if v, ok := strings.CutPrefix(line, metric+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}
