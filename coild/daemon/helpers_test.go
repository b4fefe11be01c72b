package daemon_test

// Test fixtures for the node-level integration tests: a "node" is a network
// namespace with coild running in-process for it (daemon.Run with HostNS),
// pods are network namespaces wired by the real coil plugin binary, chained
// with reference plugins and driven through libcni or cnitool, exactly as a
// container runtime would.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/coild/daemon"
	"github.com/coil-project/coil/coild/poolselector"
	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/model/etcdconfig"
	"github.com/coil-project/coil/nodenet"
)

// Addresses every node holds on its lo: what pods reach as "the host".
var (
	nodeIPv4 = netip.MustParseAddr("10.200.0.1")
	nodeIPv6 = netip.MustParseAddr("fd00:200::1")
)

// Export table and protocol coild runs with in these tests (the defaults).
const (
	exportTable    = 119
	exportProtocol = 30
)

// tuningSomaxconn is what the chained tuning plugin sets in every pod; a pod
// holding it proves the chain ran past coil.
const tuningSomaxconn = "1234"

var (
	etcdServer *etcdtest.Server
	// binDir holds the coil plugin built from this tree and the
	// reference plugins and cnitool.
	binDir string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "coild/daemon tests: "+format+"\n", args...)
		return 1
	}
	if os.Geteuid() != 0 {
		return fail("these tests create network namespaces and need root")
	}
	if _, err := exec.LookPath("nft"); err != nil {
		return fail("the portmap plugin (nftables backend) needs the nft command: install the Debian package nftables")
	}
	tmp, err := os.MkdirTemp("", "coild-daemon-test-")
	if err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(tmp)
	binDir = filepath.Join(tmp, "bin")
	if err := prepareBinDir(binDir); err != nil {
		return fail("%v", err)
	}
	etcdServer, err = etcdtest.Start(etcdtest.Options{})
	if err != nil {
		return fail("%v", err)
	}
	defer etcdServer.Close()
	return m.Run()
}

// referenceTools are what the tests need from CNI_BIN_DIR.
var referenceTools = []string{"cnitool", "tuning", "portmap"}

// prepareBinDir builds the coil plugin into dir and links the reference
// CNI tools next to it, as /opt/cni/bin looks on a node.
func prepareBinDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		gobin = "go"
	}
	build := exec.Command(gobin, "build", "-o", filepath.Join(dir, "coil"), "./coil")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build the coil plugin: %v\n%s", err, out)
	}

	cniBin := os.Getenv("CNI_BIN_DIR")
	if cniBin == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return fmt.Errorf("CNI_BIN_DIR is not set and there is no home directory: %w", err)
		}
		cniBin = filepath.Join(home, ".cache", "coil", "cni-v1.3.1-plugins-v1.9.1")
	}
	for _, tool := range referenceTools {
		src := filepath.Join(cniBin, tool)
		if _, err := os.Stat(src); err != nil {
			return fmt.Errorf("reference CNI tool %s missing in %s (CNI_BIN_DIR): run `make cni-tools` first", tool, cniBin)
		}
		if err := os.Symlink(src, filepath.Join(dir, tool)); err != nil {
			return err
		}
	}
	return nil
}

// repoRoot finds the module root from the test's working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the test's working directory")
		}
		dir = parent
	}
}

// newNetNS creates a namespace for the test (see netnstest.New).
func newNetNS(t testing.TB) ns.NetNS { return netnstest.New(t) }

// inNS runs f inside n and fails the test on error.
func inNS(t testing.TB, n ns.NetNS, f func() error) { netnstest.Do(t, n, f) }

// logBuffer collects coild's log, shown only when a test fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// node is a network namespace playing a Kubernetes node, with coild.
type node struct {
	t    *testing.T
	name string
	ns   ns.NetNS
	etcd *etcdtest.Server
	// etcdEndpoint is what coild dials.
	etcdEndpoint string
	prefix       string
	store        *model.Store
	cli          *clientv3.Client
	kube         *fake.Clientset
	socket       string
	client       *api.Client
	log          *logBuffer
	// blockGrace and scanInterval are coild's BlockReleaseGrace and
	// ScanInterval.
	blockGrace, scanInterval time.Duration
	// cniCache is libcni's cache directory (/var/lib/cni on a node).
	cniCache string

	cancel context.CancelFunc
	done   chan error
}

// nodeOptions tune newNode.
type nodeOptions struct {
	// etcd defaults to the shared server.
	etcd *etcdtest.Server
	// etcdEndpoint, if set, is where coild reaches etcd (a proxy); the
	// test itself always talks to etcd directly.
	etcdEndpoint string
	// pools are created before coild starts.
	pools []model.Pool
	// namespaces exist in the fake API server; "default" always does.
	namespaces []*corev1.Namespace
	// blockGrace is BlockReleaseGrace; default one hour (never, in a test).
	blockGrace time.Duration
	// scanInterval is ScanInterval; default 200ms.
	scanInterval time.Duration
}

// newNode creates a node namespace with its addresses on lo, fresh etcd
// data under a prefix of the test's own, and starts coild for it. Everything
// is torn down when the test ends.
func newNode(t *testing.T, opts nodeOptions) *node {
	t.Helper()
	if opts.etcd == nil {
		opts.etcd = etcdServer
	}
	if opts.blockGrace == 0 {
		opts.blockGrace = time.Hour
	}
	if opts.etcdEndpoint == "" {
		opts.etcdEndpoint = opts.etcd.Endpoint
	}
	if opts.scanInterval == 0 {
		opts.scanInterval = 200 * time.Millisecond
	}
	n := &node{
		t:            t,
		name:         "node-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())),
		ns:           newNetNS(t),
		etcd:         opts.etcd,
		etcdEndpoint: opts.etcdEndpoint,
		prefix:       etcdtest.Prefix(t),
		socket:       filepath.Join(t.TempDir(), "coild.sock"),
		log:          &logBuffer{},
		blockGrace:   opts.blockGrace,
		scanInterval: opts.scanInterval,
		cniCache:     t.TempDir(),
	}
	inNS(t, n.ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, a := range []netip.Addr{nodeIPv4, nodeIPv6} {
			addr := &netlink.Addr{IPNet: hostNet(a)}
			if a.Is6() {
				addr.Flags = unix.IFA_F_NODAD
			}
			if err := netlink.AddrAdd(lo, addr); err != nil {
				return fmt.Errorf("add %s to lo: %w", a, err)
			}
		}
		return nil
	})

	n.cli = opts.etcd.Client(t)
	n.store = model.New(n.cli, n.prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.store.Init(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range opts.pools {
		if err := n.store.CreatePool(ctx, p); err != nil {
			t.Fatalf("create pool %s: %v", p.Name, err)
		}
	}

	n.kube = fake.NewClientset()
	for _, o := range append([]*corev1.Namespace{namespace("default", "")}, opts.namespaces...) {
		if _, err := n.kube.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	client, err := api.NewClient("unix://"+n.socket, api.WithTimeout(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n.client = client

	t.Cleanup(func() {
		n.stop()
		if t.Failed() {
			t.Logf("coild log of %s:\n%s", n.name, n.log.String())
		}
	})
	n.start()
	return n
}

// namespace returns a Kubernetes namespace, annotated with a pool if pool
// is not empty.
func namespace(name, pool string) *corev1.Namespace {
	o := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if pool != "" {
		o.Annotations = map[string]string{poolselector.Annotation: pool}
	}
	return o
}

// config is coild's configuration for the node.
func (n *node) config() daemon.Config {
	etcd := etcdconfig.Config{
		Endpoints: []string{n.etcdEndpoint},
		Prefix:    n.prefix,
		Timeout:   time.Second,
	}
	if c := n.etcd.Certs; c != nil {
		etcd.TLSCA, etcd.TLSCert, etcd.TLSKey = c.CA, c.ClientCert, c.ClientKey
	}
	return daemon.Config{
		NodeName:          n.name,
		NodeAddresses:     []netip.Addr{nodeIPv4, nodeIPv6},
		Etcd:              etcd,
		SocketPath:        n.socket,
		TableID:           exportTable,
		ProtocolID:        exportProtocol,
		ScanInterval:      n.scanInterval,
		BlockReleaseGrace: n.blockGrace,
		KubeClient:        n.kube,
		HostNS:            n.ns,
		Logger:            slog.New(slog.NewTextHandler(n.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// start runs coild for the node and waits until it is ready.
func (n *node) start() {
	n.t.Helper()
	if n.cancel != nil {
		n.t.Fatal("coild is already running")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := n.config()
	go func() { done <- daemon.Run(ctx, cfg) }()
	running.Add(1)
	n.cancel, n.done = cancel, done
	n.waitReady()
}

func (n *node) waitReady() {
	n.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		select {
		case runErr := <-n.done:
			n.done <- runErr // let stop see it too
			n.t.Fatalf("coild exited before it was ready: %v", runErr)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = n.client.Ready(ctx)
		cancel()
		if err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	n.t.Fatalf("coild did not become ready: %v", err)
}

// stop cancels coild and waits for Run to return; it is a no-op when coild
// is not running.
func (n *node) stop() {
	n.t.Helper()
	if n.cancel == nil {
		return
	}
	if running.Load() == 1 && waitNoCoildGoroutines(0) == "" {
		n.t.Errorf("the goroutine leak check sees no coild goroutine while coild runs: coildFrames is out of date")
	}
	n.cancel()
	select {
	case err := <-n.done:
		if err != nil {
			n.t.Errorf("coild returned %v", err)
		}
	case <-time.After(30 * time.Second):
		n.t.Errorf("coild did not stop within 30s of its context ending")
	}
	n.cancel, n.done = nil, nil
	if running.Add(-1) == 0 {
		if leaked := waitNoCoildGoroutines(5 * time.Second); leaked != "" {
			n.t.Errorf("goroutines of coild still run after Run returned:\n%s", leaked)
		}
	}
}

// running counts the coild instances of the test binary.
var running atomic.Int32

// coildFrames mark goroutines started by coild's own code.
var coildFrames = []string{
	"github.com/coil-project/coil/coild/daemon.",
	"github.com/coil-project/coil/coild/server.",
	"github.com/coil-project/coil/coild/ipam.",
	"github.com/coil-project/coil/coild/egress.",
	"github.com/coil-project/coil/model.",
}

// waitNoCoildGoroutines waits until no goroutine runs coild code and
// returns the stacks of those that still do after timeout.
func waitNoCoildGoroutines(timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for {
		buf := make([]byte, 4<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for g := range strings.SplitSeq(string(buf), "\n\n") {
			if slices.ContainsFunc(coildFrames, func(f string) bool { return strings.Contains(g, f) }) {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// status is GET /status.
func (n *node) status() api.StatusResponse {
	n.t.Helper()
	st, err := n.client.Status(context.Background())
	if err != nil {
		n.t.Fatalf("GET /status: %v", err)
	}
	return st
}

// statusAddresses are the pod addresses /status lists, sorted.
func (n *node) statusAddresses() []netip.Addr {
	n.t.Helper()
	var out []netip.Addr
	for _, v := range n.status().Pods {
		for s := range strings.SplitSeq(v, ",") {
			out = append(out, netip.MustParseAddr(s))
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// statusBlocks are the block prefixes /status lists, sorted.
func (n *node) statusBlocks() []netip.Prefix {
	n.t.Helper()
	var out []netip.Prefix
	for _, blocks := range n.status().AddressBlocks {
		for _, b := range blocks {
			for s := range strings.SplitSeq(b, ",") {
				out = append(out, netip.MustParsePrefix(s))
			}
		}
	}
	sortPrefixes(out)
	return out
}

func sortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
}

// exported lists the routes of coild's protocol in the export table of the
// node, sorted; it fails the test on any that is not a route to lo.
func (n *node) exported() []netip.Prefix {
	n.t.Helper()
	var out []netip.Prefix
	inNS(n.t, n.ns, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
			&netlink.Route{Table: exportTable, Protocol: exportProtocol},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst == nil {
				n.t.Errorf("default route in export table: %v", r)
				continue
			}
			if r.LinkIndex != lo.Attrs().Index {
				n.t.Errorf("exported route %v does not point to lo", r)
			}
			p, ok := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			if !ok {
				return fmt.Errorf("bad route %v", r)
			}
			out = append(out, netip.PrefixFrom(p.Unmap(), ones))
		}
		return nil
	})
	sortPrefixes(out)
	return out
}

// waitExportMatchesStatus waits until the export table holds exactly the
// blocks /status lists (the table is written right after etcd, so this
// takes one scan at most) and returns them.
func (n *node) waitExportMatchesStatus() []netip.Prefix {
	n.t.Helper()
	var blocks, exported []netip.Prefix
	for range 50 {
		blocks, exported = n.statusBlocks(), n.exported()
		if slices.Equal(blocks, exported) {
			return blocks
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.t.Fatalf("export table %d holds %v, coild owns %v", exportTable, exported, blocks)
	return nil
}

// addressRecords returns the address records in etcd, for the node or all.
func (n *node) addressRecords() []model.Address {
	n.t.Helper()
	addrs, err := n.store.ListAddresses(context.Background(), "")
	if err != nil {
		n.t.Fatal(err)
	}
	return addrs
}

// hostVeths lists the Coil host veths in the node.
func (n *node) hostVeths() []string {
	n.t.Helper()
	var names []string
	inNS(n.t, n.ns, func() error {
		all, err := nodenet.ListHostVeths()
		for _, v := range all {
			if nodenet.IsCoilVeth(v) {
				names = append(names, v)
			}
		}
		return err
	})
	sort.Strings(names)
	return names
}

// linkExists reports whether the node has a link of that name.
func (n *node) linkExists(name string) bool {
	n.t.Helper()
	found := false
	inNS(n.t, n.ns, func() error {
		_, err := netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		switch {
		case err == nil:
			found = true
		case errors.As(err, &nf):
		default:
			return err
		}
		return nil
	})
	return found
}

// hostRoutes returns the destinations of the main-table routes of the node
// through link name.
func (n *node) hostRoutes(name string) []netip.Prefix {
	n.t.Helper()
	var out []netip.Prefix
	inNS(n.t, n.ns, func() error {
		link, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		routes, err := netlink.RouteList(link, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			a, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			if a.Is6() && a.IsLinkLocalUnicast() || a.IsMulticast() {
				continue
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), ones))
		}
		return nil
	})
	sortPrefixes(out)
	return out
}

// routesTo returns those of addrs the node's main table still routes.
func (n *node) routesTo(addrs []netip.Addr) []netip.Addr {
	n.t.Helper()
	var left []netip.Addr
	inNS(n.t, n.ns, func() error {
		for _, a := range addrs {
			routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
				&netlink.Route{Dst: hostNet(a), Table: unix.RT_TABLE_MAIN},
				netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
			if err != nil {
				return err
			}
			if len(routes) > 0 {
				left = append(left, a)
			}
		}
		return nil
	})
	return left
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func hostNet(a netip.Addr) *net.IPNet {
	bits := a.BitLen()
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}
}

// pod is a pod sandbox: its network namespace and the CNI identity.
type pod struct {
	namespace, name string
	containerID     string
	ns              ns.NetNS
	// portMappings are passed as the portMappings capability.
	portMappings []portMapping
}

type portMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

// newPod creates the sandbox netns of a pod.
func newPod(t testing.TB, namespace, name string) *pod {
	t.Helper()
	return &pod{
		namespace:   namespace,
		name:        name,
		containerID: fmt.Sprintf("cid-%s-%s-%d", namespace, name, time.Now().UnixNano()),
		ns:          newNetNS(t),
	}
}

// hostVeth is the name of the pod's veth on the node.
func (p *pod) hostVeth() string { return nodenet.HostVethName(p.namespace, p.name) }

func (p *pod) runtimeConf() *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{
		ContainerID: p.containerID,
		NetNS:       p.ns.Path(),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.namespace},
			{"K8S_POD_NAME", p.name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.containerID},
		},
	}
	if len(p.portMappings) > 0 {
		rt.CapabilityArgs = map[string]any{"portMappings": p.portMappings}
	}
	return rt
}

// networkName is the name of the test network.
const networkName = "coil-test"

// conflist returns the network configuration list kubelet would read from
// /etc/cni/net.d: coil, then tuning and portmap chained after it.
func (n *node) conflist() []byte {
	conf := map[string]any{
		"cniVersion": "1.1.0",
		"name":       networkName,
		"plugins": []any{
			map[string]any{"type": "coil", "coild": "unix://" + n.socket},
			map[string]any{"type": "tuning", "sysctl": map[string]string{"net.core.somaxconn": tuningSomaxconn}},
			map[string]any{"type": "portmap", "backend": "nftables", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, err := json.Marshal(conf)
	if err != nil {
		panic(err)
	}
	return b
}

// cni returns libcni's view of the node's network and a runtime handle.
func (n *node) cni() (*libcni.NetworkConfigList, *libcni.CNIConfig) {
	n.t.Helper()
	list, err := libcni.NetworkConfFromBytes(n.conflist())
	if err != nil {
		n.t.Fatal(err)
	}
	return list, libcni.NewCNIConfigWithCacheDir([]string{binDir}, n.cniCache, nil)
}

// tryAdd runs CNI ADD for p inside the node and returns the result.
func (n *node) tryAdd(p *pod) (*current.Result, error) {
	list, cni := n.cni()
	var res types.Result
	err := n.ns.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var err error
		res, err = cni.AddNetworkList(ctx, list, p.runtimeConf())
		return err
	})
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

// add runs CNI ADD and fails the test on error. It returns the pod's
// addresses from the result, IPv4 first.
func (n *node) add(p *pod) []netip.Addr {
	n.t.Helper()
	res, err := n.tryAdd(p)
	if err != nil {
		n.t.Fatalf("ADD %s/%s: %v", p.namespace, p.name, err)
	}
	return resultAddrs(n.t, res)
}

func resultAddrs(t testing.TB, res *current.Result) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, ip := range res.IPs {
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			t.Fatalf("bad address in result: %v", ip)
		}
		ones, bits := ip.Address.Mask.Size()
		if ones != bits {
			t.Errorf("result address %v is not a host address", ip.Address)
		}
		out = append(out, a.Unmap())
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// tryDel runs CNI DEL for p inside the node.
func (n *node) tryDel(p *pod) error {
	list, cni := n.cni()
	return n.ns.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return cni.DelNetworkList(ctx, list, p.runtimeConf())
	})
}

func (n *node) del(p *pod) {
	n.t.Helper()
	if err := n.tryDel(p); err != nil {
		n.t.Fatalf("DEL %s/%s: %v", p.namespace, p.name, err)
	}
}

// check runs CNI CHECK for p inside the node.
func (n *node) check(p *pod) error {
	list, cni := n.cni()
	return n.ns.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return cni.CheckNetworkList(ctx, list, p.runtimeConf())
	})
}

// cniStatus runs CNI STATUS of the node's network inside the node.
func (n *node) cniStatus() error {
	list, cni := n.cni()
	return n.ns.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return cni.GetStatusNetworkList(ctx, list)
	})
}

// podAddrs lists the global addresses on the pod's eth0, sorted.
func podAddrs(t testing.TB, p *pod) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	inNS(t, p.ns, func() error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP)
			if ip = ip.Unmap(); ip.IsGlobalUnicast() {
				out = append(out, ip)
			}
		}
		return nil
	})
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// podDefaultGateways lists the gateways of the pod's default routes.
func podDefaultGateways(t testing.TB, p *pod) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	inNS(t, p.ns, func() error {
		routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			if gw, ok := netip.AddrFromSlice(r.Gw); ok {
				out = append(out, gw.Unmap())
			}
		}
		return nil
	})
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// podSysctl reads a sysctl inside the pod.
func podSysctl(t testing.TB, p *pod, name string) string {
	t.Helper()
	var v []byte
	inNS(t, p.ns, func() error {
		var err error
		v, err = os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/")))
		return err
	})
	return strings.TrimSpace(string(v))
}

// listen opens a TCP listener inside n (see netnstest.Listen).
func listen(t testing.TB, n ns.NetNS, addr netip.Addr, port uint16) netip.AddrPort {
	return netnstest.Listen(t, n, addr, port)
}

// dial connects to target over TCP from inside n.
func dial(n ns.NetNS, target netip.AddrPort) error { return netnstest.Dial(n, target) }

// cniError returns the CNI error in err, failing the test if there is none.
func cniError(t testing.TB, err error) *types.Error {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return e
}

// tcpProxy forwards TCP connections to a target; cut makes the target
// unreachable (open connections are closed, new ones refused at once) until
// restored.
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

// newTCPProxy starts a proxy to target on loopback, stopped when t ends.
func newTCPProxy(t testing.TB, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		ln.Close()
		p.setCut(true)
		p.wg.Wait()
	})
	return p
}

// URL is the proxy's address as an etcd endpoint.
func (p *tcpProxy) URL() string { return "http://" + p.ln.Addr().String() }

func (p *tcpProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		p.wg.Go(func() { pipe(up, c) })
		p.wg.Go(func() { pipe(c, up) })
	}
}

// setCut cuts (true) or restores (false) the path to the target.
func (p *tcpProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}
