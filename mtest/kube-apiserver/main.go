// Command kube-apiserver is a stock Kubernetes API server at a pinned
// version, in a module of its own so that k8s.io/kubernetes never enters
// Coil's root module. Tests get it through internal/testenv/kubeapi.
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
