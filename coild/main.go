// Command coild is Coil's node daemon: it allocates addresses to the pods of
// its node, exports the node's address blocks as routes, and serves the CNI
// plugin over a REST API bound to the node only.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coil-project/coil/coild/daemon"
	"github.com/coil-project/coil/model/etcdconfig"
	"github.com/spf13/pflag"
)

func main() {
	var cfg daemon.Config
	var nodeAddrs, egressBypass []string
	fs := pflag.NewFlagSet("coild", pflag.ExitOnError)
	fs.StringVar(&cfg.NodeName, "node-name", os.Getenv("COIL_NODE_NAME"), "name of this node (env COIL_NODE_NAME)")
	fs.StringSliceVar(&nodeAddrs, "node-address", nil, "addresses other nodes route this node's blocks through (default: the node's global addresses)")
	cfg.Etcd.AddFlags(fs)
	fs.StringVar(&cfg.HTTPAddr, "http", "127.0.0.1:9383", "loopback address of the REST API; empty disables it")
	fs.StringVar(&cfg.SocketPath, "socket", "/run/coild.sock", "unix socket of the REST API (mode 0600); empty disables it")
	fs.IntVar(&cfg.TableID, "table-id", 119, "routing table to export address blocks to")
	fs.IntVar(&cfg.ProtocolID, "protocol-id", 30, "route protocol id marking Coil's routes")
	fs.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "kubeconfig file (in-cluster configuration when empty)")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "address serving Prometheus metrics (e.g. :9384); empty disables it")
	fs.DurationVar(&cfg.ScanInterval, "scan-interval", time.Minute, "interval of house-keeping: empty blocks, route re-sync")
	fs.DurationVar(&cfg.BlockReleaseGrace, "block-release-grace", 5*time.Minute, "how long a block stays empty before it returns to its pool")
	fs.BoolVar(&cfg.FlatL2, "flat-l2", false, "route other nodes' blocks via their node addresses (all nodes on one L2 segment, no routing daemon)")
	fs.StringSliceVar(&egressBypass, "egress-bypass", nil, "CIDRs egress clients always reach directly besides pool subnets (service and node networks)")
	fs.Parse(os.Args[1:])
	if err := etcdconfig.ApplyEnv(fs, "COILD"); err != nil {
		fail(err)
	}
	for _, s := range nodeAddrs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			fail(fmt.Errorf("--node-address %q: %w", s, err))
		}
		cfg.NodeAddresses = append(cfg.NodeAddresses, a)
	}
	for _, s := range egressBypass {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			fail(fmt.Errorf("--egress-bypass %q: %w", s, err))
		}
		cfg.EgressBypass = append(cfg.EgressBypass, p.Masked())
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := daemon.Run(ctx, cfg); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "coild:", err)
	os.Exit(1)
}
