package mtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	"io"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coil-project/coil/nodenet"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

func TestMain(m *testing.M) {
	if os.Getuid() != 0 {
		fmt.Fprintln(os.Stderr, "mtest needs root: it builds the cluster out of network namespaces")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func newCluster(t *testing.T, opts Options) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := NewCluster(ctx, opts)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("coild log of %s:\n%s", n.Name, n.CoildLog())
			}
			if c.controller != nil {
				t.Logf("coil-controller log:\n%s", c.controllerLog())
			}
		}
		c.Close()
	})
	return c
}

func mustCoilctl(t *testing.T, c *Cluster, args ...string) string {
	t.Helper()
	out, err := c.Coilctl(args...)
	if err != nil {
		t.Fatalf("coilctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func mustStartPod(t *testing.T, n *Node, namespace, name string) *Pod {
	t.Helper()
	p, err := n.StartPod(context.Background(), namespace, name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func pingEventually(t *testing.T, from *Pod, to netip.Addr) {
	t.Helper()
	if err := Eventually(20*time.Second, func() error { return from.Ping(to) }); err != nil {
		t.Fatalf("%s/%s on %s cannot reach %s: %v", from.Namespace, from.Name, from.Node.Name, to, err)
	}
}

// exportTable returns the prefixes coild exported in the node's table 119.
func exportTable(t *testing.T, n *Node) []string {
	t.Helper()
	var out []string
	for _, fam := range []string{"-4", "-6"} {
		routes, err := n.Routes(fam, "119")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			out = append(out, r.Dst)
		}
	}
	slices.Sort(out)
	return out
}

// nodeBlocks returns the blocks etcd says node owns, as CIDR strings.
func nodeBlocks(t *testing.T, c *Cluster, node string) []string {
	t.Helper()
	var view struct {
		Blocks []struct {
			IPv4 string `json:"ipv4"`
			IPv6 string `json:"ipv6"`
		} `json:"blocks"`
	}
	out := mustCoilctl(t, c, "node", "blocks", node, "-o", "json")
	if err := json.Unmarshal([]byte(out), &view); err != nil {
		t.Fatalf("coilctl node blocks -o json: %v: %s", err, out)
	}
	var cidrs []string
	for _, b := range view.Blocks {
		for _, p := range []string{b.IPv4, b.IPv6} {
			if p != "" {
				cidrs = append(cidrs, p)
			}
		}
	}
	slices.Sort(cidrs)
	return cidrs
}

func inPrefix(t *testing.T, cidr string, a netip.Addr) bool {
	t.Helper()
	return netip.MustParsePrefix(cidr).Contains(a)
}

// addressRecords counts the address keys in etcd.
func addressRecords(t *testing.T, c *Cluster) int {
	t.Helper()
	out, err := c.Etcdctl("get", "--prefix", "--keys-only", "/coil/addresses/")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) != "" {
			n++
		}
	}
	return n
}

// step runs a scenario that later ones build on: a failure stops the test.
func step(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	if !t.Run(name, f) {
		t.FailNow()
	}
}

// TestFlatL2 runs the main scenarios on a 3-node cluster where coild routes
// between nodes itself (flat L2), with coil-controller running.
func TestFlatL2(t *testing.T) {
	c := newCluster(t, Options{Nodes: 3, FlatL2: true, Controller: true,
		ControllerArgs: []string{"--scan-interval", "2s", "--leak-grace", "4s", "--node-recheck-interval", "1s"}})
	ctx := context.Background()
	mustCoilctl(t, c, "pool", "create", "default", "10.100.0.0/16", "5", "--ipv6", "fd00:10:100::/112")
	mustCoilctl(t, c, "pool", "create", "tenant", "10.101.0.0/16", "4")
	if err := c.CreateNamespace(ctx, "tenant-a", map[string]string{"coil.cybozu.com/pool": "tenant"}); err != nil {
		t.Fatal(err)
	}

	var pods []*Pod
	step(t, "pools", func(t *testing.T) {
		for _, n := range c.Nodes {
			p := mustStartPod(t, n, "default", "web-"+n.Name)
			if !inPrefix(t, "10.100.0.0/16", p.IPv4()) || !inPrefix(t, "fd00:10:100::/112", p.IPv6()) {
				t.Fatalf("default pod got %v, want addresses of pool default", p.IPs)
			}
			pods = append(pods, p)
		}
		// The record names the pod's UID (kubelet's K8S_POD_UID), which
		// coil-controller uses to tell a pod from a later one of that name.
		info := mustCoilctl(t, c, "address", "info", pods[0].IPv4().String(), "-o", "json")
		if pods[0].UID == "" || !strings.Contains(info, pods[0].UID) {
			t.Fatalf("address record lacks pod UID %q: %s", pods[0].UID, info)
		}
		p := mustStartPod(t, c.Nodes[0], "tenant-a", "app")
		if len(p.IPs) != 1 || !inPrefix(t, "10.101.0.0/16", p.IPv4()) {
			t.Fatalf("pod of annotated namespace got %v, want an address of pool tenant", p.IPs)
		}
		pods = append(pods, p)
	})

	t.Run("pods cannot reach coild's listeners", func(t *testing.T) {
		podCannotReachCoild(t, c.Nodes[0], pods[0])
	})

	step(t, "cross-node traffic", func(t *testing.T) {
		for i, from := range pods[:3] {
			to := pods[(i+1)%3]
			pingEventually(t, from, to.IPv4())
			pingEventually(t, from, to.IPv6())
		}
		pingEventually(t, pods[1], pods[3].IPv4())
	})

	step(t, "a route to another node's blocks deleted by hand comes back", func(t *testing.T) {
		// A change of the cluster's blocks writes only the routes that
		// changed; every --scan-interval (2s here) coild compares them
		// with the table, as it does after the kernel flushed them.
		n := c.Nodes[0]
		routes, err := n.Routes("-4", "main")
		if err != nil {
			t.Fatal(err)
		}
		var peer RouteInfo
		for _, r := range routes {
			if dst, err := netip.ParsePrefix(r.Dst); err == nil && r.Gateway != "" && inPrefix(t, "10.100.0.0/16", dst.Addr()) {
				peer = r
				break
			}
		}
		if peer.Dst == "" {
			t.Fatalf("no route to another node's block in %s's main table: %+v", n.Name, routes)
		}
		if _, err := run("ip", "-n", n.NetNS, "route", "del", peer.Dst, "via", peer.Gateway); err != nil {
			t.Fatal(err)
		}
		if err := Eventually(20*time.Second, func() error {
			routes, err := n.Routes("-4", "main")
			if err != nil {
				return err
			}
			for _, r := range routes {
				if r.Dst == peer.Dst && r.Gateway == peer.Gateway {
					return nil
				}
			}
			return fmt.Errorf("route %s via %s not back in %s's main table", peer.Dst, peer.Gateway, n.Name)
		}); err != nil {
			t.Fatal(err)
		}
		pingEventually(t, pods[0], pods[1].IPv4())
	})

	step(t, "export table holds exactly the node's blocks", func(t *testing.T) {
		for _, n := range c.Nodes {
			want := nodeBlocks(t, c, n.Name)
			if err := Eventually(10*time.Second, func() error {
				if got := exportTable(t, n); !slices.Equal(got, want) {
					return fmt.Errorf("table 119 of %s = %v, etcd says %v", n.Name, got, want)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
	})

	step(t, "delete and recreate pods", func(t *testing.T) {
		n := c.Nodes[1]
		p := mustStartPod(t, n, "default", "short-lived")
		veth := nodenet.HostVethName(p.Namespace, p.Name)
		if err := p.Remove(ctx); err != nil {
			t.Fatal(err)
		}
		routes, err := n.Routes("-4", "main")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if r.Dev == veth || r.Dst == p.IPv4().String() {
				t.Fatalf("host route %+v of deleted pod remains", r)
			}
		}
		again := mustStartPod(t, n, "default", "short-lived")
		pingEventually(t, pods[0], again.IPv4())
		pods = append(pods, again)
	})

	step(t, "half-cleaned node", func(t *testing.T) {
		n := c.Nodes[2]
		veth := nodenet.HostVethName("default", "stale")
		// A host veth with the pod's name left behind by a crash.
		if _, err := run("ip", "-n", n.NetNS, "link", "add", veth, "type", "veth", "peer", "name", "stale-peer"); err != nil {
			t.Fatal(err)
		}
		p := mustStartPod(t, n, "default", "stale")
		pingEventually(t, pods[0], p.IPv4())
		pods = append(pods, p)
	})

	step(t, "coild SIGKILL during a burst of ADDs", func(t *testing.T) {
		n := c.Nodes[0]
		before := addressRecords(t, c)
		burst := make([]*Pod, 50)
		for i := range burst {
			p, err := n.NewPod(ctx, "burst", fmt.Sprintf("b%d", i))
			if err != nil {
				t.Fatal(err)
			}
			burst[i] = p
		}
		var wg sync.WaitGroup
		var done atomic.Int32
		killed := make(chan struct{})
		errs := make([]error, len(burst))
		for i, p := range burst {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = p.Add()
				// Crash coild once a fifth of the burst is through, with
				// the rest in flight.
				if done.Add(1) == int32(len(burst)/5) {
					n.KillCoild()
					close(killed)
				}
			}()
		}
		wg.Wait()
		select {
		case <-killed:
		default:
			t.Fatal("coild was never killed")
		}
		if err := n.StartCoild(); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitReady(60 * time.Second); err != nil {
			t.Fatal(err)
		}
		// Like kubelet: a failed sandbox is deleted and created again.
		failed := 0
		for i, p := range burst {
			if errs[i] == nil {
				continue
			}
			failed++
			if err := Eventually(30*time.Second, func() error {
				if err := p.Del(); err != nil {
					return err
				}
				return p.Add()
			}); err != nil {
				t.Fatalf("retry of %s: %v", p.Name, err)
			}
		}
		t.Logf("%d of %d ADDs failed while coild was down and succeeded on retry", failed, len(burst))
		seen := map[netip.Addr]string{}
		for _, p := range burst {
			for _, a := range p.IPs {
				if other, dup := seen[a]; dup {
					t.Fatalf("%s given to %s and %s", a, other, p.Name)
				}
				seen[a] = p.Name
			}
		}
		if got := addressRecords(t, c); got != before+len(burst) {
			t.Fatalf("etcd holds %d address records, want %d (%d before + %d pods): leak or loss", got, before+len(burst), before, len(burst))
		}
		for _, p := range burst {
			if err := p.Remove(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if got := addressRecords(t, c); got != before {
			t.Fatalf("after deleting the burst etcd holds %d address records, want %d", got, before)
		}
	})

	step(t, "etcd down: ADD fails with code 11, then recovers", func(t *testing.T) {
		n := c.Nodes[1]
		c.StopEtcdMember(0)
		p, err := n.NewPod(ctx, "default", "while-etcd-down")
		if err != nil {
			t.Fatal(err)
		}
		err = p.AddPlugin()
		var cniErr *CNIError
		if !errors.As(err, &cniErr) || cniErr.Code != 11 {
			t.Fatalf("ADD with etcd down = %v, want CNI error code 11", err)
		}
		if err := c.RestartEtcdMember(0); err != nil {
			t.Fatal(err)
		}
		if err := Eventually(60*time.Second, func() error { return p.Add() }); err != nil {
			t.Fatalf("ADD after etcd returned: %v", err)
		}
		pingEventually(t, pods[0], p.IPv4())
	})

	step(t, "a deleted Node still in use keeps its blocks", func(t *testing.T) {
		// kubectl delete node, or a cloud controller's hiccup: the node and
		// its pods run on, so its blocks must not go to another node.
		gone := c.Nodes[2]
		blocks := nodeBlocks(t, c, gone.Name)
		if len(blocks) == 0 {
			t.Fatal("node has no blocks")
		}
		if err := c.Kube.CoreV1().Nodes().Delete(ctx, gone.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// The controller looks again every --node-recheck-interval: three
		// deferrals mean it has seen the deletion and kept its hands off.
		if err := Eventually(30*time.Second, func() error {
			log, err := os.ReadFile(c.controller.logPath)
			if err != nil {
				return err
			}
			if n := strings.Count(string(log), "deleted node still in use"); n < 3 {
				return fmt.Errorf("controller deferred the release %d times, want 3", n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got := nodeBlocks(t, c, gone.Name); !slices.Equal(got, blocks) {
			t.Fatalf("blocks of the deleted node in use are %v, were %v", got, blocks)
		}
		if got := exportTable(t, gone); !slices.Equal(got, blocks) {
			t.Fatalf("table 119 of %s = %v, want its blocks %v", gone.Name, got, blocks)
		}
		pingEventually(t, pods[0], pods[2].IPv4())
	})

	step(t, "deleting a Node frees its blocks once coild and pods are gone, and others drop routes", func(t *testing.T) {
		gone := c.Nodes[2]
		gone.StopCoild()
		bound, err := c.Kube.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("spec.nodeName", gone.Name).String()})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range bound.Items {
			if err := c.Kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
				t.Fatal(err)
			}
		}
		// Released within the liveness TTL (--liveness-ttl 5s) and one
		// recheck.
		if err := Eventually(30*time.Second, func() error {
			if b := nodeBlocks(t, c, gone.Name); len(b) != 0 {
				return fmt.Errorf("etcd still holds blocks %v of deleted node", b)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		for _, n := range c.Nodes[:2] {
			if err := Eventually(15*time.Second, func() error {
				routes, err := n.Routes("-4", "main")
				if err != nil {
					return err
				}
				for _, r := range routes {
					if r.Gateway == gone.V4.String() {
						return fmt.Errorf("%s still routes %s via %s", n.Name, r.Dst, r.Gateway)
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestBIRD routes between nodes with BIRD: coild only exports its blocks to
// table 119; BIRD advertises them through a route reflector.
func TestBIRD(t *testing.T) {
	c := newCluster(t, Options{Nodes: 2, BIRD: true})
	mustCoilctl(t, c, "pool", "create", "default", "10.110.0.0/16", "5")
	a := mustStartPod(t, c.Nodes[0], "default", "a")
	b := mustStartPod(t, c.Nodes[1], "default", "b")
	pingEventually(t, a, b.IPv4())
	pingEventually(t, b, a.IPv4())
	routes, err := c.Nodes[0].Routes("-4", "main")
	if err != nil {
		t.Fatal(err)
	}
	blocks := nodeBlocks(t, c, c.Nodes[1].Name)
	found := false
	for _, r := range routes {
		if slices.Contains(blocks, r.Dst) && r.Gateway == c.Nodes[1].V4.String() && r.Protocol == "bird" {
			found = true
		}
	}
	if !found {
		t.Fatalf("node1 has no BIRD route to node2's blocks %v via %s: %+v", blocks, c.Nodes[1].V4, routes)
	}
}

// TestEtcdMemberDown: with one of three etcd members stopped, allocation
// goes on.
func TestEtcdMemberDown(t *testing.T) {
	c := newCluster(t, Options{Nodes: 2, EtcdMembers: 3, FlatL2: true})
	mustCoilctl(t, c, "pool", "create", "default", "10.120.0.0/16", "5")
	a := mustStartPod(t, c.Nodes[0], "default", "a")
	c.StopEtcdMember(1)
	b := mustStartPod(t, c.Nodes[1], "default", "b")
	for i := range 5 {
		mustStartPod(t, c.Nodes[0], "default", fmt.Sprintf("more%d", i))
	}
	pingEventually(t, a, b.IPv4())
}

// podCannotReachCoild: coild's TCP listener is on the node's 127.0.0.1,
// which a pod reaches when route_localnet is on (kube-proxy sets it) and
// the pod, holding CAP_NET_ADMIN in its namespace, routes 127.0.0.1 out
// of eth0. Its packets then come from the pod's address: coild must
// answer nothing to them, least of all a state-changing request.
func podCannotReachCoild(t *testing.T, n *Node, p *Pod) {
	const listener = "127.0.0.1:9383"
	// The hostile setup: the node with route_localnet, the pod sending
	// 127.0.0.1 to the node.
	if _, err := runIn(n.NetNS, nil, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = runIn(n.NetNS, nil, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=0") })
	// The pod's loopback routes may not exist (lo down): remove them if so.
	_, _ = runIn(p.NetNS, nil, "ip", "route", "flush", "table", "local", "127.0.0.0/8")
	for _, args := range [][]string{
		{"sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"},
		{"ip", "route", "add", "127.0.0.1/32", "via", nodenet.GatewayIPv4.String(), "dev", "eth0", "onlink", "src", p.IPv4().String()},
	} {
		if _, err := runIn(p.NetNS, nil, args[0], args[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	// The node really delivers such packets locally: a listener of our own
	// on the node's loopback is reachable from the pod, so a refusal below
	// is coild's doing, not the path's.
	probe, err := netnstest.ListenIn("/var/run/netns/"+n.NetNS, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	go func() {
		for {
			c, err := probe.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hello\n"))
			c.Close()
		}
	}()
	if got, err := exchange("/var/run/netns/"+p.NetNS, probe.Addr().String(), ""); err != nil || !strings.HasPrefix(got, "hello") {
		t.Fatalf("the pod cannot reach a listener on the node's loopback, so the test proves nothing: %q, %v", got, err)
	}

	for _, req := range []string{
		"GET /status HTTP/1.0\r\n\r\n",
		"POST /gc HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n{\"valid-attachments\":[]}",
	} {
		got, err := exchange("/var/run/netns/"+p.NetNS, listener, req)
		if strings.Contains(got, "HTTP/1") {
			t.Errorf("the pod got an answer from coild's TCP listener to %q: %q (%v)", strings.Fields(req)[0]+" "+strings.Fields(req)[1], got, err)
		}
	}
	// Nor on the node's own addresses.
	for _, a := range []netip.Addr{n.V4, n.V6} {
		if got, err := exchange("/var/run/netns/"+p.NetNS, netip.AddrPortFrom(a, 9383).String(), "GET /status HTTP/1.0\r\n\r\n"); err == nil || strings.Contains(got, "HTTP/1") {
			t.Errorf("the pod reached coild on %s: %q", a, got)
		}
	}
}

// exchange connects from the network namespace to addr, sends req and
// returns what comes back within a short time.
func exchange(netnsPath, addr, req string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := dialIn(netnsPath, ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if req != "" {
		if _, err := c.Write([]byte(req)); err != nil {
			return "", err
		}
	}
	b, err := io.ReadAll(c)
	return string(b), err
}
