// Command coil-controller is Coil's cluster controller: it frees the blocks
// of deleted nodes and the addresses leaked by pods that left without a CNI
// DEL. It only reads flags; controller.Run does the work.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/coil-project/coil/coil-controller/controller"
	"github.com/coil-project/coil/model/etcdconfig"
	"github.com/spf13/pflag"
)

// parseFlags reads the command line, then the COIL_CONTROLLER_*
// environment variables for the flags it left out, and validates the
// result.
func parseFlags(args []string) (*controller.Config, error) {
	c := &controller.Config{}
	fs := pflag.NewFlagSet("coil-controller", pflag.ContinueOnError)
	c.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := etcdconfig.ApplyEnv(fs, controller.EnvPrefix); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
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
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = controller.Run(ctx, *cfg)
	stop()
	if err != nil {
		cfg.Logger.Error("coil-controller stopped", "err", err)
		os.Exit(1)
	}
}
