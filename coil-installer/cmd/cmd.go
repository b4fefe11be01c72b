// Package cmd is the command line of coil-installer: flag parsing and
// wiring of the installer package. See docs/setup.md.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/coil-project/coil/coil-installer/installer"
	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/internal/kubeclient"
	"github.com/spf13/cobra"
)

// NodeNameEnv is the environment variable that gives the node name when
// --node-name is not set (the DaemonSet fills it from spec.nodeName).
const NodeNameEnv = "COIL_NODE_NAME"

// Run executes the command line args (without the program name) and
// returns the exit code: 0 on success, 1 when the work failed, 2 when the
// command line is wrong.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := New(stderr)
	if args == nil {
		args = []string{} // nil would make cobra read os.Args
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	c, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "Error:", err)
	if errors.As(err, new(workError)) {
		return 1
	}
	fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", c.CommandPath())
	return 2
}

// usageError marks a wrong command line; so does every error cobra
// itself returns (unknown command or flag, bad flag value).
type usageError struct{ error }

// workError marks a failure of the work itself.
type workError struct{ error }

// New returns the root command; logs go to logOut as JSON lines.
func New(logOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "coil-installer",
		Short: "Install Coil on a node and release the node to workloads",
		Long: `coil-installer runs in the coild DaemonSet.

  install   (init container) enable IP forwarding, copy the coil CNI plugin
            into the host's CNI bin directory, write the CNI configuration
            list, move away configurations that would win over it; exits.
  untaint   (sidecar) wait until coild is ready, then remove the bootstrap
            taint from the node; with --keep-running it then waits for
            SIGTERM instead of exiting.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.CompletionOptions.DisableDefaultCmd = true
	log := slog.New(slog.NewJSONHandler(logOut, nil))
	root.AddCommand(newInstall(log), newUntaint(log))
	return root
}

func newInstall(log *slog.Logger) *cobra.Command {
	cfg := installer.InstallConfig{Logger: log}
	var stale string
	var ipv6 bool
	c := &cobra.Command{
		Use:   "install",
		Short: "Install the plugin and its configuration on the node, enable forwarding, and exit",
		Args:  cobra.NoArgs,
		RunE: func(_ *cobra.Command, _ []string) error {
			p, err := installer.ParseStalePolicy(stale)
			if err != nil {
				return usageError{fmt.Errorf("--stale-confs: %w", err)}
			}
			cfg.Stale = p
			cfg.SkipIPv6 = !ipv6
			res, err := installer.Install(cfg)
			if err != nil {
				return workError{err}
			}
			log.Info("install finished", "installed", res.Installed, "unchanged", res.Unchanged,
				"kept_host_plugins", res.Kept, "conflist_written", res.ConflistWritten,
				"backed_up", res.BackedUp, "sysctls", res.Sysctls)
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.CNIBinDir, "cni-bin-dir", installer.DefaultCNIBinDir, "host's CNI bin directory (/opt/cni/bin), as mounted")
	f.StringVar(&cfg.CNIConfDir, "cni-conf-dir", installer.DefaultCNIConfDir, "host's CNI configuration directory (/etc/cni/net.d), as mounted")
	f.StringVar(&cfg.SourceBin, "source-bin", installer.DefaultSourceBin, "coil plugin binary to install as <cni-bin-dir>/coil (always replaced when different)")
	f.StringVar(&cfg.PluginsDir, "plugins-dir", installer.DefaultPluginsDir, "directory of further plugins installed only where the host has none of that name; empty: none")
	f.StringVar(&cfg.ConflistTemplate, "conflist-template", "/etc/coil/cni/conflist.tmpl", "text/template of the CNI configuration list ({{.CoildEndpoint}}, {{.NodeName}})")
	f.StringVar(&cfg.ConflistName, "conflist-name", installer.DefaultConflistName, "file name of the configuration list in <cni-conf-dir>")
	f.StringVar(&cfg.CoildEndpoint, "coild-endpoint", installer.DefaultCoildEndpoint, "coild endpoint written into the configuration list (.CoildEndpoint)")
	f.StringVar(&cfg.NodeName, "node-name", os.Getenv(NodeNameEnv), "node name for the template (.NodeName; env "+NodeNameEnv+")")
	f.StringVar(&stale, "stale-confs", string(installer.StaleEarlier), "other CNI configurations to move into the backup directory: earlier (those sorting before ours, which would win), all, or keep")
	f.StringVar(&cfg.BackupDir, "backup-dir", "", "where moved configurations go (default <cni-conf-dir>/"+installer.DefaultBackupDirName+")")
	f.StringVar(&cfg.ProcSys, "proc-sys", installer.DefaultProcSys, "sysctl directory of the node's network namespace")
	f.BoolVar(&ipv6, "ipv6-forwarding", true, "also enable IPv6 forwarding (skipped when the kernel has IPv6 disabled)")
	return c
}

func newUntaint(log *slog.Logger) *cobra.Command {
	var (
		cfg           installer.UntaintConfig
		endpoint      string
		kubeconfig    string
		timeout       time.Duration
		keepRunning   bool
		probeDeadline time.Duration
	)
	c := &cobra.Command{
		Use:   "untaint",
		Short: "Wait until coild is ready, then remove the bootstrap taint from the node",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if cfg.NodeName == "" {
				return usageError{fmt.Errorf("no node name: give --node-name or set %s", NodeNameEnv)}
			}
			coild, err := api.NewClient(endpoint, api.WithTimeout(probeDeadline))
			if err != nil {
				return usageError{fmt.Errorf("--coild-endpoint: %w", err)}
			}
			kube, err := kubeclient.New(kubeconfig, "coil-installer")
			if err != nil {
				return workError{fmt.Errorf("kubernetes client configuration: %w", err)}
			}
			cfg.Coild, cfg.Kube, cfg.Logger = coild, kube, log

			ctx := c.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			if err := installer.Untaint(ctx, cfg); err != nil {
				return workError{err}
			}
			if keepRunning {
				log.Info("done; waiting to be stopped")
				<-c.Context().Done()
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.NodeName, "node-name", os.Getenv(NodeNameEnv), "node to untaint (env "+NodeNameEnv+")")
	f.StringVar(&cfg.TaintKey, "taint-key", installer.BootstrapTaint, "key of the taint to remove")
	f.StringVar(&endpoint, "coild-endpoint", installer.DefaultCoildEndpoint, "coild endpoint asked for /readyz: unix:///path or http://127.0.0.1:port")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (in-cluster configuration when empty)")
	f.DurationVar(&cfg.PollInterval, "poll-interval", installer.DefaultPollInterval, "pause between readiness probes and API retries")
	f.DurationVar(&probeDeadline, "probe-timeout", 5*time.Second, "time limit of one readiness probe")
	f.DurationVar(&timeout, "timeout", 0, "give up after this long (0: wait as long as it takes)")
	f.BoolVar(&keepRunning, "keep-running", false, "after removing the taint, keep running until terminated (for a sidecar container, which must not exit)")
	return c
}
