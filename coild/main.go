// Command coild is Coil's node daemon: it allocates addresses to the pods of
// its node, exports the node's address blocks as routes, and serves the CNI
// plugin over a REST API bound to the node only. The work is done by
// daemon.Run; daemon.Main reads the flags (daemon.Flags).
package main

import (
	"os"

	"github.com/coil-project/coil/coild/daemon"
)

func main() {
	os.Exit(daemon.Main(os.Args[1:]))
}
