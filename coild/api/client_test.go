package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/internal/testenv/fakecoild"
)

// newFake returns a fake coild answering as these tests expect.
func newFake() *fakecoild.Coild {
	f := fakecoild.New("10.1.0.5", "fd00::5")
	f.Egress = []api.EgressRoute{{Egress: "internet/nat", GatewayPod: "internet/gw-0", Gateway: "10.2.0.3"}}
	f.Status = api.StatusResponse{AddressBlocks: map[string][]string{"default": {"10.1.0.0/26"}}, Pods: map[string]string{"ns/pod": "10.1.0.5"}}
	f.GCReleased = 2
	return f
}

// servers serves f over TCP and over a unix socket, the latter both as a
// unix:// URL and as a bare path (NewClient takes either).
func servers(t *testing.T, f *fakecoild.Coild) map[string]string {
	t.Helper()
	unixEndpoint, socket := f.ServeUnix(t)
	return map[string]string{"tcp": f.ServeTCP(t), "unix": unixEndpoint, "path": socket}
}

func TestClientRoundTrip(t *testing.T) {
	f := newFake()
	ctx := context.Background()
	for name, ep := range servers(t, f) {
		t.Run(name, func(t *testing.T) {
			c, err := api.NewClient(ep)
			if err != nil {
				t.Fatal(err)
			}
			req := api.AllocRequest{PodNamespace: "ns", PodName: "pod", ContainerID: "c-" + name, NetNS: "/var/run/netns/x"}
			got, err := c.Allocate(ctx, req)
			if err != nil {
				t.Fatalf("Allocate: %v", err)
			}
			want := api.AllocResponse{Status: 200, Address: "10.1.0.5", Addresses: []string{"10.1.0.5", "fd00::5"}}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Allocate = %+v, want %+v", got, want)
			}

			eg, err := c.SetupEgress(ctx, api.EgressRequest{PodNamespace: req.PodNamespace, PodName: req.PodName, ContainerID: req.ContainerID, NetNS: req.NetNS})
			wantEg := api.EgressResponse{Status: 200, Client: []api.EgressRoute{{Egress: "internet/nat", GatewayPod: "internet/gw-0", Gateway: "10.2.0.3"}}}
			if err != nil || !reflect.DeepEqual(eg, wantEg) {
				t.Errorf("SetupEgress = %+v, %v; want %+v", eg, err, wantEg)
			}

			got, err = c.Get(ctx, "ns", "pod", api.Attachment{ContainerID: "c-" + name})
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("Get = %+v, %v", got, err)
			}
			if err := c.Release(ctx, "ns", "pod", api.Attachment{ContainerID: "c-" + name, Interface: "eth0"}); err != nil {
				t.Errorf("Release: %v", err)
			}
			if err := c.Release(ctx, "ns", "pod", api.Attachment{ContainerID: "c-" + name, Interface: "eth0"}); err != nil {
				t.Errorf("second Release: %v", err)
			}
			_, err = c.Get(ctx, "ns", "pod", api.Attachment{ContainerID: "c-" + name, Interface: "eth0"})
			var apiErr *api.APIError
			if !errors.As(err, &apiErr) || apiErr.Status != 404 || !errors.Is(err, api.ErrNotFound) {
				t.Errorf("Get after release = %v, want 404 not-found", err)
			}

			st, err := c.Status(ctx)
			if err != nil || st.AddressBlocks["default"][0] != "10.1.0.0/26" || st.Pods["ns/pod"] != "10.1.0.5" {
				t.Errorf("Status = %+v, %v", st, err)
			}
			if err := c.Ready(ctx); err != nil {
				t.Errorf("Ready: %v", err)
			}

			gcReq := api.GCRequest{ValidAttachments: []api.Attachment{{ContainerID: "a", Interface: "eth0"}}}
			gc, err := c.GC(ctx, gcReq)
			if err != nil || gc.Released != 2 {
				t.Errorf("GC = %+v, %v", gc, err)
			}
			if got := f.LastGC(); got == nil || !reflect.DeepEqual(*got, gcReq) {
				t.Errorf("coild got GC %+v, want %+v", got, gcReq)
			}
		})
	}
}

func TestClientErrors(t *testing.T) {
	tests := []struct {
		name       string
		fail       *api.ErrorResponse
		ready      bool
		call       func(*api.Client) error
		wantStatus int
		wantIs     error
	}{
		{
			name:       "pool exhausted",
			fail:       &api.ErrorResponse{Status: 503, Error: "pool default has no free block", Reason: api.ReasonPoolExhausted},
			call:       func(c *api.Client) error { _, err := c.Allocate(context.Background(), api.AllocRequest{}); return err },
			wantStatus: 503,
			wantIs:     api.ErrPoolExhausted,
		},
		{
			name:  "bad request",
			ready: true,
			call: func(c *api.Client) error {
				_, err := c.Allocate(context.Background(), api.AllocRequest{PodName: "x"})
				return err
			},
			wantStatus: 400,
			wantIs:     api.ErrBadRequest,
		},
		{
			name:       "not ready",
			call:       func(c *api.Client) error { return c.Ready(context.Background()) },
			wantStatus: 503,
			wantIs:     api.ErrUnavailable,
		},
		{
			name: "reason derived from status",
			fail: &api.ErrorResponse{Status: 503, Error: "etcd down"},
			call: func(c *api.Client) error {
				return c.Release(context.Background(), "a", "b", api.Attachment{ContainerID: "c"})
			},
			wantStatus: 503,
			wantIs:     api.ErrUnavailable,
		},
		{
			name:       "internal",
			fail:       &api.ErrorResponse{Status: 500, Error: "boom", Reason: api.ReasonInternal},
			call:       func(c *api.Client) error { _, err := c.Status(context.Background()); return err },
			wantStatus: 500,
			wantIs:     api.ErrInternal,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake()
			f.NotReady = !tt.ready
			f.Fail = tt.fail
			srv := httptest.NewServer(f)
			defer srv.Close()
			c, err := api.NewClient(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			err = tt.call(c)
			var apiErr *api.APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("error %v is not an *APIError", err)
			}
			if apiErr.Status != tt.wantStatus || !errors.Is(err, tt.wantIs) {
				t.Errorf("error = %+v, want status %d matching %v", apiErr, tt.wantStatus, tt.wantIs)
			}
			if errors.Is(err, api.ErrUnreachable) {
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
		opts     []api.Option
	}{
		{"closed port", closed, nil},
		{"missing socket", "unix://" + filepath.Join(t.TempDir(), "none.sock"), nil},
		{"timeout", slow.URL, []api.Option{api.WithTimeout(200 * time.Millisecond)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := api.NewClient(tt.endpoint, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Allocate(context.Background(), api.AllocRequest{PodNamespace: "a", PodName: "b", ContainerID: "c"})
			if !errors.Is(err, api.ErrUnreachable) {
				t.Errorf("error = %v, want ErrUnreachable", err)
			}
			if err := c.Ready(context.Background()); !errors.Is(err, api.ErrUnreachable) {
				t.Errorf("Ready error = %v, want ErrUnreachable", err)
			}
		})
	}
}

func TestIPPath(t *testing.T) {
	tests := []struct{ ns, pod, cid string }{
		{"default", "nginx", "0123abcd"},
		{"kube-system", "coredns-x", "cid with space"},
	}
	for _, tt := range tests {
		p := api.IPPath(tt.ns, tt.pod, tt.cid)
		req := httptest.NewRequest(http.MethodGet, p, nil)
		ns, pod, cid, err := api.ParseIPPath(req.URL.Path)
		if err != nil || ns != tt.ns || pod != tt.pod || cid != tt.cid {
			t.Errorf("ParseIPPath(%q) = %q %q %q %v", req.URL.Path, ns, pod, cid, err)
		}
	}
	for _, bad := range []string{"/ip", "/ip/", "/ip/a/b", "/ip/a/b/c/d", "/ip//b/c", "/status"} {
		if _, _, _, err := api.ParseIPPath(bad); err == nil {
			t.Errorf("ParseIPPath(%q) accepted", bad)
		}
	}
}

func TestJSONNames(t *testing.T) {
	tests := []struct {
		v    any
		want string
	}{
		{api.AllocRequest{PodNamespace: "n", PodName: "p", ContainerID: "c", Interface: "eth0", NetNS: "/x"},
			`{"pod-namespace":"n","pod-name":"p","container-id":"c","interface":"eth0","netns":"/x"}`},
		// POST /egress takes the body of POST /ip (an older plugin sent it).
		{api.EgressRequest{PodNamespace: "n", PodName: "p", ContainerID: "c", Interface: "eth0", NetNS: "/x", PodUID: "u"},
			`{"pod-namespace":"n","pod-name":"p","container-id":"c","interface":"eth0","netns":"/x","pod-uid":"u"}`},
		{api.AllocRequest{PodNamespace: "n", PodName: "p", ContainerID: "c", Interface: "eth0", NetNS: "/x", PodUID: "u"},
			`{"pod-namespace":"n","pod-name":"p","container-id":"c","interface":"eth0","netns":"/x","pod-uid":"u"}`},
		{api.AllocResponse{Status: 200, Address: "10.0.0.1", Addresses: []string{"10.0.0.1", "fd00::1"}},
			`{"status":200,"address":"10.0.0.1","addresses":["10.0.0.1","fd00::1"]}`},
		{api.ErrorResponse{Status: 404, Error: "x"}, `{"status":404,"error":"x"}`},
		{api.ErrorResponse{Status: 503, Error: "x", Reason: api.ReasonPoolExhausted}, `{"status":503,"error":"x","reason":"pool-exhausted"}`},
		{api.StatusResponse{Status: 200, AddressBlocks: map[string][]string{"default": {"10.0.0.0/26"}}, Pods: map[string]string{"a/b": "10.0.0.1"}},
			`{"status":200,"address-blocks":{"default":["10.0.0.0/26"]},"pods":{"a/b":"10.0.0.1"}}`},
		{api.GCRequest{Network: "k8s", ValidAttachments: []api.Attachment{{ContainerID: "c", Interface: "eth0"}}},
			`{"network":"k8s","valid-attachments":[{"containerID":"c","ifname":"eth0"}]}`},
		{api.AllocRequest{PodNamespace: "n", PodName: "p", ContainerID: "c", Network: "k8s"},
			`{"pod-namespace":"n","pod-name":"p","container-id":"c","network":"k8s"}`},
		{api.GCResponse{Status: 200, Released: 3}, `{"status":200,"released":3}`},
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
