// Command bench measures Coil against the limits beneath it (raw etcd) and
// against the reference CNI plugins, on one machine, and refreshes
// docs/benchmarks.md, which describes what it runs and what it needs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/coil-project/coil/internal/testenv"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	quick      bool
	writeDocs  bool
	docsDir    string
	parts      string
	phase      time.Duration
	clients    []int
	pods       int
	cniPar     int
	scaleSizes []scaleSize
	scalePar   int
	restartPar int
	podPar     int
	gcNodes    int
	blockBits  int
	etcdBin    string
	cniBin     string
	verbose    bool
	docsForced bool
	cpuProfile string
	rounds     int
	cniTrace   bool
	// cniRoutes is how many cluster routes the CNI part puts into the
	// node's main table for its run with them (0: no such run).
	cniRoutes int
	realCoild bool

	etcdCluster    bool
	clusterClients []int
	clusterDelay   time.Duration
	clusterPhase   time.Duration

	startupNodes  []int
	startupPods   int
	startupSample int

	watchNodes   []int
	watchPods    int
	watchChurn   float64
	watchSample  int
	watchWindow  time.Duration
	watchStreams int
}

func parseFlags() *options {
	o := &options{}
	flag.BoolVar(&o.quick, "quick", false, "sanity run with small counts; prints results, writes docs only if -write-docs is given")
	flag.BoolVar(&o.writeDocs, "write-docs", true, "write docs/benchmarks.md and docs/benchmarks-throughput.svg")
	flag.StringVar(&o.docsDir, "docs", "", "directory of the docs to write (default: docs/ of the module root)")
	flag.StringVar(&o.parts, "parts", "alloc,cni,scale,startup,watch", "comma-separated parts to run: alloc, cni, scale, startup, watch")
	flag.DurationVar(&o.phase, "phase", 3*time.Second, "duration of each allocation throughput phase")
	flag.IntVar(&o.rounds, "rounds", 2, "rounds per concurrency level, alternating raw etcd and coild")
	clients := flag.String("clients", "1,2,4,8,16", "concurrency levels of the allocation benchmark")
	flag.IntVar(&o.pods, "pods", 200, "pods (network namespaces) of the CNI benchmark")
	flag.IntVar(&o.cniPar, "cni-parallel", 8, "concurrent CNI commands in the concurrent CNI run")
	flag.IntVar(&o.cniRoutes, "cni-cluster-routes", 5000, "after the CNI benchmark, run coil's sequential ADD and DEL again without and then with this many block routes in the node's main table, as flat-L2 or BGP routing installs for the rest of the cluster (0: skip)")
	flag.BoolVar(&o.cniTrace, "cni-trace", true, "after the CNI benchmark, trace single ADDs and DELs with strace (if installed) and show where the time goes")
	flag.BoolVar(&o.realCoild, "real-coild", true, "after the CNI benchmark, run ADD and DEL with the coild binary and a real kube-apiserver (built once into the cache), pods present in and absent from the API")
	flag.BoolVar(&o.etcdCluster, "etcd-cluster", true, "after the allocation benchmark, run its raw etcd and coild phases against a 3-member etcd cluster (network namespaces, fsync on); off in -quick unless given")
	clusterClients := flag.String("etcd-cluster-clients", "1,4,16", "concurrency levels of the 3-member cluster allocation benchmark")
	flag.DurationVar(&o.clusterPhase, "etcd-cluster-phase", 2*time.Second, "duration of each phase on the 3-member etcd cluster (shorter than -phase: the part's budget is 1.5 minutes)")
	flag.DurationVar(&o.clusterDelay, "etcd-cluster-delay", 0, "latency tc netem adds to every packet an etcd cluster member sends (0: none; ignored without tc)")
	scaleSizes := flag.String("scale-sizes", "1000x110,5000x30", "cluster sizes of the scale benchmark, NODESxPODS each, every one on a fresh etcd")
	flag.IntVar(&o.scalePar, "scale-parallel", 16, "simulated nodes allocating at once")
	flag.IntVar(&o.restartPar, "restart-parallel", 50, "coilds restarting at once in the scale benchmark's rolling restart")
	flag.IntVar(&o.podPar, "pod-parallel", 2, "concurrent allocations within one simulated node")
	flag.IntVar(&o.gcNodes, "gc-nodes", 500, "deleted nodes whose blocks coil-controller reclaims in the scale benchmark (at most half the nodes)")
	flag.IntVar(&o.blockBits, "block-bits", 5, "block size of the benchmark pools in bits (5: 32 addresses, the documented default)")
	startupNodes := flag.String("startup-nodes", "1000,5000", "cluster sizes of the node start-up benchmark")
	flag.IntVar(&o.startupPods, "startup-pods", 110, "pods of every node in the start-up benchmark")
	flag.IntVar(&o.startupSample, "startup-sample", 200, "nodes started, one after the other, per cluster size")
	watchNodes := flag.String("watch-nodes", "1000,5000", "cluster sizes of the topology watch benchmark")
	flag.IntVar(&o.watchPods, "watch-pods", 110, "pods of every node in the topology watch benchmark")
	flag.Float64Var(&o.watchChurn, "watch-churn", 1, "percent of the pods replaced per minute in the topology watch benchmark (as whole nodes replaced)")
	flag.IntVar(&o.watchSample, "watch-sample", 10, "watchers measured one by one per cluster size (fewer above 1,000 nodes: k*1000/nodes, at least 2)")
	flag.IntVar(&o.watchStreams, "watch-streams", 500, "nodes whose topology watches etcd serves at once in the topology watch benchmark (figures scaled to all nodes beyond)")
	flag.DurationVar(&o.watchWindow, "watch-window", 12*time.Second, "duration of each measured window of the topology watch benchmark")
	flag.StringVar(&o.etcdBin, "etcd", "", "etcd binary (default $ETCD_BIN_DIR/etcd, else ~/.cache/coil/etcd-v3.6.16/etcd)")
	flag.StringVar(&o.cniBin, "cni-bin", "", "directory with cnitool, ptp and host-local (default $CNI_BIN_DIR, else ~/.cache/coil/cni-v1.3.1-plugins-v1.9.1-static)")
	flag.BoolVar(&o.verbose, "v", false, "log progress details")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (clients, coild, allocators) to the file")
	flag.Parse()

	flag.Visit(func(f *flag.Flag) {
		if f.Name == "write-docs" {
			o.docsForced = true
		}
	})
	for _, s := range strings.Split(*clients, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err != nil || n < 1 {
			fatalf("-clients: bad level %q", s)
		}
		o.clients = append(o.clients, n)
	}
	for _, s := range strings.Split(*clusterClients, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err != nil || n < 1 {
			fatalf("-etcd-cluster-clients: bad level %q", s)
		}
		o.clusterClients = append(o.clusterClients, n)
	}
	o.scaleSizes = parseScaleSizes(*scaleSizes)
	for _, s := range strings.Split(*startupNodes, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err != nil || n < 1 {
			fatalf("-startup-nodes: bad size %q", s)
		}
		o.startupNodes = append(o.startupNodes, n)
	}
	for _, s := range strings.Split(*watchNodes, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(s), &n); err != nil || n < 1 {
			fatalf("-watch-nodes: bad size %q", s)
		}
		o.watchNodes = append(o.watchNodes, n)
	}
	if o.quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		def := func(name string, apply func()) {
			if !set[name] {
				apply()
			}
		}
		def("phase", func() { o.phase = 300 * time.Millisecond })
		def("rounds", func() { o.rounds = 1 })
		def("etcd-cluster", func() { o.etcdCluster = false })
		def("etcd-cluster-phase", func() { o.clusterPhase = 300 * time.Millisecond })
		def("pods", func() { o.pods = 16 })
		def("cni-parallel", func() { o.cniPar = 4 })
		def("scale-sizes", func() { o.scaleSizes = parseScaleSizes("40x110,100x30") })
		def("gc-nodes", func() { o.gcNodes = 20 })
		def("scale-parallel", func() { o.scalePar = 8 })
		def("startup-nodes", func() { o.startupNodes = []int{100, 500} })
		def("startup-sample", func() { o.startupSample = 20 })
		// Small clusters change rarely at 1%/min: churn faster so the
		// short windows see changes at all.
		def("watch-nodes", func() { o.watchNodes = []int{200, 1000} })
		def("watch-churn", func() { o.watchChurn = 10 })
		def("watch-sample", func() { o.watchSample = 5 })
		def("watch-window", func() { o.watchWindow = 4 * time.Second })
		if !o.docsForced {
			o.writeDocs = false
		}
	}
	return o
}

// scaleSize is one cluster of the scale benchmark.
type scaleSize struct{ nodes, pods int }

func parseScaleSizes(arg string) []scaleSize {
	var sizes []scaleSize
	for _, s := range strings.Split(arg, ",") {
		var z scaleSize
		if _, err := fmt.Sscanf(strings.TrimSpace(s), "%dx%d", &z.nodes, &z.pods); err != nil || z.nodes < 2 || z.pods < 1 {
			fatalf("-scale-sizes: bad size %q (want NODESxPODS)", s)
		}
		sizes = append(sizes, z)
	}
	return sizes
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(2)
}

func main() {
	o := parseFlags()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func (o *options) has(part string) bool {
	for _, p := range strings.Split(o.parts, ",") {
		if strings.TrimSpace(p) == part {
			return true
		}
	}
	return false
}

// run executes the selected parts. Everything started is registered with
// the cleanup stack, which runs whatever happens, interrupts included.
func run(ctx context.Context, o *options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the CNI benchmark creates network namespaces")
	}
	root, err := testenv.ModuleRoot()
	if err != nil {
		return err
	}
	if o.docsDir == "" {
		o.docsDir = filepath.Join(root, "docs")
	}
	if o.etcdBin == "" {
		o.etcdBin = filepath.Join(envOr("ETCD_BIN_DIR", filepath.Join(cacheDir(), "etcd-v3.6.16")), "etcd")
	}
	if o.cniBin == "" {
		o.cniBin = envOr("CNI_BIN_DIR", filepath.Join(cacheDir(), "cni-v1.3.1-plugins-v1.9.1-static"))
	}
	if _, err := os.Stat(o.etcdBin); err != nil {
		return fmt.Errorf("etcd binary %s: %w (run `make deps` or set ETCD_BIN_DIR)", o.etcdBin, err)
	}

	cl := &cleanups{}
	defer func() {
		if cerr := cl.run(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
		}
	}()
	sweepStaleNetns()

	tmp, err := os.MkdirTemp("", "coil-bench-")
	if err != nil {
		return err
	}
	cl.add("remove "+tmp, func() error { return os.RemoveAll(tmp) })

	verbose = o.verbose
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	res := &results{started: time.Now(), opts: o}
	res.machine = machineInfo()
	res.load = startLoad(res.machine.cpus)
	logf("machine: %s; load average %s", res.machine.summary(), res.load.loadAtStart)

	if o.has("alloc") {
		if err := runAllocBench(ctx, o, tmp, cl, res); err != nil {
			return fmt.Errorf("allocation benchmark: %w", err)
		}
		if o.etcdCluster {
			if err := runAllocClusterBench(ctx, o, tmp, cl, res); err != nil {
				return fmt.Errorf("allocation benchmark on a 3-member etcd cluster: %w", err)
			}
		}
	}
	if o.has("cni") {
		if err := runCNIBench(ctx, o, root, tmp, cl, res); err != nil {
			return fmt.Errorf("CNI benchmark: %w", err)
		}
	}
	if o.has("scale") {
		if err := runScaleBench(ctx, o, tmp, cl, res); err != nil {
			return fmt.Errorf("scale benchmark: %w", err)
		}
	}
	if o.has("startup") {
		if err := runStartupBench(ctx, o, tmp, cl, res); err != nil {
			return fmt.Errorf("start-up benchmark: %w", err)
		}
	}
	if o.has("watch") {
		if err := runWatchBench(ctx, o, tmp, cl, res); err != nil {
			return fmt.Errorf("topology watch benchmark: %w", err)
		}
	}
	res.finished = time.Now()
	res.load.finish()
	logf("%s", res.load)
	if res.load.otherShare > 0.1 {
		logf("WARNING: the machine was busy with other work; results are disturbed by it")
	}

	tables := res.tables()
	fmt.Println()
	for _, t := range tables {
		fmt.Print(t.text())
		fmt.Println()
	}
	if o.writeDocs {
		if err := writeDocs(o.docsDir, res, tables); err != nil {
			return err
		}
		fmt.Printf("wrote %s and %s\n", filepath.Join(o.docsDir, docsFile), filepath.Join(o.docsDir, svgFile))
	}
	return nil
}

// cleanups is a stack of undo actions, run last-in first-out.
type cleanups struct {
	fns []namedFn
}

type namedFn struct {
	name string
	fn   func() error
}

func (c *cleanups) add(name string, fn func() error) {
	c.fns = append(c.fns, namedFn{name, fn})
}

func (c *cleanups) run() error {
	var errs []error
	for i := len(c.fns) - 1; i >= 0; i-- {
		if err := c.fns[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", c.fns[i].name, err))
		}
	}
	c.fns = nil
	return errors.Join(errs...)
}

var verbose bool

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func debugf(format string, args ...any) {
	if verbose {
		logf(format, args...)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func cacheDir() string {
	if d := os.Getenv("COIL_CACHE_DIR"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "coil")
}
