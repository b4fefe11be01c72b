// Command coil-controller is Coil's cluster controller: it frees the blocks
// of deleted nodes and the addresses leaked by pods that left without a CNI
// DEL. controller.Main reads the flags; controller.Run does the work.
package main

import (
	"os"

	"github.com/coil-project/coil/coil-controller/controller"
)

func main() {
	os.Exit(controller.Main(os.Args[1:]))
}
