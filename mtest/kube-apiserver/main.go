// Command kube-apiserver is a stock Kubernetes API server built from the
// k8s.io/kubernetes module at a pinned version. It lives in its own module so
// that the heavy k8s.io/kubernetes dependency tree never enters Coil's root
// module; tests obtain the binary through internal/testenv/kubeapi, which
// builds and caches it.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	// Registers the JSON log format so --logging-format=json works as upstream.
	_ "k8s.io/component-base/logs/json/register"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
