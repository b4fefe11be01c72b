package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/coil-project/coil/audit"
	"github.com/coil-project/coil/internal/kubeclient"
	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/model/etcdconfig"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// EnvPrefix prefixes the environment variables that stand in for
// coil-controller's flags: --scan-interval is also read from
// COIL_CONTROLLER_SCAN_INTERVAL (see etcdconfig.ApplyEnv).
const EnvPrefix = "COIL_CONTROLLER"

// Config is the configuration of the coil-controller process, filled from
// its flags by AddFlags. Run turns it into a Controller, a metrics server
// and, with LeaderElect, a LeaderElection.
type Config struct {
	Etcd etcdconfig.Config
	// Kubeconfig is the kubeconfig file; empty uses the in-cluster
	// service account.
	Kubeconfig string
	// MetricsAddr serves /metrics and /healthz; empty disables it.
	MetricsAddr string
	// LeaderElect makes the controller act only while it holds the Lease
	// DefaultLeaseName in LeaderNamespace.
	LeaderElect     bool
	LeaderNamespace string
	// ScanInterval, LeakGrace and MaxReclaimRatio are the Options of the
	// same names.
	ScanInterval    time.Duration
	LeakGrace       time.Duration
	MaxReclaimRatio float64
	// MaxNodeReleaseRatio is Options.MaxNodeReleaseRatio.
	MaxNodeReleaseRatio float64
	// NodeRecheckInterval is Options.NodeRecheckInterval.
	NodeRecheckInterval time.Duration
	// PoolUsageWarning is Options.PoolUsageWarning.
	PoolUsageWarning float64
	// Reclaim releases leaked addresses; false only reports them
	// (Options.ReportOnly).
	Reclaim bool
	// EgressGatewayImage is the image of the gateway pods of egresses
	// that name none (GatewayOptions.Image): the Coil image. Empty: the
	// image of the controller's own container, found through its Pod
	// (environment POD_NAME and POD_NAMESPACE).
	EgressGatewayImage string
	// Logger logs; nil uses slog.Default().
	Logger *slog.Logger
}

// AddFlags registers coil-controller's flags on fs, storing into c. The
// flags' defaults are the defaults of the configuration.
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	c.Etcd.AddFlags(fs)
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster service account")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", ":9386", "address serving /metrics and /healthz; empty disables it")
	fs.BoolVar(&c.LeaderElect, "leader-elect", true, "act only while holding the leader Lease (run 2 replicas)")
	fs.StringVar(&c.LeaderNamespace, "leader-elect-namespace", "kube-system", "namespace of the leader Lease")
	fs.DurationVar(&c.ScanInterval, "scan-interval", DefaultScanInterval, "period of the sweep comparing etcd with nodes and pods")
	fs.DurationVar(&c.LeakGrace, "leak-grace", DefaultLeakGrace, "how long an address must look leaked before it is reclaimed")
	fs.DurationVar(&c.NodeRecheckInterval, "node-recheck-interval", DefaultNodeRecheck,
		"how soon a deleted node still in use (bound pods, live coild) is looked at again")
	fs.BoolVar(&c.Reclaim, "reclaim", true, "release leaked addresses; false only reports them")
	fs.Float64Var(&c.MaxReclaimRatio, "max-reclaim-ratio", DefaultMaxReclaimRatio,
		"reclaim nothing when more than this share of all address records looks leaked")
	fs.Float64Var(&c.PoolUsageWarning, "pool-usage-warning", DefaultPoolUsageWarning,
		"record a warning event and log once when a pool's usage ratio (in use over usable addresses) reaches this")
	fs.Float64Var(&c.MaxNodeReleaseRatio, "max-node-release-ratio", DefaultMaxNodeReleaseRatio,
		"release no node's blocks in a sweep that finds more than this share of the nodes known to etcd missing from the API")
	fs.StringVar(&c.EgressGatewayImage, "egress-gateway-image", "",
		"image of managed egress gateway pods (the Coil image, running "+GatewayCommand+"); empty: this controller's own image, read from its Pod named by $POD_NAME in $POD_NAMESPACE")
}

// Validate checks the configuration before anything starts. Unlike
// Options, whose zero values take defaults, a Config says exactly what
// runs, so out-of-range values are errors.
func (c *Config) Validate() error {
	if err := c.Etcd.Validate(); err != nil {
		return err
	}
	switch {
	case c.ScanInterval <= 0:
		return fmt.Errorf("--scan-interval must be positive")
	case c.LeakGrace < 0:
		return fmt.Errorf("--leak-grace must not be negative")
	case c.NodeRecheckInterval <= 0:
		return fmt.Errorf("--node-recheck-interval must be positive")
	case c.MaxReclaimRatio <= 0 || c.MaxReclaimRatio > 1:
		return fmt.Errorf("--max-reclaim-ratio must be in (0, 1]")
	case c.MaxNodeReleaseRatio <= 0 || c.MaxNodeReleaseRatio > 1:
		return fmt.Errorf("--max-node-release-ratio must be in (0, 1]")
	case c.PoolUsageWarning <= 0 || c.PoolUsageWarning > 1:
		return fmt.Errorf("--pool-usage-warning must be in (0, 1]")
	}
	return nil
}

// Run runs coil-controller until ctx ends: it checks the etcd schema,
// serves metrics, and runs a Controller, under leader election when
// cfg.LeaderElect is set. It returns nil after ctx is done.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	client, err := kubeclient.New(cfg.Kubeconfig, "coil-controller")
	if err != nil {
		return fmt.Errorf("kubernetes client configuration: %w", err)
	}
	etcd, err := cfg.Etcd.NewClient()
	if err != nil {
		return err
	}
	defer etcd.Close()
	store := model.New(etcd, cfg.Etcd.Prefix)
	// Against another cluster's prefix every one of its nodes would look
	// deleted and have its blocks freed: refuse to start, before writing
	// anything.
	if _, err := audit.EnsureCluster(ctx, client, store, 4*cfg.Etcd.Timeout, log); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("refusing to start: %w", err)
	}
	initCtx, cancel := cfg.Etcd.RequestContext(ctx)
	err = store.Init(initCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("check etcd schema: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := NewMetrics(reg)
	// A record that does not decode is skipped by every list, so the sweep
	// goes on; it stays visible here until someone repairs or removes it.
	corrupt := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "coil_controller_corrupt_records_total",
		Help: "Times a list of etcd met a record it could not use and skipped it, by kind.",
	}, []string{"kind"})
	reg.MustRegister(corrupt)
	store.OnCorrupt(func(r model.CorruptRecord) {
		corrupt.WithLabelValues(r.Kind).Inc()
		log.Error("skipped corrupt record in etcd", "kind", r.Kind, "key", r.Key, "error", r.Err)
	})
	recorder, stopEvents := NewEventRecorder(client)
	defer stopEvents()

	if cfg.MetricsAddr != "" {
		srv, err := serveMetrics(cfg.MetricsAddr, reg, log)
		if err != nil {
			return err
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
		}()
	}

	gatewayImage := cfg.EgressGatewayImage
	if gatewayImage == "" {
		if gatewayImage, err = ownImage(ctx, client, os.Getenv("POD_NAMESPACE"), os.Getenv("POD_NAME")); err != nil {
			// Egresses with bring-your-own gateways need no image;
			// managed ones report the missing image when they sync.
			log.Warn("no image for managed egress gateways; set --egress-gateway-image", "err", err)
		}
	}
	gateways := NewGateways(store, client, GatewayOptions{
		Image:    gatewayImage,
		Recorder: recorder,
		Metrics:  metrics,
		Logger:   log,
	})
	ctrl := New(store, client, Options{
		ScanInterval:        cfg.ScanInterval,
		LeakGrace:           cfg.LeakGrace,
		ReportOnly:          !cfg.Reclaim,
		MaxReclaimRatio:     cfg.MaxReclaimRatio,
		MaxNodeReleaseRatio: cfg.MaxNodeReleaseRatio,
		NodeRecheckInterval: cfg.NodeRecheckInterval,
		PoolUsageWarning:    cfg.PoolUsageWarning,
		Recorder:            recorder,
		Metrics:             metrics,
		Logger:              log,
	})
	act := func(ctx context.Context) error { return runAll(ctx, ctrl.Run, gateways.Run) }
	if !cfg.LeaderElect {
		metrics.SetLeader(true)
		return act(ctx)
	}
	le := LeaderElection{
		Client:    client,
		Namespace: cfg.LeaderNamespace,
		OnLeading: metrics.SetLeader,
		Logger:    log,
	}
	return le.Run(ctx, act)
}

// runAll runs every fn until ctx is done or one of them fails, which
// stops the others; it returns once all have returned, with the first
// error.
func runAll(ctx context.Context, fns ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Go(func() {
			if errs[i] = fn(ctx); errs[i] != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// ownImage returns the image of the coil-controller container of the Pod
// namespace/name: the Coil image, whatever registry or tag the manifests
// were given.
func ownImage(ctx context.Context, client kubernetes.Interface, namespace, name string) (string, error) {
	if namespace == "" || name == "" {
		return "", fmt.Errorf("POD_NAMESPACE and POD_NAME are not both set")
	}
	var pod *corev1.Pod
	var last error
	err := wait.ExponentialBackoffWithContext(ctx, wait.Backoff{Duration: 500 * time.Millisecond, Factor: 2, Steps: 5},
		func(ctx context.Context) (bool, error) {
			pod, last = client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
			return last == nil, nil
		})
	if err != nil {
		return "", fmt.Errorf("read own pod %s/%s: %w", namespace, name, errors.Join(last, err))
	}
	cs := pod.Spec.Containers
	for _, c := range cs {
		if c.Name == "coil-controller" {
			return c.Image, nil
		}
	}
	if len(cs) == 1 {
		return cs[0].Image, nil
	}
	return "", fmt.Errorf("pod %s/%s has no container named coil-controller", namespace, name)
}

// serveMetrics starts the HTTP server for /metrics and /healthz. The
// caller owns it and shuts it down; its goroutine ends with it.
func serveMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", "err", err)
		}
	}()
	return srv, nil
}
