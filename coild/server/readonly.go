package server

import (
	"fmt"
	"net/http"

	"github.com/coil-project/coil/coild/api"
)

// readOnlyPaths are what a listener any local process can reach may
// serve: probes, status and metrics, nothing that changes state.
var readOnlyPaths = map[string]bool{
	"/healthz":     true,
	api.PathReady:  true,
	api.PathStatus: true,
	"/metrics":     true,
}

// ReadOnly wraps h for the loopback TCP listener. Every process on the node
// (and every hostNetwork pod) can connect to it, so it must not let them
// allocate, release, collect garbage or program egress: only root can open
// the unix socket, and that is where mutating requests belong. Anything
// else is refused with 403 and a reason that says where to go instead.
func ReadOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if (r.Method == http.MethodGet || r.Method == http.MethodHead) && readOnlyPaths[r.URL.Path] {
			h.ServeHTTP(w, r)
			return
		}
		writeError(w, http.StatusForbidden, api.ReasonForbidden,
			fmt.Sprintf("%s %s: coild's TCP listener is read-only (GET /healthz, /readyz, /status, /metrics); use its unix socket (--socket), which only root can open", r.Method, r.URL.Path))
	})
}
