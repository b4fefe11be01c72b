package nodetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/coil-project/coil/coild/egress"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/coild/daemon"
	"github.com/coil-project/coil/coild/poolselector"
	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/model/etcdconfig"
	"github.com/coil-project/coil/nodenet"
)

// Addresses every node holds on its lo: what pods reach as "the host".
var (
	IPv4 = netip.MustParseAddr("10.200.0.1")
	IPv6 = netip.MustParseAddr("fd00:200::1")
)

// Export table and protocol coild runs with on a node (coild's defaults).
const (
	ExportTable    = 119
	ExportProtocol = 30
)

// ClusterUID is the UID of the kube-system namespace of every node's fake
// API server: the cluster identity coild stamps into etcd.
const ClusterUID types.UID = "00000000-0000-4000-8000-00000000c011"

// TuningSomaxconn is what the chained tuning plugin sets in every pod; a
// pod holding it proves the chain ran past coil.
const TuningSomaxconn = "1234"

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

// Node is a network namespace playing a Kubernetes node, with coild.
type Node struct {
	// Name is the node name coild runs as, derived from the test's name.
	Name string
	// NS is the node's network namespace.
	NS ns.NetNS
	// Etcd is the server the node stores into.
	Etcd *etcdtest.Server
	// Prefix is the node's etcd key prefix, unique to the test.
	Prefix string
	// Store and EtcdClient reach etcd directly, never through
	// Options.EtcdEndpoint.
	Store      *model.Store
	EtcdClient *clientv3.Client
	// Kube is the fake API server coild watches.
	Kube *fake.Clientset
	// Socket is coild's unix socket and Client talks to it.
	Socket string
	Client *api.Client
	// HTTPAddr is coild's TCP listener, if Options asked for one.
	HTTPAddr string
	// PluginEndpoint is the "coild" of the plugin in Conflist; coild's
	// socket unless a test changes it.
	PluginEndpoint string

	t   *testing.T
	env *Env
	// etcdEndpoint is what coild dials.
	etcdEndpoint             string
	log                      *logBuffer
	blockGrace, scanInterval time.Duration
	gcMinAge                 time.Duration
	linkDelay                time.Duration
	// cniCache is libcni's cache directory (/var/lib/cni on a node).
	cniCache string
	// nodeAddresses is coild's --node-address (nil: coild finds them).
	nodeAddresses []netip.Addr

	cancel context.CancelFunc
	done   chan error
}

// Options tune NewNode.
type Options struct {
	// Etcd defaults to the Env's server.
	Etcd *etcdtest.Server
	// EtcdEndpoint, if set, is where coild reaches etcd (a proxy); the
	// test itself always talks to etcd directly.
	EtcdEndpoint string
	// Pools are created before coild starts.
	Pools []model.Pool
	// Namespaces exist in the fake API server; "default" always does.
	Namespaces []*corev1.Namespace
	// BlockGrace is coild's BlockReleaseGrace; default one hour, that is
	// never within a test.
	BlockGrace time.Duration
	// ScanInterval is coild's ScanInterval; default 200ms.
	ScanInterval time.Duration
	// HTTPAddr, if set, is coild's loopback TCP listener (--http).
	HTTPAddr string
	// FindNodeAddress starts coild without --node-address, so that it
	// finds the node's address itself (Node object, default route). By
	// default coild is given the node's lo addresses IPv4 and IPv6.
	FindNodeAddress bool
	// NodeInternalIPs, if set, makes the fake API server hold the Node
	// object, with these InternalIP addresses, before coild starts.
	NodeInternalIPs []netip.Addr
	// Prepare, if set, runs in the node's network namespace before coild
	// starts (links and routes a test wants the node to have).
	Prepare func() error
	// GCMinAge is coild's GCMinAge; default coild's (one minute).
	GCMinAge time.Duration
	// EndpointSlices exist in the fake API server before coild starts
	// (an etcd Service for EtcdEndpoint "@NAMESPACE/NAME").
	EndpointSlices []*discoveryv1.EndpointSlice
	// LinkRemovalDelay is coild's LinkRemovalDelay.
	LinkRemovalDelay time.Duration
}

// NewNode creates a node namespace with its addresses on lo and fresh etcd
// data under a prefix of the test's own, and starts coild for it.
// Everything is torn down when the test ends; coild's log is printed if the
// test failed.
func (e *Env) NewNode(t *testing.T, opts Options) *Node {
	t.Helper()
	if opts.Etcd == nil {
		opts.Etcd = e.Etcd
	}
	if opts.BlockGrace == 0 {
		opts.BlockGrace = time.Hour
	}
	if opts.EtcdEndpoint == "" {
		opts.EtcdEndpoint = opts.Etcd.Endpoint
	}
	if opts.ScanInterval == 0 {
		opts.ScanInterval = 200 * time.Millisecond
	}
	n := &Node{
		t:            t,
		env:          e,
		Name:         "node-" + strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())),
		NS:           netnstest.New(t),
		Etcd:         opts.Etcd,
		etcdEndpoint: opts.EtcdEndpoint,
		Prefix:       etcdtest.Prefix(t),
		Socket:       filepath.Join(t.TempDir(), "coild.sock"),
		HTTPAddr:     opts.HTTPAddr,
		log:          &logBuffer{},
		blockGrace:   opts.BlockGrace,
		scanInterval: opts.ScanInterval,
		gcMinAge:     opts.GCMinAge,
		linkDelay:    opts.LinkRemovalDelay,
		cniCache:     t.TempDir(),
	}
	if !opts.FindNodeAddress {
		n.nodeAddresses = []netip.Addr{IPv4, IPv6}
	}
	netnstest.Do(t, n.NS, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, a := range []netip.Addr{IPv4, IPv6} {
			addr := &netlink.Addr{IPNet: HostNet(a)}
			if a.Is6() {
				addr.Flags = unix.IFA_F_NODAD
			}
			if err := netlink.AddrAdd(lo, addr); err != nil {
				return fmt.Errorf("add %s to lo: %w", a, err)
			}
		}
		return nil
	})
	if opts.Prepare != nil {
		netnstest.Do(t, n.NS, opts.Prepare)
	}

	n.EtcdClient = opts.Etcd.Client(t)
	n.Store = model.New(n.EtcdClient, n.Prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.Store.Init(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range opts.Pools {
		if err := n.Store.CreatePool(ctx, p); err != nil {
			t.Fatalf("create pool %s: %v", p.Name, err)
		}
	}

	n.Kube = fake.NewClientset()
	// kube-system carries the cluster's identity, which coild stamps into
	// etcd at start; the fake API server assigns no UIDs itself.
	kubeSystem := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system", UID: ClusterUID}}
	for _, o := range append([]*corev1.Namespace{Namespace("default", ""), kubeSystem}, opts.Namespaces...) {
		if _, err := n.Kube.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, es := range opts.EndpointSlices {
		if _, err := n.Kube.DiscoveryV1().EndpointSlices(es.Namespace).Create(ctx, es, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if len(opts.NodeInternalIPs) > 0 {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}
		for _, a := range opts.NodeInternalIPs {
			node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a.String()})
		}
		if _, err := n.Kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	client, err := api.NewClient("unix://"+n.Socket, api.WithTimeout(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n.Client = client
	n.PluginEndpoint = "unix://" + n.Socket

	t.Cleanup(func() {
		n.Stop()
		if t.Failed() {
			t.Logf("coild log of %s:\n%s", n.Name, n.log.String())
		}
	})
	n.Start()
	return n
}

// Namespace returns a Kubernetes namespace, annotated with a pool if pool
// is not empty.
func Namespace(name, pool string) *corev1.Namespace {
	o := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if pool != "" {
		o.Annotations = map[string]string{poolselector.Annotation: pool}
	}
	return o
}

// Config is coild's configuration for the node.
func (n *Node) Config() daemon.Config {
	etcd := etcdconfig.Config{
		Endpoints: []string{n.etcdEndpoint},
		Prefix:    n.Prefix,
		Timeout:   time.Second,
	}
	if c := n.Etcd.Certs; c != nil {
		etcd.TLSCA, etcd.TLSCert, etcd.TLSKey = c.CA, c.ClientCert, c.ClientKey
	}
	return daemon.Config{
		NodeName:          n.Name,
		NodeAddresses:     n.nodeAddresses,
		Etcd:              etcd,
		SocketPath:        n.Socket,
		HTTPAddr:          n.HTTPAddr,
		TableID:           ExportTable,
		ProtocolID:        ExportProtocol,
		ScanInterval:      n.scanInterval,
		BlockReleaseGrace: n.blockGrace,
		LivenessTTL:       daemon.DefaultLivenessTTL,
		NodeWait:          time.Second,
		GCMinAge:          n.gcMinAge,
		LinkRemovalDelay:  n.linkDelay,
		KubeClient:        n.Kube,
		// As deployed: the egress tests see the probes at work.
		EgressProbeInterval: egress.DefaultProbeInterval,
		EgressProbeMisses:   egress.DefaultProbeMisses,
		HostNS:              n.NS,
		Logger:              slog.New(slog.NewTextHandler(n.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// Start runs coild for the node and waits until it is ready. NewNode
// calls it; tests call it again after Stop to restart coild.
func (n *Node) Start() {
	n.t.Helper()
	if n.cancel != nil {
		n.t.Fatal("coild is already running")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := n.Config()
	go func() { done <- daemon.Run(ctx, cfg) }()
	running.Add(1)
	n.cancel, n.done = cancel, done
	n.waitReady()
}

func (n *Node) waitReady() {
	n.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		select {
		case runErr := <-n.done:
			n.done <- runErr // let Stop see it too
			n.t.Fatalf("coild exited before it was ready: %v", runErr)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = n.Client.Ready(ctx)
		cancel()
		if err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	n.t.Fatalf("coild did not become ready: %v", err)
}

// Stop cancels coild and waits for Run to return; it is a no-op when
// coild is not running. When the last coild of the test binary stops, no
// goroutine of coild's packages may be left.
func (n *Node) Stop() {
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

// running counts the coild instances of the test binary: goroutines can
// only be checked for leaks when none runs.
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

// Status is GET /status.
func (n *Node) Status() api.StatusResponse {
	n.t.Helper()
	st, err := n.Client.Status(context.Background())
	if err != nil {
		n.t.Fatalf("GET /status: %v", err)
	}
	return st
}

// StatusAddresses are the pod addresses /status lists, sorted.
func (n *Node) StatusAddresses() []netip.Addr {
	n.t.Helper()
	var out []netip.Addr
	for _, v := range n.Status().Pods {
		for s := range strings.SplitSeq(v, ",") {
			out = append(out, netip.MustParseAddr(s))
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// StatusBlocks are the block prefixes /status lists, sorted.
func (n *Node) StatusBlocks() []netip.Prefix {
	n.t.Helper()
	var out []netip.Prefix
	for _, blocks := range n.Status().AddressBlocks {
		for _, b := range blocks {
			for s := range strings.SplitSeq(b, ",") {
				out = append(out, netip.MustParsePrefix(s))
			}
		}
	}
	SortPrefixes(out)
	return out
}

// SortPrefixes sorts by address, then by length.
func SortPrefixes(ps []netip.Prefix) {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
}

// Exported lists the routes of coild's protocol in the export table of the
// node, sorted; it fails the test on any that is not a route to lo.
func (n *Node) Exported() []netip.Prefix {
	n.t.Helper()
	var out []netip.Prefix
	netnstest.Do(n.t, n.NS, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
			&netlink.Route{Table: ExportTable, Protocol: ExportProtocol},
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
	SortPrefixes(out)
	return out
}

// WaitExportMatchesStatus waits until the export table holds exactly the
// blocks /status lists (the table is written right after etcd, so this
// takes one scan at most) and returns them.
func (n *Node) WaitExportMatchesStatus() []netip.Prefix {
	n.t.Helper()
	var blocks, exported []netip.Prefix
	for range 50 {
		blocks, exported = n.StatusBlocks(), n.Exported()
		if slices.Equal(blocks, exported) {
			return blocks
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.t.Fatalf("export table %d holds %v, coild owns %v", ExportTable, exported, blocks)
	return nil
}

// AddressRecords returns all address records in the node's etcd prefix.
func (n *Node) AddressRecords() []model.Address {
	n.t.Helper()
	addrs, err := n.Store.ListAddresses(context.Background(), "")
	if err != nil {
		n.t.Fatal(err)
	}
	return addrs
}

// HostVeths lists the Coil host veths in the node, sorted.
func (n *Node) HostVeths() []string {
	n.t.Helper()
	var names []string
	netnstest.Do(n.t, n.NS, func() error {
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

// LinkExists reports whether the node has a link of that name.
func (n *Node) LinkExists(name string) bool {
	n.t.Helper()
	found := false
	netnstest.Do(n.t, n.NS, func() error {
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

// HostRoutes returns the destinations of the main-table routes of the node
// through link name, without link-local and multicast ones, sorted.
func (n *Node) HostRoutes(name string) []netip.Prefix {
	n.t.Helper()
	var out []netip.Prefix
	netnstest.Do(n.t, n.NS, func() error {
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
	SortPrefixes(out)
	return out
}

// RoutesTo returns those of addrs the node's main table still routes.
func (n *Node) RoutesTo(addrs []netip.Addr) []netip.Addr {
	n.t.Helper()
	var left []netip.Addr
	netnstest.Do(n.t, n.NS, func() error {
		for _, a := range addrs {
			routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
				&netlink.Route{Dst: HostNet(a), Table: unix.RT_TABLE_MAIN},
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

// Metrics returns coild's /metrics, read over its socket.
func (n *Node) Metrics() string {
	n.t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", n.Socket)
	}}}
	resp, err := hc.Get("http://coild/metrics")
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// PrefixNet converts p for netlink.
func PrefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// HostNet is the host prefix (/32, /128) of a, for netlink.
func HostNet(a netip.Addr) *net.IPNet {
	bits := a.BitLen()
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}
}

// NodeRecord is the node's record in etcd: the addresses other nodes
// route its blocks through.
func (n *Node) NodeRecord() model.Node {
	n.t.Helper()
	rec, err := n.Store.GetNode(context.Background(), n.Name)
	if err != nil {
		n.t.Fatal(err)
	}
	return rec
}

// Log is what coild has logged so far.
func (n *Node) Log() string { return n.log.String() }
