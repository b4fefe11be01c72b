// Command coil-egress is the process of the egress gateway pods that
// coil-controller runs: it holds the pod's network namespace until the
// kubelet stops it. All logic lives in package holder.
package main

import (
	"os"

	"github.com/coil-project/coil/coil-egress/holder"
)

func main() {
	os.Exit(holder.Main(os.Args[1:], os.Stderr))
}
