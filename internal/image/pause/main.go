// Command pause is the process of a pod's sandbox container: it holds the
// pod's namespaces open, does nothing else, and exits 0 on SIGTERM or
// SIGINT. As PID 1 of a shared PID namespace it reaps the orphans that
// get reparented to it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// PID 1 gets only the signals it handles, so these must be handled.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Signals coalesce: one SIGCHLD may stand for many exits.
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
