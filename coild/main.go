// Command coild is Coil's node daemon: it allocates addresses to the pods of
// its node, exports the node's address blocks as routes, and serves the CNI
// plugin over a REST API bound to the node only. The work is done by
// daemon.Run; this file only reads the flags (daemon.Flags).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/coil-project/coil/coild/daemon"
	"github.com/spf13/pflag"
)

// parseFlags registers coild's flags on fs, parses args and the COILD_*
// environment, and returns the configuration, not yet validated.
func parseFlags(fs *pflag.FlagSet, args []string) (daemon.Config, error) {
	var f daemon.Flags
	f.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return daemon.Config{}, err
	}
	return f.Config(fs)
}

func main() {
	cfg, err := parseFlags(pflag.NewFlagSet("coild", pflag.ExitOnError), os.Args[1:])
	if err != nil {
		fail(err)
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
