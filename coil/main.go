// Command coil is the Coil CNI plugin that kubelet runs as
// /opt/cni/bin/coil. All logic lives in package plugin.
package main

import "github.com/coil-project/coil/coil/plugin"

func main() {
	plugin.Main()
}
