// Package holder is coil-egress: the process of the egress gateway pods
// that coil-controller runs (coilctl egress create --replicas). It keeps
// the pod, and so its network namespace, alive until the kubelet stops
// it. It does no networking itself: coild on the pod's node programs the
// tunnel, the NAT and the return routes inside the namespace from outside
// (docs/egress.md), so the pod runs unprivileged.
package holder

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Main runs coil-egress with args (without the program name) and returns
// its exit code: 0 on SIGTERM or SIGINT, 2 when given any argument.
func Main(args []string, stderr io.Writer) int {
	if len(args) > 0 {
		// No flags: anything given is a mistake in the pod spec.
		fmt.Fprintf(stderr, "coil-egress takes no arguments (got %q); it holds an egress gateway pod's network namespace for coild\n", args)
		return 2
	}
	Wait(nil)
	return 0
}

// Wait returns on SIGTERM or SIGINT; ready, if not nil, is called once
// they are handled.
func Wait(ready func()) {
	// As PID 1 of its container it gets only the signals it handles.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	if ready != nil {
		ready()
	}
	<-sigs
}
