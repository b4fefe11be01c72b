package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
)

// ParseFlags registers coild's flags on fs, parses args and the COILD_*
// environment, and returns the configuration, not yet validated.
func ParseFlags(fs *pflag.FlagSet, args []string) (Config, error) {
	var f Flags
	f.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	return f.Config(fs)
}

// Main runs coild with args (without the program name) until SIGTERM or
// SIGINT and returns the exit code.
func Main(args []string) int {
	cfg, err := ParseFlags(pflag.NewFlagSet("coild", pflag.ExitOnError), args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "coild:", err)
		return 1
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "coild:", err)
		return 1
	}
	return 0
}
