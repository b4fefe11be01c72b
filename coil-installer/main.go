// Command coil-installer prepares a node for Coil (install: CNI plugin,
// configuration list, forwarding) and releases it to workloads once coild
// is ready (untaint: removes the bootstrap taint). It runs in the coild
// DaemonSet; see docs/setup.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/coil-project/coil/coil-installer/cmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmd.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
