package cmd

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// Main runs coilctl with args (without the program name) on the process's
// standard streams and returns the exit code.
func Main(args []string) int {
	// Ctrl-C cancels the etcd request in flight instead of leaving the
	// command to wait out --etcd-timeout.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, args, os.Stdout, os.Stderr)
}
