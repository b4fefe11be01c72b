// Command coilctl is the operator CLI of Coil: it edits address pools and
// shows which node and pod hold which addresses, directly in etcd.
// See docs/coilctl.md.
package main

import (
	"os"

	"github.com/coil-project/coil/coilctl/cmd"
)

func main() {
	os.Exit(cmd.Main(os.Args[1:]))
}
