// Command coil-controller is Coil's cluster controller (a Deployment): it
// releases the address blocks of deleted nodes and reclaims addresses
// leaked by pods that went away without a CNI DEL. See
// docs/coil-controller.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coil-project/coil/coil-controller/controller"
	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/model/etcdconfig"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// envPrefix prefixes the environment variables that stand in for flags:
// --scan-interval is also read from COIL_CONTROLLER_SCAN_INTERVAL.
const envPrefix = "COIL_CONTROLLER"

type config struct {
	etcd            etcdconfig.Config
	kubeconfig      string
	metricsAddr     string
	leaderElect     bool
	leaderNamespace string
	scanInterval    time.Duration
	leakGrace       time.Duration
	reclaim         bool
	maxReclaimRatio float64
}

func parseFlags(args []string) (*config, error) {
	c := &config{}
	fs := pflag.NewFlagSet("coil-controller", pflag.ContinueOnError)
	c.etcd.AddFlags(fs)
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster service account")
	fs.StringVar(&c.metricsAddr, "metrics-addr", ":9386", "address serving /metrics and /healthz; empty disables it")
	fs.BoolVar(&c.leaderElect, "leader-elect", true, "act only while holding the leader Lease (run 2 replicas)")
	fs.StringVar(&c.leaderNamespace, "leader-elect-namespace", "kube-system", "namespace of the leader Lease")
	fs.DurationVar(&c.scanInterval, "scan-interval", controller.DefaultScanInterval, "period of the sweep comparing etcd with nodes and pods")
	fs.DurationVar(&c.leakGrace, "leak-grace", controller.DefaultLeakGrace, "how long an address must look leaked before it is reclaimed")
	fs.BoolVar(&c.reclaim, "reclaim", true, "release leaked addresses; false only reports them")
	fs.Float64Var(&c.maxReclaimRatio, "max-reclaim-ratio", controller.DefaultMaxReclaimRatio,
		"reclaim nothing when more than this share of all address records looks leaked")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := etcdconfig.ApplyEnv(fs, envPrefix); err != nil {
		return nil, err
	}
	if err := c.etcd.Validate(); err != nil {
		return nil, err
	}
	switch {
	case c.scanInterval <= 0:
		return nil, fmt.Errorf("--scan-interval must be positive")
	case c.leakGrace < 0:
		return nil, fmt.Errorf("--leak-grace must not be negative")
	case c.maxReclaimRatio <= 0 || c.maxReclaimRatio > 1:
		return nil, fmt.Errorf("--max-reclaim-ratio must be in (0, 1]")
	}
	return c, nil
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if errors.Is(err, pflag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "coil-controller:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, cfg, log)
	stop()
	if err != nil {
		log.Error("coil-controller stopped", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg *config, log *slog.Logger) error {
	restCfg, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		return fmt.Errorf("kubernetes client configuration: %w", err)
	}
	restCfg.UserAgent = "coil-controller"
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	etcd, err := cfg.etcd.NewClient()
	if err != nil {
		return err
	}
	defer etcd.Close()
	store := model.New(etcd, cfg.etcd.Prefix)
	initCtx, cancel := cfg.etcd.RequestContext(ctx)
	err = store.Init(initCtx)
	cancel()
	if err != nil {
		return fmt.Errorf("check etcd schema: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := controller.NewMetrics(reg)
	recorder, stopEvents := controller.NewEventRecorder(client)
	defer stopEvents()

	if cfg.metricsAddr != "" {
		srv, err := serveMetrics(cfg.metricsAddr, reg, log)
		if err != nil {
			return err
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
		}()
	}

	ctrl := controller.New(store, client, controller.Options{
		ScanInterval:    cfg.scanInterval,
		LeakGrace:       cfg.leakGrace,
		ReportOnly:      !cfg.reclaim,
		MaxReclaimRatio: cfg.maxReclaimRatio,
		Recorder:        recorder,
		Metrics:         metrics,
		Logger:          log,
	})
	if !cfg.leaderElect {
		metrics.SetLeader(true)
		return ctrl.Run(ctx)
	}
	le := controller.LeaderElection{
		Client:    client,
		Namespace: cfg.leaderNamespace,
		OnLeading: metrics.SetLeader,
		Logger:    log,
	}
	return le.Run(ctx, ctrl.Run)
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
