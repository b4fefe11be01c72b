package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/coil-project/coil/model/etcdconfig"
	"github.com/spf13/pflag"
)

// ParseFlags reads the command line, then the COIL_CONTROLLER_*
// environment variables for the flags it left out, and validates the
// result.
func ParseFlags(args []string) (*Config, error) {
	c := &Config{}
	fs := pflag.NewFlagSet("coil-controller", pflag.ContinueOnError)
	c.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := etcdconfig.ApplyEnv(fs, EnvPrefix); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Main runs coil-controller with args (without the program name) until
// SIGTERM or SIGINT and returns the exit code.
func Main(args []string) int {
	cfg, err := ParseFlags(args)
	if errors.Is(err, pflag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "coil-controller:", err)
		return 2
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, *cfg); err != nil {
		cfg.Logger.Error("coil-controller stopped", "err", err)
		return 1
	}
	return 0
}
