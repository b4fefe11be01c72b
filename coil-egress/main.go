// Command coil-egress is the process of the egress gateway pods that
// coil-controller runs (coilctl egress create --replicas): it keeps the
// pod, and so its network namespace, alive until the kubelet stops it.
// It does no networking itself: coild on the pod's node programs the
// tunnel, the NAT and the return routes inside the namespace from outside
// (docs/egress.md), so the pod runs unprivileged. It exits 0 on SIGTERM or
// SIGINT.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 {
		// No flags: anything given is a mistake in the pod spec.
		fmt.Fprintf(os.Stderr, "coil-egress takes no arguments (got %q); it holds an egress gateway pod's network namespace for coild\n", os.Args[1:])
		os.Exit(2)
	}
	wait(nil)
}

// wait returns on SIGTERM or SIGINT; ready, if not nil, is called once
// they are handled.
func wait(ready func()) {
	// As PID 1 of its container it gets only the signals it handles.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if ready != nil {
		ready()
	}
	<-sigs
}
