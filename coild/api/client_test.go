package api

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeCoild implements the protocol over an in-memory map, enough to check
// that the client speaks it.
type fakeCoild struct {
	mu       sync.Mutex
	ready    bool
	addrs    map[string][]string // "<ns>/<pod>/<cid>/<if>" -> addresses
	lastGC   GCRequest
	failWith *ErrorResponse
}

func newFakeCoild() *fakeCoild {
	return &fakeCoild{ready: true, addrs: map[string][]string{}}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (f *fakeCoild) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failWith != nil {
		writeJSON(w, f.failWith.Status, f.failWith)
		return
	}
	switch {
	case r.Method == http.MethodPost && r.URL.Path == PathIP:
		var req AllocRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRequestBytes)).Decode(&req); err != nil || req.Validate() != nil {
			writeJSON(w, 400, ErrorResponse{Status: 400, Error: "bad request", Reason: ReasonBadRequest})
			return
		}
		key := strings.Join([]string{req.PodNamespace, req.PodName, req.ContainerID, req.Attachment().Interface}, "/")
		a := []string{"10.1.0.5", "fd00::5"}
		f.addrs[key] = a
		writeJSON(w, 200, AllocResponse{Status: 200, Address: a[0], Addresses: a})
	case r.Method == http.MethodPost && r.URL.Path == PathEgress:
		var req EgressRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.NetNS == "" {
			writeJSON(w, 400, ErrorResponse{Status: 400, Error: "bad request", Reason: ReasonBadRequest})
			return
		}
		writeJSON(w, 200, EgressResponse{Status: 200, Client: []EgressRoute{{Egress: "internet/nat", GatewayPod: "internet/gw-0", Gateway: "10.2.0.3"}}})
	case r.URL.Path == PathStatus:
		writeJSON(w, 200, StatusResponse{Status: 200, AddressBlocks: map[string][]string{"default": {"10.1.0.0/26"}}, Pods: map[string]string{"ns/pod": "10.1.0.5"}})
	case r.URL.Path == PathReady:
		if !f.ready {
			writeJSON(w, 503, ErrorResponse{Status: 503, Error: "restoring state", Reason: ReasonUnavailable})
			return
		}
		w.WriteHeader(200)
	case r.Method == http.MethodPost && r.URL.Path == PathGC:
		if err := json.NewDecoder(r.Body).Decode(&f.lastGC); err != nil {
			writeJSON(w, 400, ErrorResponse{Status: 400, Error: err.Error()})
			return
		}
		writeJSON(w, 200, GCResponse{Status: 200, Released: 2})
	case strings.HasPrefix(r.URL.Path, PathIP+"/"):
		ns, pod, cid, err := ParseIPPath(r.URL.Path)
		if err != nil {
			writeJSON(w, 400, ErrorResponse{Status: 400, Error: err.Error(), Reason: ReasonBadRequest})
			return
		}
		key := strings.Join([]string{ns, pod, cid, r.URL.Query().Get(QueryInterface)}, "/")
		switch r.Method {
		case http.MethodGet:
			a, ok := f.addrs[key]
			if !ok {
				writeJSON(w, 404, ErrorResponse{Status: 404, Error: "no address for " + key, Reason: ReasonNotFound})
				return
			}
			writeJSON(w, 200, AllocResponse{Status: 200, Address: a[0], Addresses: a})
		case http.MethodDelete:
			delete(f.addrs, key)
			writeJSON(w, 200, struct {
				Status int `json:"status"`
			}{200})
		}
	default:
		http.NotFound(w, r)
	}
}

// servers starts f over TCP and over a unix socket and returns an endpoint
// for each.
func servers(t *testing.T, f *fakeCoild) map[string]string {
	t.Helper()
	tcp := httptest.NewServer(f)
	t.Cleanup(tcp.Close)

	sock := filepath.Join(t.TempDir(), "coild.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	unix := httptest.NewUnstartedServer(f)
	unix.Listener = ln
	unix.Start()
	t.Cleanup(unix.Close)

	return map[string]string{"tcp": tcp.URL, "unix": "unix://" + sock, "path": sock}
}

func TestClientRoundTrip(t *testing.T) {
	f := newFakeCoild()
	ctx := context.Background()
	for name, ep := range servers(t, f) {
		t.Run(name, func(t *testing.T) {
			c, err := NewClient(ep)
			if err != nil {
				t.Fatal(err)
			}
			req := AllocRequest{PodNamespace: "ns", PodName: "pod", ContainerID: "c-" + name, NetNS: "/var/run/netns/x"}
			got, err := c.Allocate(ctx, req)
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			want := AllocResponse{Status: 200, Address: "10.1.0.5", Addresses: []string{"10.1.0.5", "fd00::5"}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Allocate = %+v, want %+v", got, want)
			}

			eg, err := c.SetupEgress(ctx, EgressRequest{PodNamespace: req.PodNamespace, PodName: req.PodName, ContainerID: req.ContainerID, NetNS: req.NetNS})
			wantEg := EgressResponse{Status: 200, Client: []EgressRoute{{Egress: "internet/nat", GatewayPod: "internet/gw-0", Gateway: "10.2.0.3"}}}
			if err != nil || !reflect.DeepEqual(eg, wantEg) {
				t.Errorf("SetupEgress = %+v, %v; want %+v", eg, err, wantEg)
			}

			got, err = c.Get(ctx, "ns", "pod", Attachment{ContainerID: "c-" + name})
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("Get = %+v, %v", got, err)
			}
			if err := c.Release(ctx, "ns", "pod", Attachment{ContainerID: "c-" + name, Interface: "eth0"}); err != nil {
				t.Errorf("Release: %v", err)
			}
			if err := c.Release(ctx, "ns", "pod", Attachment{ContainerID: "c-" + name, Interface: "eth0"}); err != nil {
				t.Errorf("second Release: %v", err)
			}
			_, err = c.Get(ctx, "ns", "pod", Attachment{ContainerID: "c-" + name, Interface: "eth0"})
			var apiErr *APIError
			if !errors.As(err, &apiErr) || apiErr.Status != 404 || !errors.Is(err, ErrNotFound) {
				t.Errorf("Get after release = %v, want 404 not-found", err)
			}

			st, err := c.Status(ctx)
			if err != nil || st.AddressBlocks["default"][0] != "10.1.0.0/26" || st.Pods["ns/pod"] != "10.1.0.5" {
				t.Errorf("Status = %+v, %v", st, err)
			}
			if err := c.Ready(ctx); err != nil {
				t.Errorf("Ready: %v", err)
			}

			gcReq := GCRequest{ValidAttachments: []Attachment{{ContainerID: "a", Interface: "eth0"}}}
			gc, err := c.GC(ctx, gcReq)
			if err != nil || gc.Released != 2 {
				t.Errorf("GC = %+v, %v", gc, err)
			}
			f.mu.Lock()
			if !reflect.DeepEqual(f.lastGC, gcReq) {
				t.Errorf("coild got GC %+v, want %+v", f.lastGC, gcReq)
			}
			f.mu.Unlock()
		})
	}
}

func TestClientErrors(t *testing.T) {
	tests := []struct {
		name       string
		fail       *ErrorResponse
		ready      bool
		call       func(*Client) error
		wantStatus int
		wantIs     error
	}{
		{
			name:       "pool exhausted",
			fail:       &ErrorResponse{Status: 503, Error: "pool default has no free block", Reason: ReasonPoolExhausted},
			call:       func(c *Client) error { _, err := c.Allocate(context.Background(), AllocRequest{}); return err },
			wantStatus: 503,
			wantIs:     ErrPoolExhausted,
		},
		{
			name:  "bad request",
			ready: true,
			call: func(c *Client) error {
				_, err := c.Allocate(context.Background(), AllocRequest{PodName: "x"})
				return err
			},
			wantStatus: 400,
			wantIs:     ErrBadRequest,
		},
		{
			name:       "not ready",
			call:       func(c *Client) error { return c.Ready(context.Background()) },
			wantStatus: 503,
			wantIs:     ErrUnavailable,
		},
		{
			name:       "reason derived from status",
			fail:       &ErrorResponse{Status: 503, Error: "etcd down"},
			call:       func(c *Client) error { return c.Release(context.Background(), "a", "b", Attachment{ContainerID: "c"}) },
			wantStatus: 503,
			wantIs:     ErrUnavailable,
		},
		{
			name:       "internal",
			fail:       &ErrorResponse{Status: 500, Error: "boom", Reason: ReasonInternal},
			call:       func(c *Client) error { _, err := c.Status(context.Background()); return err },
			wantStatus: 500,
			wantIs:     ErrInternal,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeCoild()
			f.ready = tt.ready
			f.failWith = tt.fail
			srv := httptest.NewServer(f)
			defer srv.Close()
			c, err := NewClient(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			err = tt.call(c)
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("error %v is not an *APIError", err)
			}
			if apiErr.Status != tt.wantStatus || !errors.Is(err, tt.wantIs) {
				t.Errorf("error = %+v, want status %d matching %v", apiErr, tt.wantStatus, tt.wantIs)
			}
			if errors.Is(err, ErrUnreachable) {
				t.Errorf("an answer from coild is not ErrUnreachable: %v", err)
			}
			if tt.fail != nil && !strings.Contains(err.Error(), tt.fail.Error) {
				t.Errorf("error %q does not carry coild's message %q", err, tt.fail.Error)
			}
		})
	}
}

func TestClientUnreachable(t *testing.T) {
	// A server that was started and stopped gives a port nobody listens on.
	srv := httptest.NewServer(http.NotFoundHandler())
	closed := srv.URL
	srv.Close()

	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(hang)

	tests := []struct {
		name     string
		endpoint string
		opts     []Option
	}{
		{"closed port", closed, nil},
		{"missing socket", "unix://" + filepath.Join(t.TempDir(), "none.sock"), nil},
		{"timeout", slow.URL, []Option{WithTimeout(200 * time.Millisecond)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewClient(tt.endpoint, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Allocate(context.Background(), AllocRequest{PodNamespace: "a", PodName: "b", ContainerID: "c"})
			if !errors.Is(err, ErrUnreachable) {
				t.Errorf("error = %v, want ErrUnreachable", err)
			}
			if err := c.Ready(context.Background()); !errors.Is(err, ErrUnreachable) {
				t.Errorf("Ready error = %v, want ErrUnreachable", err)
			}
		})
	}
}

func TestNewClientEndpoints(t *testing.T) {
	tests := []struct {
		endpoint string
		ok       bool
		base     string
	}{
		{"http://127.0.0.1:9383", true, "http://127.0.0.1:9383"},
		{"http://127.0.0.1:9383/", true, "http://127.0.0.1:9383"},
		{"unix:///run/coild.sock", true, "http://coild"},
		{"/run/coild.sock", true, "http://coild"},
		{"", false, ""},
		{"127.0.0.1:9383", false, ""},
		{"ftp://x", false, ""},
		{"unix://run/coild.sock", false, ""},
		{"unix://", false, ""},
	}
	for _, tt := range tests {
		c, err := NewClient(tt.endpoint)
		if !tt.ok {
			if !errors.Is(err, ErrInvalidEndpoint) {
				t.Errorf("NewClient(%q) error = %v, want ErrInvalidEndpoint", tt.endpoint, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("NewClient(%q): %v", tt.endpoint, err)
			continue
		}
		if c.base != tt.base {
			t.Errorf("NewClient(%q) base = %q, want %q", tt.endpoint, c.base, tt.base)
		}
	}
}

func TestIPPath(t *testing.T) {
	tests := []struct{ ns, pod, cid string }{
		{"default", "nginx", "0123abcd"},
		{"kube-system", "coredns-x", "cid with space"},
	}
	for _, tt := range tests {
		p := IPPath(tt.ns, tt.pod, tt.cid)
		req := httptest.NewRequest(http.MethodGet, p, nil)
		ns, pod, cid, err := ParseIPPath(req.URL.Path)
		if err != nil || ns != tt.ns || pod != tt.pod || cid != tt.cid {
			t.Errorf("ParseIPPath(%q) = %q %q %q %v", req.URL.Path, ns, pod, cid, err)
		}
	}
	for _, bad := range []string{"/ip", "/ip/", "/ip/a/b", "/ip/a/b/c/d", "/ip//b/c", "/status"} {
		if _, _, _, err := ParseIPPath(bad); err == nil {
			t.Errorf("ParseIPPath(%q) accepted", bad)
		}
	}
}

func TestJSONNames(t *testing.T) {
	tests := []struct {
		v    any
		want string
	}{
		{AllocRequest{PodNamespace: "n", PodName: "p", ContainerID: "c", Interface: "eth0", NetNS: "/x"},
			`{"pod-namespace":"n","pod-name":"p","container-id":"c","interface":"eth0","netns":"/x"}`},
		// POST /egress takes the body of POST /ip (an older plugin sent it).
		{EgressRequest{PodNamespace: "n", PodName: "p", ContainerID: "c", Interface: "eth0", NetNS: "/x", PodUID: "u"},
			`{"pod-namespace":"n","pod-name":"p","container-id":"c","interface":"eth0","netns":"/x","pod-uid":"u"}`},
		{AllocRequest{PodNamespace: "n", PodName: "p", ContainerID: "c", Interface: "eth0", NetNS: "/x", PodUID: "u"},
			`{"pod-namespace":"n","pod-name":"p","container-id":"c","interface":"eth0","netns":"/x","pod-uid":"u"}`},
		{AllocResponse{Status: 200, Address: "10.0.0.1", Addresses: []string{"10.0.0.1", "fd00::1"}},
			`{"status":200,"address":"10.0.0.1","addresses":["10.0.0.1","fd00::1"]}`},
		{ErrorResponse{Status: 404, Error: "x"}, `{"status":404,"error":"x"}`},
		{ErrorResponse{Status: 503, Error: "x", Reason: ReasonPoolExhausted}, `{"status":503,"error":"x","reason":"pool-exhausted"}`},
		{StatusResponse{Status: 200, AddressBlocks: map[string][]string{"default": {"10.0.0.0/26"}}, Pods: map[string]string{"a/b": "10.0.0.1"}},
			`{"status":200,"address-blocks":{"default":["10.0.0.0/26"]},"pods":{"a/b":"10.0.0.1"}}`},
		{GCRequest{ValidAttachments: []Attachment{{ContainerID: "c", Interface: "eth0"}}},
			`{"valid-attachments":[{"containerID":"c","ifname":"eth0"}]}`},
		{GCResponse{Status: 200, Released: 3}, `{"status":200,"released":3}`},
	}
	for _, tt := range tests {
		b, err := json.Marshal(tt.v)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != tt.want {
			t.Errorf("%T = %s, want %s", tt.v, b, tt.want)
		}
	}
}
