package daemon

import (
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/coil-project/coil/coild/egress"
	"github.com/coil-project/coil/internal/kubeclient"
	"github.com/coil-project/coil/model/etcdconfig"
	"github.com/spf13/pflag"
)

// EnvPrefix prefixes the environment variables that stand in for coild's
// flags: --etcd-endpoints is also read from COILD_ETCD_ENDPOINTS.
const EnvPrefix = "COILD"

// NodeNameEnv is the environment variable --node-name defaults to (the
// DaemonSet fills it from spec.nodeName).
const NodeNameEnv = "COIL_NODE_NAME"

// DefaultLivenessTTL is the default of --liveness-ttl.
const DefaultLivenessTTL = 20 * time.Second

// Flags is coild's command line. AddFlags registers the flags on a flag
// set; once that is parsed, Config completes them into a Config.
type Flags struct {
	cfg Config
	// The address lists stay text until Config parses them.
	nodeAddresses []string
	egressBypass  []string
}

// AddFlags registers coild's flags on fs, storing into f.
func (f *Flags) AddFlags(fs *pflag.FlagSet) {
	c := &f.cfg
	fs.StringVar(&c.NodeName, "node-name", os.Getenv(NodeNameEnv), "name of this node (env "+NodeNameEnv+")")
	fs.StringSliceVar(&f.nodeAddresses, "node-address", nil, "addresses other nodes route this node's blocks through (default: the Node's InternalIP, else the default route's link address; see docs/coild.md)")
	c.Etcd.AddFlags(fs)
	fs.StringVar(&c.HTTPAddr, "http", "127.0.0.1:9383", "loopback address of the REST API; empty disables it")
	fs.StringVar(&c.SocketPath, "socket", "/run/coild.sock", "unix socket of the REST API (mode 0600); empty disables it")
	fs.IntVar(&c.TableID, "table-id", 119, "routing table to export address blocks to")
	fs.IntVar(&c.ProtocolID, "protocol-id", 30, "route protocol id marking Coil's routes")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file (in-cluster configuration when empty)")
	fs.Float32Var(&c.KubeQPS, "kube-api-qps", kubeclient.DefaultQPS, "requests per second coild may send to the API server (client-side limit; the kubelet's default)")
	fs.IntVar(&c.KubeBurst, "kube-api-burst", kubeclient.DefaultBurst, "burst of requests coild may send to the API server above --kube-api-qps")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "", "address serving Prometheus metrics (e.g. :9384); empty disables it")
	fs.DurationVar(&c.ScanInterval, "scan-interval", time.Minute, "interval of house-keeping: empty blocks, route re-sync")
	fs.DurationVar(&c.BlockReleaseGrace, "block-release-grace", 5*time.Minute, "how long a block stays empty before it returns to its pool")
	fs.DurationVar(&c.LivenessTTL, "liveness-ttl", DefaultLivenessTTL, "TTL of the etcd lease of the node's liveness key; coil-controller frees a deleted node's blocks only after it expired")
	fs.BoolVar(&c.FlatL2, "flat-l2", false, "route other nodes' blocks via their node addresses (all nodes on one L2 segment, no routing daemon)")
	fs.StringSliceVar(&f.egressBypass, "egress-bypass", nil, "CIDRs egress clients always reach directly besides pool subnets (service and node networks)")
	fs.DurationVar(&c.EgressProbeInterval, "egress-probe-interval", egress.DefaultProbeInterval, "period of the health probes of the egress gateways this node's clients use; 0 turns probing off")
	fs.IntVar(&c.EgressProbeMisses, "egress-probe-misses", egress.DefaultProbeMisses, "lost probes in a row that take a gateway out of this node's choice (as many good answers bring it back)")
}

// Config returns the configuration once fs, on which AddFlags registered
// f, has been parsed: flags missing from the command line are taken from
// the environment (EnvPrefix, see etcdconfig.ApplyEnv), and the address
// lists are parsed (--egress-bypass prefixes are masked). Run validates
// the rest.
func (f *Flags) Config(fs *pflag.FlagSet) (Config, error) {
	if err := etcdconfig.ApplyEnv(fs, EnvPrefix); err != nil {
		return Config{}, err
	}
	cfg := f.cfg
	for _, s := range f.nodeAddresses {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return Config{}, fmt.Errorf("--node-address %q: %w", s, err)
		}
		cfg.NodeAddresses = append(cfg.NodeAddresses, a)
	}
	for _, s := range f.egressBypass {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return Config{}, fmt.Errorf("--egress-bypass %q: %w", s, err)
		}
		cfg.EgressBypass = append(cfg.EgressBypass, p.Masked())
	}
	return cfg, nil
}
