// Package daemon runs coild: it restores the node's state from etcd,
// reconciles the kernel with it, and only then serves the REST API.
// Flags turns coild's command line into the Config that Run takes, so
// that coild's main only wires the two together.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/coild/egress"
	"github.com/coil-project/coil/coild/ipam"
	"github.com/coil-project/coil/coild/poolselector"
	"github.com/coil-project/coil/coild/server"
	"github.com/coil-project/coil/internal/etcdservice"
	"github.com/coil-project/coil/internal/kubeclient"
	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/model/etcdconfig"
	"github.com/coil-project/coil/nodenet"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/cybozu-go/well"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/vishvananda/netlink"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Config is coild's configuration, from flags.
type Config struct {
	NodeName      string
	NodeAddresses []netip.Addr
	Etcd          etcdconfig.Config
	// HTTPAddr must be a loopback address; empty disables TCP.
	HTTPAddr string
	// SocketPath is a unix socket (mode 0600); empty disables it.
	SocketPath string
	TableID    int
	ProtocolID int
	Kubeconfig string
	// KubeQPS and KubeBurst limit the rate of coild's requests to the
	// API server (client-side), like the kubelet's --kube-api-qps and
	// --kube-api-burst. Zero means kubeclient.DefaultQPS and DefaultBurst.
	KubeQPS     float32
	KubeBurst   int
	MetricsAddr string
	// ScanInterval paces house-keeping: empty blocks, route re-sync.
	ScanInterval time.Duration
	// BlockReleaseGrace is how long a block stays empty before it goes
	// back to the pool: pods come and go, and re-acquiring costs more.
	BlockReleaseGrace time.Duration
	// LivenessTTL is the TTL of the lease under which coild keeps its
	// node's liveness key: coil-controller releases the blocks of a
	// deleted node only once the key has expired.
	LivenessTTL time.Duration
	// NodeWait bounds the wait for the Node object's InternalIP when
	// NodeAddresses is empty (findNodeAddresses); zero means
	// DefaultNodeWait.
	NodeWait time.Duration
	// FlatL2 makes coild route every other node's blocks via that node's
	// address (nodes share one L2 segment; no routing daemon needed).
	FlatL2 bool
	// EgressBypass are destinations egress clients always reach on the
	// normal path, besides pool subnets and link-local ranges: the
	// service and node networks.
	EgressBypass []netip.Prefix
	// EgressProbeInterval is the period of the health probes of the
	// egress gateways the node's clients use; zero turns them off.
	// EgressProbeMisses lost probes in a row take a gateway out of the
	// node's choice (docs/egress.md).
	EgressProbeInterval time.Duration
	EgressProbeMisses   int
	// GCMinAge protects allocations younger than this from CNI GC (an ADD
	// may be in flight while the runtime lists its attachments); zero
	// means one minute. Tests shorten it.
	GCMinAge time.Duration
	// LinkRemovalDelay holds back the deletion of a released pod's veth,
	// which runs after DEL answered; tests widen that window with it to
	// see that the address is not handed out meanwhile. Zero in coild.
	LinkRemovalDelay time.Duration
	// KubeClient overrides Kubeconfig (tests pass a fake clientset).
	KubeClient kubernetes.Interface
	// HostNS, when set, is the network namespace all kernel work is done
	// in; tests use it to run coild in-process for a namespace-node. By
	// default the process's own namespace is used.
	HostNS ns.NetNS
	Logger *slog.Logger
}

// Validate checks the configuration before anything starts.
func (c *Config) Validate() error {
	if c.NodeName == "" {
		return errors.New("--node-name (or COIL_NODE_NAME) is required")
	}
	if c.HTTPAddr == "" && c.SocketPath == "" {
		return errors.New("--http and --socket are both empty: the CNI plugin could not reach coild")
	}
	if c.HTTPAddr != "" && !server.IsLoopback(c.HTTPAddr) {
		return fmt.Errorf("--http %q is not a loopback address: coild's API must be reachable only from the node itself", c.HTTPAddr)
	}
	if c.TableID <= 0 || c.TableID >= 253 && c.TableID <= 255 {
		return fmt.Errorf("--table-id %d: choose an unused table (not 0, 253, 254, 255)", c.TableID)
	}
	if c.ProtocolID <= 0 || c.ProtocolID > 255 {
		return fmt.Errorf("--protocol-id %d not in 1..255", c.ProtocolID)
	}
	if c.ScanInterval <= 0 {
		return errors.New("--scan-interval must be positive")
	}
	if c.KubeQPS < 0 || c.KubeBurst < 0 {
		return fmt.Errorf("--kube-api-qps %g, --kube-api-burst %d: must not be negative (0 means the default)", c.KubeQPS, c.KubeBurst)
	}
	if c.EgressProbeInterval < 0 || c.EgressProbeInterval > 0 && c.EgressProbeInterval < 10*time.Millisecond {
		return fmt.Errorf("--egress-probe-interval %s: must be at least 10ms, or 0 to turn probing off", c.EgressProbeInterval)
	}
	if c.EgressProbeInterval > 0 && c.EgressProbeMisses < 1 {
		return fmt.Errorf("--egress-probe-misses %d: must be at least 1", c.EgressProbeMisses)
	}
	if c.LivenessTTL < time.Second {
		return fmt.Errorf("--liveness-ttl %s: must be at least 1s (etcd leases count whole seconds)", c.LivenessTTL)
	}
	return c.Etcd.Validate()
}

type daemon struct {
	cfg      Config
	log      *slog.Logger
	store    *model.Store
	alloc    *ipam.Allocator
	exporter *nodenet.Exporter
	// exportMu serialises the writers of the export table: a Sync from a
	// snapshot of the blocks taken just before a block came or went would
	// undo the observer's Export or Withdraw until the next scan.
	exportMu sync.Mutex
	releases *releaseMetrics
	ready    chan struct{}
	// nodeAddrs are the node record's addresses, found before restore.
	nodeAddrs []netip.Addr
	// hostNS is the node's own network namespace, which no pod's is.
	hostNS nodenet.NetNSID
	links  *podLinks
}

// Run starts coild and blocks until ctx ends or a component fails.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	d := &daemon{
		cfg:      cfg,
		log:      cfg.Logger,
		exporter: &nodenet.Exporter{TableID: cfg.TableID, Protocol: netlink.RouteProtocol(cfg.ProtocolID)},
		ready:    make(chan struct{}),
	}
	kube := cfg.KubeClient
	if kube == nil {
		var err error
		qps, burst := cfg.KubeQPS, cfg.KubeBurst
		if qps == 0 {
			qps = kubeclient.DefaultQPS
		}
		if burst == 0 {
			burst = kubeclient.DefaultBurst
		}
		if kube, err = kubeclient.NewWithLimits(cfg.Kubeconfig, "coild", qps, burst); err != nil {
			return fmt.Errorf("kubernetes client configuration: %w", err)
		}
	}
	// --etcd-endpoints=@NAMESPACE/NAME: etcd's Service, followed.
	cli, stopFollowing, err := etcdservice.Connect(ctx, cfg.Etcd, kube, d.log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer cli.Close()
	defer stopFollowing()
	d.store = model.New(cli, cfg.Etcd.Prefix)
	d.store.SetReleaser(model.Releaser{Component: "coild", Host: cfg.NodeName})
	d.alloc = ipam.New(d.store, cfg.NodeName, exportObserver{d})

	if err := d.checkCluster(ctx, kube); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if err := d.inHostNS(nodenet.EnableForwarding); err != nil {
		return fmt.Errorf("enable forwarding: %w", err)
	}

	// Listen before restoring so that a bad address fails fast, but answer
	// nothing but "not ready" until the state is restored.
	reg := prometheus.NewRegistry()
	// A record coild cannot use is skipped, not fatal; it is counted and
	// logged each time a list meets it, so it stays visible until repaired.
	corrupt := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "coild_corrupt_records_total",
		Help: "Times a list of etcd met a record it could not use and skipped it, by kind.",
	}, []string{"kind"})
	reg.MustRegister(corrupt)
	d.store.OnCorrupt(func(r model.CorruptRecord) {
		corrupt.WithLabelValues(r.Kind).Inc()
		d.log.Error("skipped corrupt record in etcd", "kind", r.Kind, "key", r.Key, "error", r.Err)
	})
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d.releases = newReleaseMetrics(reg)
	factory := informers.NewSharedInformerFactory(kube, 10*time.Minute)
	nsInformer := factory.Core().V1().Namespaces()
	selector := poolselector.New(nsInformer.Lister(), kube)
	egresses := egress.New(egress.Config{
		Node:     cfg.NodeName,
		Kube:     kube,
		Store:    d.store,
		Networks: d.podNetworks,
		Bypass:   cfg.EgressBypass,
		Resync:   cfg.ScanInterval,
		Registry: reg,
		Logger:   d.log,

		ProbeInterval: cfg.EgressProbeInterval,
		ProbeMisses:   cfg.EgressProbeMisses,
		InHostNS:      d.inHostNS,
	})
	hostNS, err := d.hostNSID()
	if err != nil {
		return fmt.Errorf("identify the node's network namespace: %w", err)
	}
	d.hostNS = hostNS
	d.links = newPodLinks(d)
	gcMinAge := cfg.GCMinAge
	if gcMinAge == 0 {
		gcMinAge = time.Minute
	}
	srv := server.New(server.Config{
		Allocator:      d.alloc,
		Selector:       selector,
		Egress:         serverEgress{egresses},
		PodLinks:       d.links,
		NetNS:          podNetNS{host: hostNS},
		RequestTimeout: cfg.Etcd.Timeout * 2,
		GCMinAge:       gcMinAge,
		Ready:          d.isReady,
		Registry:       reg,
		Logger:         d.log,
	})
	listeners, err := d.listen()
	if err != nil {
		return err
	}

	env := well.NewEnvironment(ctx)
	for _, l := range listeners {
		var h http.Handler = srv
		if l.Addr().Network() != "unix" {
			// Any local process reaches the TCP listener; only root
			// reaches the socket.
			h = server.ReadOnly(srv)
		}
		hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		env.Go(func(ctx context.Context) error {
			go func() {
				<-ctx.Done()
				sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				hs.Shutdown(sctx)
			}()
			if err := hs.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve on %s: %w", l.Addr(), err)
			}
			return nil
		})
	}
	if cfg.MetricsAddr != "" {
		ms := &http.Server{Addr: cfg.MetricsAddr, Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 10 * time.Second}
		env.Go(func(ctx context.Context) error {
			go func() { <-ctx.Done(); ms.Close() }()
			if err := ms.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve metrics on %s: %w", cfg.MetricsAddr, err)
			}
			return nil
		})
	}
	env.Go(func(ctx context.Context) error {
		return d.store.WatchPools(ctx, 2*time.Second, func(pools []model.Pool) {
			selector.SetPools(pools)
			egresses.SetPools(pools)
			d.alloc.SetPools(pools)
		})
	})
	env.Go(func(ctx context.Context) error {
		factory.Start(ctx.Done())
		if !cache.WaitForCacheSync(ctx.Done(), nsInformer.Informer().HasSynced) {
			return fmt.Errorf("namespace informer did not sync: %w", context.Cause(ctx))
		}
		addrs, err := d.findNodeAddresses(ctx, kube)
		if err != nil {
			return err
		}
		d.nodeAddrs = addrs
		if err := d.start(ctx); err != nil {
			return err
		}
		close(d.ready)
		d.log.Info("coild ready", "node", cfg.NodeName, "listeners", len(listeners))
		<-ctx.Done()
		factory.Shutdown()
		return nil
	})
	env.Go(d.houseKeeping)
	env.Go(d.links.run)
	env.Go(d.keepAlive)
	env.Go(d.followReleases)
	env.Go(func(ctx context.Context) error {
		// Egress needs the pods' networks, which the restore loads; it
		// runs beside the API and never holds up readiness.
		select {
		case <-ctx.Done():
			return nil
		case <-d.ready:
		}
		return egresses.Run(ctx)
	})
	if cfg.FlatL2 {
		env.Go(d.routePeers)
	}
	env.Stop()
	err = env.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// podNetworks lists the primary attachments of the node's pods, with the
// network namespaces the allocations recorded, for egress.
func (d *daemon) podNetworks() []model.Address {
	var out []model.Address
	for att, addr := range d.alloc.Attachments() {
		if att.Interface == api.DefaultInterface {
			out = append(out, addr)
		}
	}
	return out
}

func (d *daemon) isReady() bool {
	select {
	case <-d.ready:
		return true
	default:
		return false
	}
}

// start restores state and reconciles the kernel, retrying while etcd is
// unreachable: serving before that would hand out addresses in use.
func (d *daemon) start(ctx context.Context) error {
	for {
		err := d.restore(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d.log.Error("restore failed; retrying", "error", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

func (d *daemon) restore(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 4*d.cfg.Etcd.Timeout)
	defer cancel()
	if err := d.store.Init(rctx); err != nil {
		return err
	}
	if err := d.store.PutNode(rctx, model.Node{Name: d.cfg.NodeName, Addresses: d.nodeAddrs}); err != nil {
		return err
	}
	if err := d.alloc.Restore(rctx); err != nil {
		return err
	}
	blocks, addresses := d.alloc.Usage()
	d.log.Info("restored state from etcd", "blocks", blocks, "addresses", addresses)
	return d.inHostNS(func() error { d.reconcileKernel(); return nil })
}

// hostNSID is the node's own network namespace, which no request may name
// as a pod's. Run calls it before any goroutine can enter a pod's
// namespace.
func (d *daemon) hostNSID() (nodenet.NetNSID, error) {
	if d.cfg.HostNS != nil {
		return nodenet.NetNSIDOf(d.cfg.HostNS.Path())
	}
	return nodenet.NetNSIDOf("/proc/thread-self/ns/net")
}

// inHostNS runs kernel work in the node's network namespace. Goroutines of
// the daemon may run on any OS thread, so every netlink call goes through
// here rather than trusting the calling thread's namespace.
func (d *daemon) inHostNS(fn func() error) error {
	if d.cfg.HostNS == nil {
		return fn()
	}
	return d.cfg.HostNS.Do(func(ns.NetNS) error { return fn() })
}

// reconcileKernel makes the export table hold exactly the owned blocks,
// restores pod host routes, and removes host veths of pods that hold no
// address any more. Failures are logged: the next scan tries again.
func (d *daemon) reconcileKernel() {
	if err := d.syncExports(); err != nil {
		d.log.Error("sync export table", "error", err)
	}
	keep := map[string]bool{}
	for _, addr := range d.alloc.Attachments() {
		veth := nodenet.PodHostVethName(addr.Namespace, addr.Pod, addr.Interface)
		keep[veth] = true
		if err := nodenet.EnsureHostRoutes(veth, addr.IPs()); err != nil {
			d.log.Error("restore host routes", "pod", addr.Namespace+"/"+addr.Pod, "error", err)
		}
	}
	veths, err := nodenet.ListHostVeths()
	if err != nil {
		d.log.Error("list host veths", "error", err)
		return
	}
	for _, name := range veths {
		if keep[name] || !nodenet.IsCoilVeth(name) {
			continue
		}
		if err := nodenet.DeleteLink(name); err != nil {
			d.log.Error("delete leftover veth", "link", name, "error", err)
			continue
		}
		d.log.Info("deleted leftover host veth of a pod without address", "link", name)
	}
}

func (d *daemon) houseKeeping(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case <-d.ready:
	}
	t := time.NewTicker(d.cfg.ScanInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		sctx, cancel := context.WithTimeout(ctx, 4*d.cfg.Etcd.Timeout)
		released, err := d.alloc.ReleaseEmptyBlocks(sctx, d.cfg.BlockReleaseGrace)
		cancel()
		for _, b := range released {
			d.log.Info("returned empty block to its pool", "block", b.String(), "pool", b.Pool)
		}
		if err != nil {
			d.log.Error("release empty blocks", "error", err)
		}
		if err := d.inHostNS(d.syncExports); err != nil {
			d.log.Error("sync export table", "error", err)
		}
	}
}

// syncExports makes the export table of the calling thread's netns hold
// exactly the blocks the node owns now.
func (d *daemon) syncExports() error {
	d.exportMu.Lock()
	defer d.exportMu.Unlock()
	var prefixes []netip.Prefix
	for _, blocks := range d.alloc.Blocks() {
		for _, b := range blocks {
			prefixes = append(prefixes, b.Prefixes()...)
		}
	}
	return d.exporter.Sync(prefixes)
}

// routePeers keeps the main table's routes to other nodes' blocks in step
// with etcd: added when a node acquires a block, removed when the block is
// released or the node reclaimed. A change of the cluster's blocks writes
// only the routes that changed; every --scan-interval, as for the export
// table, the routes are compared with a listing of the table, putting
// back what was changed behind coild's back (by hand, or by the kernel,
// which flushes the routes through a link that goes down).
func (d *daemon) routePeers(ctx context.Context) error {
	router := &nodenet.PeerRouter{Protocol: netlink.RouteProtocol(d.cfg.ProtocolID)}
	var mu sync.Mutex // router and routes are the watch's and the timer's
	var routes map[netip.Prefix]netip.Addr
	apply := func(sync func(map[netip.Prefix]netip.Addr) error) {
		if err := d.inHostNS(func() error { return sync(routes) }); err != nil {
			d.log.Error("sync routes to other nodes", "error", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		t := time.NewTicker(d.cfg.ScanInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			mu.Lock()
			if routes != nil {
				apply(router.Resync)
			}
			mu.Unlock()
		}
	})
	err := d.store.WatchTopology(ctx, 200*time.Millisecond, 2*time.Second, func(topo model.Topology) {
		mu.Lock()
		defer mu.Unlock()
		routes = peerRoutes(d.cfg.NodeName, topo)
		apply(router.Sync)
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (d *daemon) listen() ([]net.Listener, error) {
	var ls []net.Listener
	closeAll := func() {
		for _, l := range ls {
			l.Close()
		}
	}
	if d.cfg.HTTPAddr != "" {
		l, err := net.Listen("tcp", d.cfg.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", d.cfg.HTTPAddr, err)
		}
		ls = append(ls, loopbackListener{Listener: l, log: d.log})
	}
	if d.cfg.SocketPath != "" {
		if err := os.MkdirAll(filepath.Dir(d.cfg.SocketPath), 0o755); err != nil {
			closeAll()
			return nil, err
		}
		// A socket left by a killed coild would make Listen fail.
		if err := os.Remove(d.cfg.SocketPath); err != nil && !os.IsNotExist(err) {
			closeAll()
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
		l, err := net.Listen("unix", d.cfg.SocketPath)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("listen on %s: %w", d.cfg.SocketPath, err)
		}
		if err := os.Chmod(d.cfg.SocketPath, 0o600); err != nil {
			l.Close()
			closeAll()
			return nil, fmt.Errorf("restrict socket: %w", err)
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// exportObserver puts the node's blocks into the export table as they come
// and go. A failure is logged and repaired by the next scan's Sync.
type exportObserver struct{ d *daemon }

func (o exportObserver) BlockAcquired(b model.Block) {
	o.d.exportMu.Lock()
	defer o.d.exportMu.Unlock()
	for _, p := range b.Prefixes() {
		if err := o.d.inHostNS(func() error { return o.d.exporter.Export(p) }); err != nil {
			o.d.log.Error("export block route", "block", p.String(), "error", err)
		}
	}
}

func (o exportObserver) BlockReleased(b model.Block) {
	o.d.exportMu.Lock()
	defer o.d.exportMu.Unlock()
	for _, p := range b.Prefixes() {
		if err := o.d.inHostNS(func() error { return o.d.exporter.Withdraw(p) }); err != nil {
			o.d.log.Error("withdraw block route", "block", p.String(), "error", err)
		}
	}
}

// loopbackListener accepts connections from loopback addresses only. A
// pod reaches the node's 127.0.0.1 when route_localnet is on (kube-proxy
// turns it on for NodePorts): its packets then arrive from its own
// address, and are closed here before a byte is read.
type loopbackListener struct {
	net.Listener
	log *slog.Logger
}

// Accept implements net.Listener.
func (l loopbackListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil && ap.Addr().Unmap().IsLoopback() {
			return c, nil
		}
		l.log.Warn("refused a connection to the loopback listener from a non-loopback address", "remote", c.RemoteAddr().String())
		c.Close()
	}
}
