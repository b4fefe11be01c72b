// Command ensure builds what the real-node clusters of mtest run (kubelet,
// kube-scheduler, kube-controller-manager, kubectl, containerd, runc) into
// the cache unless it is there, and prints the paths. `make kube-node`
// runs it before the tests, so that no test binary spends its timeout on
// the first build.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	kubeapitest "github.com/coil-project/coil/internal/testenv/kubeapi"
	kubenodetest "github.com/coil-project/coil/internal/testenv/kubenode"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, name := range []string{"kubelet", "kube-scheduler", "kube-controller-manager", "kubectl"} {
		path, err := kubeapitest.EnsureComponent(ctx, name)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ensure %s: %v\n", name, err)
			os.Exit(1)
		}
		fmt.Println(path)
	}
	dir, err := kubenodetest.EnsureRuntime(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ensure container runtime:", err)
		os.Exit(1)
	}
	fmt.Println(dir)
}
