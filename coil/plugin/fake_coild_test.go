package plugin

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/coil-project/coil/coild/api"
)

// fakeCoild is a stand-in for coild that speaks the REST protocol from an
// in-memory map and records what it was asked.
type fakeCoild struct {
	mu sync.Mutex
	// addrs are the addresses handed to every new allocation.
	addrs []string
	// held maps "<ns>/<pod>/<cid>/<if>" to the allocated addresses.
	held map[string][]string
	// requests lists "METHOD path" of every request.
	requests []string
	// lastAlloc is the last POST /ip body.
	lastAlloc api.AllocRequest
	// lastGC is the last POST /gc body.
	lastGC *api.GCRequest
	// notReady makes /readyz answer 503.
	notReady bool
	// failAlloc, when set, is the answer to POST /ip.
	failAlloc *api.ErrorResponse
	// lastEgress is the last POST /egress body.
	lastEgress *api.EgressRequest
	// failEgress, when set, is the answer to POST /egress.
	failEgress *api.ErrorResponse
}

func newFakeCoild(addrs ...string) *fakeCoild {
	return &fakeCoild{addrs: addrs, held: map[string][]string{}}
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeCoild) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, r.Method+" "+r.URL.Path)
	switch {
	case r.Method == http.MethodGet && r.URL.Path == api.PathReady:
		if f.notReady {
			reply(w, 503, api.ErrorResponse{Status: 503, Error: "restoring state from etcd", Reason: api.ReasonUnavailable})
			return
		}
		reply(w, 200, struct{}{})
	case r.Method == http.MethodPost && r.URL.Path == api.PathIP:
		if f.failAlloc != nil {
			reply(w, f.failAlloc.Status, f.failAlloc)
			return
		}
		var req api.AllocRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Validate() != nil {
			reply(w, 400, api.ErrorResponse{Status: 400, Error: "bad request", Reason: api.ReasonBadRequest})
			return
		}
		f.lastAlloc = req
		key := strings.Join([]string{req.PodNamespace, req.PodName, req.ContainerID, req.Attachment().Interface}, "/")
		f.held[key] = f.addrs
		reply(w, 200, api.AllocResponse{Status: 200, Address: f.addrs[0], Addresses: f.addrs})
	case r.Method == http.MethodPost && r.URL.Path == api.PathEgress:
		var req api.EgressRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Validate() != nil {
			reply(w, 400, api.ErrorResponse{Status: 400, Error: "bad request", Reason: api.ReasonBadRequest})
			return
		}
		f.lastEgress = &req
		if f.failEgress != nil {
			reply(w, f.failEgress.Status, f.failEgress)
			return
		}
		reply(w, 200, api.EgressResponse{Status: 200})
	case r.Method == http.MethodPost && r.URL.Path == api.PathGC:
		var req api.GCRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			reply(w, 400, api.ErrorResponse{Status: 400, Error: err.Error(), Reason: api.ReasonBadRequest})
			return
		}
		f.lastGC = &req
		reply(w, 200, api.GCResponse{Status: 200})
	case strings.HasPrefix(r.URL.Path, api.PathIP+"/"):
		ns, pod, cid, err := api.ParseIPPath(r.URL.Path)
		if err != nil {
			reply(w, 400, api.ErrorResponse{Status: 400, Error: err.Error(), Reason: api.ReasonBadRequest})
			return
		}
		key := strings.Join([]string{ns, pod, cid, r.URL.Query().Get(api.QueryInterface)}, "/")
		switch r.Method {
		case http.MethodGet:
			a, ok := f.held[key]
			if !ok {
				reply(w, 404, api.ErrorResponse{Status: 404, Error: "no address for " + key, Reason: api.ReasonNotFound})
				return
			}
			reply(w, 200, api.AllocResponse{Status: 200, Address: a[0], Addresses: a})
		case http.MethodDelete:
			delete(f.held, key)
			reply(w, 200, struct {
				Status int `json:"status"`
			}{200})
		}
	default:
		http.NotFound(w, r)
	}
}

// saw reports whether coild received a request "METHOD path".
func (f *fakeCoild) saw(req string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.requests {
		if r == req {
			return true
		}
	}
	return false
}

// holds reports how many allocations coild holds.
func (f *fakeCoild) holds() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.held)
}

// serve starts f on TCP and returns its endpoint.
func serve(t *testing.T, f *fakeCoild) string {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv.URL
}

// serveUnix starts f on a unix socket and returns its endpoint.
func serveUnix(t *testing.T, f *fakeCoild) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "coild.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(f)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return "unix://" + sock
}

// downEndpoint returns an endpoint where nothing listens.
func downEndpoint(t *testing.T) string {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	return srv.URL
}
