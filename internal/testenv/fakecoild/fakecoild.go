// Package fakecoild is an in-memory stand-in for coild's REST API, so that
// the plugin and the API client can be tested without etcd or netlink. It
// checks requests the way coild does and records them for assertions; the
// behaviour of real allocation is left to the coild/daemon tests.
package fakecoild

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/coil-project/coil/coild/api"
)

// Coild serves the coild protocol from a map of held allocations. Set its
// exported fields before the first request, or between requests of one
// goroutine; read what it recorded through its methods, which lock.
type Coild struct {
	// Addrs are the addresses every new allocation gets, the first being
	// the one AllocResponse.Address repeats.
	Addrs []string
	// NotReady makes GET /readyz answer 503 Unavailable.
	NotReady bool
	// Fail, when set, is the answer to every request: coild failing as a
	// whole (etcd down, an internal error).
	Fail *api.ErrorResponse
	// FailAlloc, when set, is the answer to POST /ip.
	FailAlloc *api.ErrorResponse
	// FailEgress, when set, is the answer to POST /egress, which is still
	// recorded.
	FailEgress *api.ErrorResponse
	// SkipEgress is what new allocations answer as AllocResponse.SkipEgress.
	SkipEgress bool
	// Egress are the routes a successful POST /egress returns.
	Egress []api.EgressRoute
	// Status is the answer to GET /status; its Status field is set to 200.
	Status api.StatusResponse
	// GCReleased is what POST /gc reports as released.
	GCReleased int

	mu sync.Mutex
	// held maps "<ns>/<pod>/<cid>/<if>" to the allocated addresses.
	held       map[string][]string
	requests   []string
	lastAlloc  *api.AllocRequest
	lastEgress *api.EgressRequest
	lastGC     *api.GCRequest
}

// New returns a ready Coild that hands out addrs.
func New(addrs ...string) *Coild {
	return &Coild{Addrs: addrs, held: map[string][]string{}}
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func badRequest(w http.ResponseWriter, msg string) {
	reply(w, http.StatusBadRequest, api.ErrorResponse{Status: http.StatusBadRequest, Error: msg, Reason: api.ReasonBadRequest})
}

// ServeHTTP answers one request of the coild protocol.
func (f *Coild) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	if f.Fail != nil {
		reply(w, f.Fail.Status, f.Fail)
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == api.PathReady:
		if f.NotReady {
			reply(w, http.StatusServiceUnavailable, api.ErrorResponse{Status: http.StatusServiceUnavailable, Error: "restoring state from etcd", Reason: api.ReasonUnavailable})
			return
		}
		reply(w, http.StatusOK, struct{}{})
	case r.Method == http.MethodGet && r.URL.Path == api.PathStatus:
		st := f.Status
		st.Status = http.StatusOK
		reply(w, http.StatusOK, st)
	case r.Method == http.MethodPost && r.URL.Path == api.PathIP:
		if f.FailAlloc != nil {
			reply(w, f.FailAlloc.Status, f.FailAlloc)
			return
		}
		var req api.AllocRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, api.MaxRequestBytes)).Decode(&req); err != nil || req.Validate() != nil {
			badRequest(w, "bad request")
			return
		}
		f.lastAlloc = &req
		f.held[holdKey(req.PodNamespace, req.PodName, req.ContainerID, req.Attachment().Interface)] = f.Addrs
		reply(w, http.StatusOK, api.AllocResponse{Status: http.StatusOK, Address: f.Addrs[0], Addresses: f.Addrs, SkipEgress: f.SkipEgress})
	case r.Method == http.MethodPost && r.URL.Path == api.PathEgress:
		var req api.EgressRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Validate() != nil || req.NetNS == "" {
			badRequest(w, "bad request")
			return
		}
		f.lastEgress = &req
		if f.FailEgress != nil {
			reply(w, f.FailEgress.Status, f.FailEgress)
			return
		}
		reply(w, http.StatusOK, api.EgressResponse{Status: http.StatusOK, Client: f.Egress})
	case r.Method == http.MethodPost && r.URL.Path == api.PathGC:
		var req api.GCRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			badRequest(w, err.Error())
			return
		}
		f.lastGC = &req
		reply(w, http.StatusOK, api.GCResponse{Status: http.StatusOK, Released: f.GCReleased})
	case strings.HasPrefix(r.URL.Path, api.PathIP+"/"):
		ns, pod, cid, err := api.ParseIPPath(r.URL.Path)
		if err != nil {
			badRequest(w, err.Error())
			return
		}
		key := holdKey(ns, pod, cid, r.URL.Query().Get(api.QueryInterface))
		switch r.Method {
		case http.MethodGet:
			a, ok := f.held[key]
			if !ok {
				reply(w, http.StatusNotFound, api.ErrorResponse{Status: http.StatusNotFound, Error: "no address for " + key, Reason: api.ReasonNotFound})
				return
			}
			reply(w, http.StatusOK, api.AllocResponse{Status: http.StatusOK, Address: a[0], Addresses: a})
		case http.MethodDelete:
			delete(f.held, key)
			reply(w, http.StatusOK, struct {
				Status int `json:"status"`
			}{http.StatusOK})
		}
	default:
		http.NotFound(w, r)
	}
}

// holdKey names an allocation; an empty interface is a different one from
// "eth0", as coild keeps them apart too.
func holdKey(ns, pod, cid, ifName string) string {
	return strings.Join([]string{ns, pod, cid, ifName}, "/")
}

// Saw reports whether the fake received a request "METHOD path".
func (f *Coild) Saw(req string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.requests, req)
}

// Requests lists "METHOD path" of every request so far, for messages.
func (f *Coild) Requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

// Holds reports how many allocations the fake holds.
func (f *Coild) Holds() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.held)
}

// LastAlloc is the body of the last accepted POST /ip, nil before one.
func (f *Coild) LastAlloc() *api.AllocRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastAlloc
}

// LastEgress is the body of the last well-formed POST /egress, nil before
// one.
func (f *Coild) LastEgress() *api.EgressRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastEgress
}

// LastGC is the body of the last POST /gc, nil before one.
func (f *Coild) LastGC() *api.GCRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastGC
}

// ServeTCP serves f over HTTP on loopback until t ends and returns its
// endpoint ("http://127.0.0.1:port").
func (f *Coild) ServeTCP(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv.URL
}

// ServeUnix serves f on a unix socket in a temporary directory of t until
// t ends, as coild listens on a node; it returns the endpoint
// ("unix:///path") and the socket path.
func (f *Coild) ServeUnix(t testing.TB) (endpoint, socket string) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "coild.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(f)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return "unix://" + socket, socket
}

// DownEndpoint returns an HTTP endpoint on loopback where nothing listens:
// a coild that is not running.
func DownEndpoint(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	return srv.URL
}
