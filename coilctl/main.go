// Command coilctl is the operator CLI of Coil: it edits address pools and
// shows which node and pod hold which addresses, directly in etcd.
// See docs/coilctl.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/coil-project/coil/coilctl/cmd"
)

func main() {
	// Ctrl-C cancels the etcd request in flight instead of leaving the
	// command to wait out --etcd-timeout.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmd.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
