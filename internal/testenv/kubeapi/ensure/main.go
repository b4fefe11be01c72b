// Command ensure builds the test kube-apiserver into the cache unless it is
// there, and prints its path. `make kube-apiserver` runs it before the
// tests, so that no test binary spends its timeout on the first build.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	kubeapitest "github.com/coil-project/coil/internal/testenv/kubeapi"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	path, err := kubeapitest.Ensure(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ensure kube-apiserver:", err)
		os.Exit(1)
	}
	fmt.Println(path)
}
