// Package mtest is Coil's multi-node end-to-end suite: it builds clusters of
// network namespaces on one machine, so that real binaries can be tested
// together without changing the host. The layout is in docs/mtest.md.
package mtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coil-project/coil/coild/api"
	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	kubeapitest "github.com/coil-project/coil/internal/testenv/kubeapi"
	kubenodetest "github.com/coil-project/coil/internal/testenv/kubenode"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Fixed addresses of the test bed.
const (
	fabricV4 = "192.168.100.1"
	fabricV6 = "fd00:100::1"
	ctlV4    = "192.168.100.2"
	bgpAS    = 64512
)

// Options shape a cluster.
type Options struct {
	Nodes int
	// EtcdMembers is 1 or 3.
	EtcdMembers int
	// FlatL2 makes coild route to other nodes' blocks itself.
	FlatL2 bool
	// BIRD runs BIRD in every node and a route reflector in the fabric.
	BIRD bool
	// Controller runs coil-controller.
	Controller bool
	// ControllerArgs are extra coil-controller flags.
	ControllerArgs []string
	// ControllerReplicas, when 2 or more, runs that many coil-controller
	// replicas with leader election (a Lease in kube-system), as deploy/
	// does; otherwise one runs with --leader-elect=false.
	ControllerReplicas int
	// CoildArgs are extra coild flags.
	CoildArgs []string
	// Detached daemons outlive the process that started the cluster (the
	// demo); Teardown removes them.
	Detached bool
	// External adds a host outside the cluster behind the fabric, for
	// egress: see Cluster.External.
	External bool
	// RealNodes runs kube-scheduler, kube-controller-manager and, in
	// every node namespace, containerd and a kubelet; Coil is not started
	// by the suite but installed from deploy/ (InstallCoil). Coil's etcd
	// then requires TLS client certificates, as in production.
	RealNodes bool
}

// Cluster is a running test bed.
type Cluster struct {
	opts   Options
	id     string
	Dir    string
	BinDir string
	CNIBin string
	fabric string
	ctl    string

	Kube       kubernetes.Interface
	apiserver  *kubeapitest.Server
	kubeconfig string
	etcd       []*process
	etcdURLs   []string
	// kubeEtcd stores the API server's data, apart from Coil's etcd, so
	// that the etcd failure tests hit Coil and not Kubernetes.
	kubeEtcd   *process
	controller *process
	Nodes      []*Node
	rr         *process
	// External is the host outside the cluster (Options.External).
	External *External
	// etcdCerts are the PKI of Coil's etcd when it requires TLS.
	etcdCerts *etcdtest.Certs
	// kubeBins and kubeProcs are the real-node clusters' Kubernetes
	// programs and the controllers running in the ctl namespace.
	kubeBins  *realNodeBinaries
	kubeProcs []*process
	// replicas are the coil-controller replicas of
	// Options.ControllerReplicas (controller is then nil).
	replicas []*process

	mu      sync.Mutex
	pids    []int
	netnses []string
	pods    map[string]*Pod
}

// Node is one node namespace with its coild.
type Node struct {
	Name   string
	NetNS  string
	V4, V6 netip.Addr
	Socket string
	coild  *process
	bird   *process
	// kube is the node's kubelet and containerd (Options.RealNodes).
	kube *kubenodetest.Node
	c    *Cluster
}

var clusterSeq atomic.Int64

// NewCluster builds and starts a cluster. The caller must Close it.
func NewCluster(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.EtcdMembers == 0 {
		opts.EtcdMembers = 1
	}
	id := fmt.Sprintf("cmt%d%d", os.Getpid()%10000, clusterSeq.Add(1))
	dir, err := os.MkdirTemp("", "coil-mtest-")
	if err != nil {
		return nil, err
	}
	c = &Cluster{opts: opts, id: id, Dir: dir, pods: map[string]*Pod{}}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	if c.BinDir, err = binDir(); err != nil {
		return nil, err
	}
	if c.CNIBin, err = c.cniBinDir(); err != nil {
		return nil, err
	}
	if err := c.buildNetwork(); err != nil {
		return nil, fmt.Errorf("build network: %w", err)
	}
	if opts.External {
		if c.External, err = c.buildExternal(); err != nil {
			return nil, fmt.Errorf("build external host: %w", err)
		}
	}
	if err := c.startEtcd(); err != nil {
		return nil, err
	}
	if err := c.startAPIServer(ctx); err != nil {
		return nil, err
	}
	if opts.RealNodes {
		if err := c.startRealNodes(ctx); err != nil {
			return nil, err
		}
		return c, nil
	}
	for _, n := range c.Nodes {
		if _, err := c.Kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("create Node %s: %w", n.Name, err)
		}
	}
	if opts.Controller && opts.ControllerReplicas >= 2 {
		c.replicas = make([]*process, opts.ControllerReplicas)
		for i := range c.replicas {
			if err := c.StartControllerReplica(i); err != nil {
				return nil, err
			}
		}
	} else if opts.Controller {
		if err := c.StartController(); err != nil {
			return nil, err
		}
	}
	if opts.BIRD {
		if err := c.startBIRD(); err != nil {
			return nil, err
		}
	}
	for _, n := range c.Nodes {
		if err := n.StartCoild(); err != nil {
			return nil, err
		}
	}
	for _, n := range c.Nodes {
		if err := n.WaitReady(60 * time.Second); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// binDir is where `make build` put Coil's binaries.
func binDir() (string, error) {
	if d := os.Getenv("COIL_BIN_DIR"); d != "" {
		return d, nil
	}
	_, file, _, _ := runtime.Caller(0)
	d := filepath.Join(filepath.Dir(file), "..", "bin")
	for _, b := range []string{"coil", "coild", "coilctl", "coil-controller"} {
		if _, err := os.Stat(filepath.Join(d, b)); err != nil {
			return "", fmt.Errorf("%s missing: run `make build` first (or set COIL_BIN_DIR)", filepath.Join(d, b))
		}
	}
	return filepath.Abs(d)
}

func cacheDir() string {
	if d := os.Getenv("COIL_CACHE_DIR"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "coil")
}

// cniBinDir assembles the plugins kubelet would find in /opt/cni/bin.
func (c *Cluster) cniBinDir() (string, error) {
	ref := os.Getenv("CNI_BIN_DIR")
	if ref == "" {
		ref = filepath.Join(cacheDir(), "cni-v1.3.1-plugins-v1.9.1-static")
	}
	dir := filepath.Join(c.Dir, "cni-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	for _, p := range []string{"tuning", "portmap", "loopback", "cnitool"} {
		src := filepath.Join(ref, p)
		if _, err := os.Stat(src); err != nil {
			return "", fmt.Errorf("reference CNI tool %s missing: run `make deps`", src)
		}
		if err := os.Symlink(src, filepath.Join(dir, p)); err != nil {
			return "", err
		}
	}
	if err := os.Symlink(filepath.Join(c.BinDir, "coil"), filepath.Join(dir, "coil")); err != nil {
		return "", err
	}
	return dir, nil
}

func (c *Cluster) addNetNS(name string) error {
	if _, err := run("ip", "netns", "add", name); err != nil {
		return err
	}
	c.mu.Lock()
	c.netnses = append(c.netnses, name)
	c.mu.Unlock()
	_, err := run("ip", "-n", name, "link", "set", "lo", "up")
	return err
}

// attach connects netns to the fabric bridge with a veth named eth0 inside it.
func (c *Cluster) attach(netns, port string, addrs ...string) error {
	steps := [][]string{
		{"-n", c.fabric, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns},
		{"-n", c.fabric, "link", "set", port, "master", "br0", "up"},
		{"-n", netns, "link", "set", "eth0", "up"},
	}
	for _, a := range addrs {
		steps = append(steps, []string{"-n", netns, "addr", "add", a, "dev", "eth0", "nodad"})
	}
	for _, s := range steps {
		if _, err := run("ip", s...); err != nil {
			return err
		}
	}
	return nil
}

func (c *Cluster) buildNetwork() error {
	c.fabric = c.id + "-fabric"
	c.ctl = c.id + "-ctl"
	if err := c.addNetNS(c.fabric); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"-n", c.fabric, "link", "add", "br0", "type", "bridge"},
		{"-n", c.fabric, "link", "set", "br0", "up"},
		{"-n", c.fabric, "addr", "add", fabricV4 + "/24", "dev", "br0"},
		{"-n", c.fabric, "addr", "add", fabricV6 + "/64", "dev", "br0", "nodad"},
	} {
		if _, err := run("ip", s...); err != nil {
			return err
		}
	}
	if err := c.addNetNS(c.ctl); err != nil {
		return err
	}
	if err := c.attach(c.ctl, "ctl", ctlV4+"/24"); err != nil {
		return err
	}
	for i := 1; i <= c.opts.Nodes; i++ {
		n := &Node{
			Name:  fmt.Sprintf("node%d", i),
			NetNS: fmt.Sprintf("%s-node%d", c.id, i),
			V4:    netip.MustParseAddr(fmt.Sprintf("192.168.100.%d", 10+i)),
			V6:    netip.MustParseAddr(fmt.Sprintf("fd00:100::%d", 10+i)),
			c:     c,
		}
		n.Socket = filepath.Join(c.Dir, n.Name, "coild.sock")
		if err := c.addNetNS(n.NetNS); err != nil {
			return err
		}
		if err := c.attach(n.NetNS, n.Name, n.V4.String()+"/24", n.V6.String()+"/64"); err != nil {
			return err
		}
		for _, s := range [][]string{
			{"-n", n.NetNS, "route", "add", "default", "via", fabricV4},
			{"-n", n.NetNS, "-6", "route", "add", "default", "via", fabricV6},
		} {
			if _, err := run("ip", s...); err != nil {
				return err
			}
		}
		c.Nodes = append(c.Nodes, n)
	}
	return nil
}

func etcdBin() string {
	if d := os.Getenv("ETCD_BIN_DIR"); d != "" {
		return filepath.Join(d, "etcd")
	}
	return filepath.Join(cacheDir(), "etcd-v3.6.16", "etcd")
}

// EtcdEndpoints is the comma-separated client URLs of the etcd members.
func (c *Cluster) EtcdEndpoints() string { return strings.Join(c.etcdURLs, ",") }

func (c *Cluster) startEtcd() error {
	bin := etcdBin()
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("etcd binary %s missing: run `make deps`", bin)
	}
	scheme := "http"
	if c.opts.RealNodes {
		certs, err := etcdtest.GenerateCerts(filepath.Join(c.Dir, "etcd-pki"), net.ParseIP(ctlV4))
		if err != nil {
			return fmt.Errorf("etcd certificates: %w", err)
		}
		c.etcdCerts = certs
		scheme = "https"
	}
	var initial []string
	for i := 0; i < c.opts.EtcdMembers; i++ {
		initial = append(initial, fmt.Sprintf("m%d=http://%s:%d", i, ctlV4, 2380+100*i))
		c.etcdURLs = append(c.etcdURLs, fmt.Sprintf("%s://%s:%d", scheme, ctlV4, 2379+100*i))
	}
	for i := 0; i < c.opts.EtcdMembers; i++ {
		if err := c.startEtcdMember(i, strings.Join(initial, ","), "new"); err != nil {
			return err
		}
	}
	// Wait until the cluster answers.
	deadline := time.Now().Add(60 * time.Second)
	for {
		_, err := c.Etcdctl("endpoint", "health")
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd not healthy: %w\n%s", err, c.etcd[0].logTail())
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func (c *Cluster) startEtcdMember(i int, initial, state string) error {
	name := fmt.Sprintf("m%d", i)
	peer := fmt.Sprintf("http://%s:%d", ctlV4, 2380+100*i)
	var tlsArgs []string
	if c.etcdCerts != nil {
		tlsArgs = []string{
			"--cert-file", c.etcdCerts.ServerCert,
			"--key-file", c.etcdCerts.ServerKey,
			"--client-cert-auth",
			"--trusted-ca-file", c.etcdCerts.CA,
		}
	}
	p, err := c.start(c.ctl, "etcd-"+name, nil, etcdBin(), append([]string{
		"--name", name,
		"--data-dir", filepath.Join(c.Dir, "etcd-"+name),
		"--listen-client-urls", c.etcdURLs[i],
		"--advertise-client-urls", c.etcdURLs[i],
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", initial,
		"--initial-cluster-state", state,
		"--initial-cluster-token", c.id,
		"--log-level", "error",
	}, tlsArgs...)...)
	if err != nil {
		return err
	}
	if len(c.etcd) > i {
		c.etcd[i] = p
	} else {
		c.etcd = append(c.etcd, p)
	}
	return nil
}

// StopEtcdMember kills member i (a crash).
func (c *Cluster) StopEtcdMember(i int) { c.etcd[i].kill() }

// RestartEtcdMember starts member i again on its data directory.
func (c *Cluster) RestartEtcdMember(i int) error {
	var initial []string
	for j := 0; j < c.opts.EtcdMembers; j++ {
		initial = append(initial, fmt.Sprintf("m%d=http://%s:%d", j, ctlV4, 2380+100*j))
	}
	return c.startEtcdMember(i, strings.Join(initial, ","), "existing")
}

// Etcdctl runs etcdctl against the cluster from the ctl namespace.
func (c *Cluster) Etcdctl(args ...string) (string, error) {
	bin := filepath.Join(filepath.Dir(etcdBin()), "etcdctl")
	flags := []string{"--endpoints", c.EtcdEndpoints(), "--dial-timeout", "2s", "--command-timeout", "5s"}
	if c.etcdCerts != nil {
		flags = append(flags, "--cacert", c.etcdCerts.CA, "--cert", c.etcdCerts.ClientCert, "--key", c.etcdCerts.ClientKey)
	}
	return runIn(c.ctl, nil, bin, append(flags, args...)...)
}

// Coilctl runs coilctl from the ctl namespace.
func (c *Cluster) Coilctl(args ...string) (string, error) {
	return runIn(c.ctl, c.coilctlEnv(), filepath.Join(c.BinDir, "coilctl"), args...)
}

// coilctlEnv is the environment that points coilctl at Coil's etcd.
func (c *Cluster) coilctlEnv() []string {
	env := []string{"COILCTL_ETCD_ENDPOINTS=" + c.EtcdEndpoints()}
	if c.etcdCerts != nil {
		env = append(env,
			"COILCTL_ETCD_TLS_CA="+c.etcdCerts.CA,
			"COILCTL_ETCD_TLS_CERT="+c.etcdCerts.ClientCert,
			"COILCTL_ETCD_TLS_KEY="+c.etcdCerts.ClientKey)
	}
	return env
}

// ctlDialer dials from inside the ctl namespace, where the API server is.
func (c *Cluster) ctlDialer(ctx context.Context, network, addr string) (net.Conn, error) {
	return dialIn("/var/run/netns/"+c.ctl, ctx, network, addr)
}

func (c *Cluster) startAPIServer(ctx context.Context) error {
	kubeEtcdURL := fmt.Sprintf("http://%s:2399", ctlV4)
	p, err := c.start(c.ctl, "etcd-kube", nil, etcdBin(),
		"--name", "kube",
		"--data-dir", filepath.Join(c.Dir, "etcd-kube"),
		"--listen-client-urls", kubeEtcdURL,
		"--advertise-client-urls", kubeEtcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://%s:2398", ctlV4),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://%s:2398", ctlV4),
		"--initial-cluster", fmt.Sprintf("kube=http://%s:2398", ctlV4),
		"--log-level", "error",
	)
	if err != nil {
		return err
	}
	c.kubeEtcd = p
	opts := kubeapitest.Options{
		EtcdEndpoint: kubeEtcdURL,
		Dir:          mkdir(filepath.Join(c.Dir, "apiserver")),
		NetNS:        "/var/run/netns/" + c.ctl,
		BindAddress:  ctlV4,
		Dial:         c.ctlDialer,
		Detached:     c.opts.Detached,
	}
	if c.opts.RealNodes {
		// Pods get service-account tokens; the DaemonSet is privileged;
		// every kubelet has its own node identity.
		opts.ServiceAccounts = true
		// kubectl logs: the nodes' names are in no DNS here.
		opts.ExtraArgs = []string{"--allow-privileged=true", "--kubelet-preferred-address-types=InternalIP"}
		for _, n := range c.Nodes {
			opts.Users = append(opts.Users, kubeapitest.User{Name: "system:node:" + n.Name, Groups: []string{"system:nodes"}})
		}
	}
	s, err := kubeapitest.Start(ctx, opts)
	if err != nil {
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	c.apiserver = s
	if c.Kube, err = kubernetes.NewForConfig(s.Config); err != nil {
		return err
	}
	c.kubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	return s.WriteKubeconfig(c.kubeconfig, kubeapitest.AdminUser)
}

func mkdir(d string) string {
	os.MkdirAll(d, 0o755)
	return d
}

// StartController runs coil-controller in the ctl namespace.
func (c *Cluster) StartController() error {
	args := append([]string{
		"--etcd-endpoints", c.EtcdEndpoints(),
		"--kubeconfig", c.kubeconfig,
		"--leader-elect=false",
	}, c.opts.ControllerArgs...)
	p, err := c.start(c.ctl, "coil-controller", nil, filepath.Join(c.BinDir, "coil-controller"), args...)
	if err != nil {
		return err
	}
	c.controller = p
	return nil
}

// StartCoild runs coild in the node's namespace.
func (n *Node) StartCoild() error {
	os.MkdirAll(filepath.Dir(n.Socket), 0o755)
	args := []string{
		"--node-name", n.Name,
		"--node-address", n.V4.String(),
		"--node-address", n.V6.String(),
		"--etcd-endpoints", n.c.EtcdEndpoints(),
		"--etcd-timeout", "2s",
		"--kubeconfig", n.c.kubeconfig,
		"--socket", n.Socket,
		"--scan-interval", "2s",
		// Short, so a stopped coild's node is released soon after.
		"--liveness-ttl", "5s",
		// The node network stays direct for egress clients.
		"--egress-bypass", "192.168.100.0/24,fd00:100::/64",
		"--metrics-addr", coildMetricsAddr,
	}
	args = append(args, n.c.opts.CoildArgs...)
	if n.c.opts.FlatL2 {
		args = append(args, "--flat-l2")
	}
	p, err := n.c.start(n.NetNS, "coild-"+n.Name, nil, filepath.Join(n.c.BinDir, "coild"), args...)
	if err != nil {
		return err
	}
	n.coild = p
	return nil
}

// coildMetricsAddr and controllerMetricsAddr are where coild (in each
// node's namespace) and coil-controller (in the ctl namespace) serve
// /metrics.
const (
	coildMetricsAddr      = "127.0.0.1:9384"
	controllerMetricsAddr = "127.0.0.1:9386"
)

// Metrics scrapes coild's /metrics.
func (n *Node) Metrics(ctx context.Context) (string, error) {
	return scrape(ctx, n.NetNS, coildMetricsAddr)
}

// ControllerMetrics scrapes coil-controller's /metrics; on real nodes,
// the leading replica's, from inside the first node (pod addresses are
// routed only between the nodes).
func (c *Cluster) ControllerMetrics(ctx context.Context) (string, error) {
	if c.kubeBins == nil {
		return scrape(ctx, c.ctl, controllerMetricsAddr)
	}
	pods, err := c.Kube.CoreV1().Pods("coil-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=coil-controller"})
	if err != nil {
		return "", err
	}
	for _, p := range pods.Items {
		if p.Status.PodIP == "" {
			continue
		}
		m, err := scrape(ctx, c.Nodes[0].NetNS, net.JoinHostPort(p.Status.PodIP, "9386"))
		if err == nil && strings.Contains(m, "\ncoil_controller_leader 1") {
			return m, nil
		}
	}
	return "", fmt.Errorf("no leading coil-controller pod answers")
}

// scrape GETs http://addr/metrics from inside netns.
func scrape(ctx context.Context, netns, addr string) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			return dialIn("/var/run/netns/"+netns, ctx, network, a)
		},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("scrape %s in %s: %w", addr, netns, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("scrape %s in %s: %s %v", addr, netns, resp.Status, err)
	}
	return string(body), nil
}

// WaitReady waits for coild's /readyz through its socket.
func (n *Node) WaitReady(timeout time.Duration) error {
	client, err := api.NewClient("unix://"+n.Socket, api.WithTimeout(2*time.Second))
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		if client.Ready(context.Background()) == nil {
			return nil
		}
		if !n.coild.running() {
			return fmt.Errorf("coild on %s exited: %v\n%s", n.Name, n.coild.err, n.coild.logTail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("coild on %s not ready after %s\n%s", n.Name, timeout, n.coild.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// KillCoild crashes coild with SIGKILL.
func (n *Node) KillCoild() { n.coild.kill() }

// StopCoild shuts coild down gracefully.
func (n *Node) StopCoild() { n.coild.stop() }

// CoildLog returns the end of coild's log; on a real node, where the
// kubelet runs coild, the ends of the kubelet's and containerd's logs.
func (n *Node) CoildLog() string {
	if n.kube != nil {
		return n.kube.Logs()
	}
	if n.coild == nil {
		return ""
	}
	return n.coild.logTail()
}

// Routes returns the routes of a table in the node ("main", "119").
func (n *Node) Routes(family, table string) ([]RouteInfo, error) {
	out, err := run("ip", "-n", n.NetNS, "-j", family, "route", "show", "table", table)
	if err != nil {
		// A table with no route yet (single-stack pools leave the other
		// family's table empty) is no error.
		if strings.Contains(err.Error(), "FIB table does not exist") {
			return nil, nil
		}
		return nil, err
	}
	var routes []RouteInfo
	if strings.TrimSpace(out) == "" {
		return nil, nil
	}
	if err := json.Unmarshal([]byte(out), &routes); err != nil {
		return nil, fmt.Errorf("parse routes %q: %w", out, err)
	}
	return routes, nil
}

// RouteInfo is one route of `ip -j route`.
type RouteInfo struct {
	Dst      string `json:"dst"`
	Gateway  string `json:"gateway"`
	Dev      string `json:"dev"`
	Protocol string `json:"protocol"`
	Type     string `json:"type"`
}

// Close stops every process and removes every namespace and file.
func (c *Cluster) Close() {
	if c == nil {
		return
	}
	c.mu.Lock()
	pods := make([]*Pod, 0, len(c.pods))
	for _, p := range c.pods {
		pods = append(pods, p)
	}
	c.mu.Unlock()
	var procs []*process
	for _, n := range c.Nodes {
		if n.coild != nil {
			procs = append(procs, n.coild)
		}
		if n.bird != nil {
			procs = append(procs, n.bird)
		}
	}
	if c.controller != nil {
		procs = append(procs, c.controller)
	}
	for _, p := range c.replicas {
		if p != nil {
			procs = append(procs, p)
		}
	}
	if c.rr != nil {
		procs = append(procs, c.rr)
	}
	procs = append(procs, c.kubeProcs...)
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		if n.kube != nil {
			wg.Add(1)
			go func() { defer wg.Done(); n.kube.Stop() }()
		}
	}
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.kill() }()
	}
	wg.Wait()
	if c.apiserver != nil {
		c.apiserver.Stop()
	}
	if c.External != nil {
		c.External.close()
	}
	for _, p := range c.etcd {
		p.kill()
	}
	if c.kubeEtcd != nil {
		c.kubeEtcd.kill()
	}
	c.mu.Lock()
	names := c.netnses
	c.netnses = nil
	c.mu.Unlock()
	for _, p := range pods {
		run("ip", "netns", "del", p.NetNS)
	}
	for i := len(names) - 1; i >= 0; i-- {
		run("ip", "netns", "del", names[i])
	}
	if os.Getenv("COIL_MTEST_KEEP") == "" {
		os.RemoveAll(c.Dir)
	}
}

// controllerLog returns the end of coil-controller's log.
func (c *Cluster) controllerLog() string {
	if c.controller == nil {
		return ""
	}
	return c.controller.logTail()
}

var errTimeout = errors.New("timed out")

// Eventually polls cond every interval until it returns nil or timeout passes.
func Eventually(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w after %s: %w", errTimeout, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// state is what Teardown needs to remove a detached cluster.
type state struct {
	ID      string   `json:"id"`
	Dir     string   `json:"dir"`
	PIDs    []int    `json:"pids"`
	NetNSes []string `json:"netnses"`
	// KubeNodes are the real nodes (Options.RealNodes).
	KubeNodes []kubenodetest.State `json:"kubeNodes,omitempty"`
}

// SaveState writes what Teardown needs into path.
func (c *Cluster) SaveState(path string) error {
	c.mu.Lock()
	st := state{ID: c.id, Dir: c.Dir, PIDs: append([]int(nil), c.pids...), NetNSes: append([]string(nil), c.netnses...)}
	for _, p := range c.pods {
		st.NetNSes = append(st.NetNSes, p.NetNS)
	}
	c.mu.Unlock()
	for _, n := range c.Nodes {
		if n.kube != nil {
			st.KubeNodes = append(st.KubeNodes, n.kube.State())
		}
	}
	if c.apiserver != nil {
		if pid := c.apiserver.PID(); pid > 0 {
			st.PIDs = append(st.PIDs, pid)
		}
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o600)
}

// Teardown kills the processes and removes the namespaces and files of a
// cluster saved with SaveState.
func Teardown(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read demo state: %w", err)
	}
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	for _, kn := range st.KubeNodes {
		// kubelet, containerd, shims and containers first: they hold the
		// pods' namespaces and the node's cgroups.
		kubenodetest.Cleanup(kn)
	}
	for _, pid := range st.PIDs {
		// Each daemon leads its own session; kill the whole group.
		syscall.Kill(-pid, syscall.SIGKILL)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	time.Sleep(200 * time.Millisecond)
	for i := len(st.NetNSes) - 1; i >= 0; i-- {
		run("ip", "netns", "del", st.NetNSes[i])
	}
	if st.Dir != "" && strings.HasPrefix(filepath.Base(st.Dir), "coil-mtest-") {
		os.RemoveAll(st.Dir)
	}
	return os.Remove(path)
}

// PowerOff makes the node vanish as a power loss would, without telling the
// API: the node's uplink loses its carrier (its port on the fabric goes
// down, so nothing reaches the node or its pods and nothing leaves them)
// and its coild is frozen. The Node and its Pods stay as they were in the
// API. PowerOn undoes it.
func (n *Node) PowerOff() error {
	if n.kube != nil {
		// A real node freezes whole: kubelet, containerd, coild's pod.
		n.kube.Signal(syscall.SIGSTOP)
	} else {
		n.coild.signal(syscall.SIGSTOP)
	}
	_, err := run("ip", "-n", n.c.fabric, "link", "set", n.Name, "down")
	return err
}

// PowerOn brings a node back after PowerOff: its coild goes on where it was
// frozen, its uplink gets its carrier back.
func (n *Node) PowerOn() error {
	_, err := run("ip", "-n", n.c.fabric, "link", "set", n.Name, "up")
	if n.kube != nil {
		n.kube.Signal(syscall.SIGCONT)
	} else {
		n.coild.signal(syscall.SIGCONT)
	}
	return err
}

// FreezeCoild stops the node's coild where it is (SIGSTOP), ThawCoild lets
// it go on: the data path stays as coild left it.
func (n *Node) FreezeCoild() { n.coild.signal(syscall.SIGSTOP) }

// ThawCoild undoes FreezeCoild.
func (n *Node) ThawCoild() { n.coild.signal(syscall.SIGCONT) }

// Cluster returns the cluster the node belongs to.
func (n *Node) Cluster() *Cluster { return n.c }
