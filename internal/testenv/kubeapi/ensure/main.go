// Command ensure builds Kubernetes programs into the cache unless they are
// there, and prints their paths: `ensure` alone builds the test
// kube-apiserver, `ensure kubelet kubectl ...` the named components, and
// `ensure all` every one the suite uses. `make kube-apiserver` and `make
// kube-node` run it before the tests, so that no test binary spends its
// timeout on the first build.
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
	names := os.Args[1:]
	switch {
	case len(names) == 0:
		names = []string{"kube-apiserver"}
	case len(names) == 1 && names[0] == "all":
		names = kubeapitest.Components
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, name := range names {
		path, err := kubeapitest.EnsureComponent(ctx, name)
		if err != nil {
			fmt.Fprintf(os.Stderr, "ensure %s: %v\n", name, err)
			os.Exit(1)
		}
		fmt.Println(path)
	}
}
