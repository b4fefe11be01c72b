package cmd

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// Main runs coil-installer with args (without the program name) on the
// process's standard streams and returns the exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, args, os.Stdout, os.Stderr)
}
