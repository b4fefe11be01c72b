// Command coil-installer prepares a node for Coil (install: CNI plugin,
// configuration list, forwarding) and releases it to workloads once coild
// is ready (untaint: removes the bootstrap taint). It runs in the coild
// DaemonSet; see docs/setup.md.
package main

import (
	"os"

	"github.com/coil-project/coil/coil-installer/cmd"
)

func main() {
	os.Exit(cmd.Main(os.Args[1:]))
}
