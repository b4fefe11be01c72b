// Command demo starts a local 3-node Coil cluster in network namespaces,
// shows what Coil did, and leaves it running (`demo up`), or removes it
// (`demo down`). The nodes run kubelet and containerd, with Coil installed
// from deploy/; `demo up --cnitool` runs coild directly instead, with the
// CNI reference client standing in for the kubelet.
package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/coil-project/coil/mtest"
	"github.com/coil-project/coil/nodenet"
)

func main() {
	statePath := os.Getenv("COIL_DEMO_STATE")
	if statePath == "" {
		statePath = filepath.Join(os.TempDir(), "coil-demo.json")
	}
	cmd := "up"
	if len(os.Args) > 1 {
		cmd = os.Args[1]
	}
	var err error
	switch {
	case cmd == "up" && len(os.Args) > 2 && os.Args[2] == "--cnitool":
		err = up(statePath)
	case cmd == "up" && len(os.Args) == 2 || len(os.Args) == 1:
		err = upRealNodes(statePath)
	case cmd == "down":
		err = mtest.Teardown(statePath)
		if err == nil {
			fmt.Println("demo cluster removed")
		}
	default:
		err = fmt.Errorf("usage: demo up [--cnitool] | demo down")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// startCluster starts a detached cluster, saves what `demo down` needs,
// and returns it with show, which runs coilctl and prints the command and
// its output.
func startCluster(ctx context.Context, statePath string, opts mtest.Options) (*mtest.Cluster, func(...string) error, error) {
	c, err := mtest.NewCluster(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	if err := c.SaveState(statePath); err != nil {
		c.Close()
		return nil, nil, err
	}
	show := func(args ...string) error {
		out, err := c.Coilctl(args...)
		if err != nil {
			return err
		}
		fmt.Printf("$ coilctl %s\n%s", strings.Join(args, " "), out)
		return nil
	}
	return c, show, nil
}

func step(format string, args ...any) {
	fmt.Printf("\n\033[1m==> "+format+"\033[0m\n", args...)
}

func upRealNodes(statePath string) error {
	if _, err := os.Stat(statePath); err == nil {
		return fmt.Errorf("a demo is already running (%s); remove it with `make demo-down`", statePath)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	return upReal(ctx, statePath)
}

// up runs the demo with coild started directly and cnitool for kubelet.
func up(statePath string) error {
	if _, err := os.Stat(statePath); err == nil {
		return fmt.Errorf("a demo is already running (%s); remove it with `make demo-down`", statePath)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	step("starting etcd, kube-apiserver, coil-controller and coild on 3 node namespaces")
	c, show, err := startCluster(ctx, statePath, mtest.Options{Nodes: 3, FlatL2: true, Controller: true, Detached: true, External: true,
		// Frequent sweeps, so the capacity figures show within seconds.
		ControllerArgs: []string{"--scan-interval", "3s"}})
	if err != nil {
		return err
	}

	step("creating pools")
	if err := show("pool", "create", "default", "10.100.0.0/16", "5", "--ipv6", "fd00:10:100::/112"); err != nil {
		return err
	}
	if err := show("pool", "create", "tenant", "10.101.0.0/16", "4"); err != nil {
		return err
	}
	if err := c.CreateNamespace(ctx, "tenant-a", map[string]string{"coil.cybozu.com/pool": "tenant"}); err != nil {
		return err
	}
	fmt.Println("namespace tenant-a annotated coil.cybozu.com/pool=tenant")

	step("starting pods on every node (CNI ADD through cnitool)")
	var pods []*mtest.Pod
	for _, n := range c.Nodes {
		for i := range 2 {
			p, err := n.StartPod(ctx, "default", fmt.Sprintf("web-%s-%d", n.Name, i))
			if err != nil {
				return err
			}
			pods = append(pods, p)
		}
	}
	tenant, err := c.Nodes[1].StartPod(ctx, "tenant-a", "app")
	if err != nil {
		return err
	}
	pods = append(pods, tenant)
	if err := c.SaveState(statePath); err != nil {
		return err
	}
	fmt.Printf("%-10s %-22s %-8s %s\n", "NAMESPACE", "POD", "NODE", "ADDRESSES")
	for _, p := range pods {
		fmt.Printf("%-10s %-22s %-8s %v\n", p.Namespace, p.Name, p.Node.Name, p.IPs)
	}

	step("blocks per node")
	if err := show("pool", "show", "default"); err != nil {
		return err
	}
	if err := show("pool", "list"); err != nil {
		return err
	}

	startTenantPod := func() (string, error) {
		p, err := c.Nodes[1].StartPod(ctx, "tenant-a", "app-2")
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("new pod tenant-a/%s on %s: %v (node %s still has free addresses in its drained block)", p.Name, p.Node.Name, p.IPs, p.Node.Name), nil
	}
	if err := demoPoolOps(ctx, c, show, poolOps{drain: "10.101.0.0/16", add: "10.103.0.0/16", waitTenant: true, startPod: startTenantPod}); err != nil {
		return err
	}
	if err := c.SaveState(statePath); err != nil {
		return err
	}

	if err := showExportTables(c); err != nil {
		return err
	}

	step("cross-node traffic (flat L2: coild routes to other nodes' blocks)")
	from := pods[0]
	for _, to := range pods[2:] {
		for _, a := range to.IPs {
			var err error
			for try := 0; try < 20; try++ {
				if err = from.Ping(a); err == nil {
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			result := "ok"
			if err != nil {
				result = "FAILED: " + err.Error()
			}
			fmt.Printf("ping %s (%s on %s) -> %s (%s on %s): %s\n", from.IPs[0], from.Name, from.Node.Name, a, to.Name, to.Node.Name, result)
		}
	}

	client, err := demoEgress(ctx, c, show)
	if err != nil {
		return err
	}
	if err := c.SaveState(statePath); err != nil {
		return err
	}

	step("the demo keeps running; look around:")
	fmt.Printf("  ip netns list | grep %s\n", strings.SplitN(c.Nodes[0].NetNS, "-", 2)[0])
	fmt.Printf("  ip netns exec %s ip route show table 119\n", c.Nodes[0].NetNS)
	fmt.Printf("  ip netns exec %s ping -c1 %s\n", pods[0].NetNS, pods[2].IPs[0])
	fmt.Printf("  ip netns exec %s ip rule; ip -n %s route show table %d   # an egress client\n", client.NetNS, client.NetNS, nodenet.EgressClientTable)
	fmt.Printf("  ip netns exec %s-ctl env COILCTL_ETCD_ENDPOINTS=%s %s/coilctl pool show default\n",
		strings.SplitN(c.Nodes[0].NetNS, "-", 2)[0], c.EtcdEndpoints(), c.BinDir)
	fmt.Printf("  logs: %s\n", c.Dir)
	fmt.Println("remove it with: make demo-down")
	return nil
}

// demoPoolOps shows the capacity figures coil-controller and coild export,
// then drains a subnet of the tenant pool: the next pod gets an address of
// the pool's other subnet while the old one keeps its own, and the subnet
// cannot be removed while a node owns a block of it.
// poolOps says what demoPoolOps does with the pool tenant: drain one
// subnet after adding another, and start a pod.
type poolOps struct {
	drain, add string
	// waitTenant waits for a sweep that counted the tenant pod (the
	// cnitool cluster's controller sweeps every few seconds; the
	// installed one every 5 minutes, so its gauges are shown as they are).
	waitTenant bool
	startPod   func() (string, error)
}

func demoPoolOps(ctx context.Context, c *mtest.Cluster, show func(...string) error, ops poolOps) error {
	step("capacity: coil-controller's gauges per pool and subnet, coild's free addresses per node")
	var lines []string
	err := mtest.Eventually(30*time.Second, func() error {
		m, err := c.ControllerMetrics(ctx)
		if err != nil {
			return err
		}
		lines = metricLines(m, "coil_controller_pool_", "coil_controller_subnet_usage_ratio")
		if ops.waitTenant && !strings.Contains(m, `coil_controller_pool_addresses_in_use{pool="tenant"} 1`) {
			return fmt.Errorf("no sweep since the pods started")
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Println("$ curl coil-controller:9386/metrics   # (filtered)")
	fmt.Print(strings.Join(lines, ""))
	for _, n := range c.Nodes {
		m, err := n.Metrics(ctx)
		if err != nil {
			return err
		}
		for _, l := range metricLines(m, "coild_addresses_free") {
			fmt.Printf("%s: %s", n.Name, l)
		}
	}

	step("draining a subnet: new pods go elsewhere, running pods keep their addresses")
	if err := show("pool", "add-subnet", "tenant", ops.add); err != nil {
		return err
	}
	if err := show("pool", "drain", "tenant", "--subnet", ops.drain); err != nil {
		return err
	}
	desc, err := ops.startPod()
	if err != nil {
		return err
	}
	fmt.Println(desc)
	if err := show("pool", "show", "tenant"); err != nil {
		return err
	}
	out, err := c.Coilctl("pool", "remove-subnet", "tenant", ops.drain)
	if err == nil {
		return fmt.Errorf("remove-subnet of a subnet in use succeeded: %s", out)
	}
	msg := err.Error()
	if _, stderr, ok := strings.Cut(msg, "exited 1: "); ok {
		msg = stderr
	}
	fmt.Printf("$ coilctl pool remove-subnet tenant %s\n%s\n", ops.drain, msg)
	return nil
}

// metricLines returns the sample lines of a scrape whose metric name
// starts with one of prefixes.
func metricLines(scrape string, prefixes ...string) []string {
	var out []string
	for l := range strings.Lines(scrape) {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

// demoEgress creates an egress with gateway pods on two nodes and a client
// on the third, and shows the external host seeing the client as a gateway
// while an unannotated pod gets no answer. It returns the client.
func demoEgress(ctx context.Context, c *mtest.Cluster, show func(...string) error) (*mtest.Pod, error) {
	step("egress NAT: a pool that reaches the outside, an egress, gateway pods")
	if err := show("pool", "create", "egress", "10.102.0.0/24", "4", "--ipv6", "fd00:10:102::/120"); err != nil {
		return nil, err
	}
	if err := c.CreateNamespace(ctx, "internet", map[string]string{"coil.cybozu.com/pool": "egress"}); err != nil {
		return nil, err
	}
	fmt.Println("namespace internet annotated coil.cybozu.com/pool=egress")
	if err := show("egress", "create", "internet", "nat", "--destinations", mtest.ExternalV4+"/32,"+mtest.ExternalV6+"/128"); err != nil {
		return nil, err
	}
	gateways := map[string]*mtest.Pod{}
	for i, n := range c.Nodes[:2] {
		p, err := n.StartPodWith(ctx, "internet", fmt.Sprintf("nat-%d", i), mtest.PodMeta{Labels: map[string]string{"coil.cybozu.com/egress": "nat"}})
		if err != nil {
			return nil, err
		}
		fmt.Printf("gateway pod internet/%s on %s, labelled coil.cybozu.com/egress=nat: %v\n", p.Name, n.Name, p.IPs)
		for _, a := range p.IPs {
			gateways[a.String()] = p
		}
	}
	// Stands in for the routers of the outside world, which learn the
	// egress pool's blocks: nothing else is routed back.
	if err := c.External.RouteBlocks("egress"); err != nil {
		return nil, err
	}

	step("a client pod opts in with the annotation egress.coil.cybozu.com/internet=nat")
	client, err := c.Nodes[2].StartPodWith(ctx, "app", "client", mtest.PodMeta{Annotations: map[string]string{"egress.coil.cybozu.com/internet": "nat"}})
	if err != nil {
		return nil, err
	}
	plain, err := c.Nodes[2].StartPod(ctx, "app", "plain")
	if err != nil {
		return nil, err
	}
	for _, p := range []*mtest.Pod{client, plain} {
		for _, target := range []netip.AddrPort{c.External.Server4, c.External.Server6} {
			seen, err := p.SeenAs(target, 3*time.Second)
			switch {
			case err != nil:
				fmt.Printf("%s %v -> external host %s: no answer (its own address is not routed back from the outside)\n", p.Name, p.IPs, target.Addr())
			case gateways[seen.String()] != nil:
				g := gateways[seen.String()]
				fmt.Printf("%s %v -> external host %s: seen as %s, gateway pod %s on %s\n", p.Name, p.IPs, target.Addr(), seen, g.Name, g.Node.Name)
			default:
				fmt.Printf("%s %v -> external host %s: seen as %s\n", p.Name, p.IPs, target.Addr(), seen)
			}
		}
	}
	out, err := exec.Command("ip", "-n", client.NetNS, "rule").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ip rule: %w: %s", err, out)
	}
	fmt.Printf("$ ip -n %s rule   # the client's policy routing\n%s", client.NetNS, out)
	if err := demoNodeLoss(client, gateways); err != nil {
		return nil, err
	}
	return client, show("egress", "list")
}

// demoNodeLoss cuts the node of the client's gateway off, as a power loss
// would and without telling the API, prints how long new connections of
// the client paused, and brings the node back.
func demoNodeLoss(client *mtest.Pod, gateways map[string]*mtest.Pod) error {
	ext := client.Node.Cluster().External
	seen, err := client.SeenAs(ext.Server4, 3*time.Second)
	if err != nil {
		return fmt.Errorf("client through a gateway: %w", err)
	}
	gw := gateways[seen.String()]
	if gw == nil {
		return fmt.Errorf("the client is seen as %s, not as a gateway", seen)
	}
	step("%s, the node of the client's gateway %s, loses power (uplink cut, coild frozen; the API is not told)", gw.Node.Name, gw.Name)
	start := time.Now()
	if err := gw.Node.PowerOff(); err != nil {
		return err
	}
	other := func(a netip.Addr) bool { g := gateways[a.String()]; return g != nil && g != gw }
	took, ok := client.FirstSeenAs(ext.Server4, other, start, 15*time.Second)
	if !ok {
		gw.Node.PowerOn()
		return fmt.Errorf("15s after %s lost power the client does not get out through another gateway", gw.Node.Name)
	}
	now, _ := client.SeenAs(ext.Server4, 3*time.Second)
	fmt.Printf("new connections of the client paused %v, then went out as %s (gateway pod %s): coild's probes found %s down\n",
		took.Round(time.Millisecond), now, gateways[now.String()].Name, gw.Name)
	step("%s comes back", gw.Node.Name)
	if err := gw.Node.PowerOn(); err != nil {
		return err
	}
	took, ok = client.FirstSeenAs(ext.Server4, func(a netip.Addr) bool { return gateways[a.String()] == gw }, time.Now(), 15*time.Second)
	if !ok {
		return fmt.Errorf("the client does not go through %s again", gw.Name)
	}
	fmt.Printf("after %v (three good probes) new connections go through %s again\n", took.Round(time.Millisecond), gw.Name)
	return nil
}
