// Command hypercoil is every Coil command in one executable (coil, coild,
// coilctl, coil-controller, coil-installer, coil-egress), chosen by the
// name it is called with or its first argument. The image carries it once
// with a link per command; see package dispatch.
package main

import (
	"os"

	"github.com/coil-project/coil/hypercoil/dispatch"
)

func main() {
	os.Exit(dispatch.Run(os.Args, os.Stderr))
}
