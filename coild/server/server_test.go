package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/coild/egress"
	"github.com/coil-project/coil/coild/ipam"
	"github.com/coil-project/coil/coild/poolselector"
	"github.com/coil-project/coil/coild/server"
	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	"github.com/prometheus/client_golang/prometheus"
)

var etcd *etcdtest.Server

func TestMain(m *testing.M) {
	os.Exit(etcdtest.Main(m, func(s *etcdtest.Server) { etcd = s }))
}

// fixedPool sends every namespace to one pool, except "missing" (to a
// pool that does not exist) and "nopool" (annotated for a pool the
// selector knows does not exist).
type fixedPool string

func (p fixedPool) PoolFor(_ context.Context, ns string) (string, error) {
	switch ns {
	case "missing":
		return "nope", nil
	case "nopool":
		return "", fmt.Errorf("namespace %q is annotated for pool nope: %w", ns, poolselector.ErrNoPool)
	}
	return string(p), nil
}

func newServer(t *testing.T, srv *etcdtest.Server, cidr string, bits int) (*httptest.Server, *ipam.Allocator) {
	t.Helper()
	return newServerWith(t, srv, cidr, bits, nil)
}

func newServerWith(t *testing.T, srv *etcdtest.Server, cidr string, bits int, eg server.Egress) (*httptest.Server, *ipam.Allocator) {
	t.Helper()
	ctx := context.Background()
	st := model.New(srv.Client(t), etcdtest.Prefix(t))
	if err := st.Init(ctx); err != nil {
		t.Fatal(err)
	}
	sub, _ := model.ParseSubnet(cidr, "")
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: bits, Subnets: []model.Subnet{sub}}); err != nil {
		t.Fatal(err)
	}
	alloc := ipam.New(st, "node1", nil)
	if err := alloc.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	h := server.New(server.Config{Allocator: alloc, Selector: fixedPool("default"), Egress: eg, RequestTimeout: 2 * time.Second, Registry: prometheus.NewRegistry()})
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts, alloc
}

func do(t *testing.T, method, url, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s %s: response is not JSON: %q", method, url, data)
	}
	if int(m["status"].(float64)) != resp.StatusCode {
		t.Fatalf("%s %s: body status %v differs from HTTP %d", method, url, m["status"], resp.StatusCode)
	}
	return resp.StatusCode, m
}

const validBody = `{"pod-namespace":"ns","pod-name":"p1","container-id":"c1"}`

func TestRESTStatusCodes(t *testing.T) {
	ts, _ := newServer(t, etcd, "10.20.0.0/30", 1) // room for 4 pods
	cases := []struct {
		name, method, path, body string
		want                     int
		reason                   string
	}{
		{"allocate", "POST", "/ip", validBody, 200, ""},
		{"allocate again is idempotent", "POST", "/ip", validBody, 200, ""},
		{"malformed JSON", "POST", "/ip", `{"pod-namespace":`, 400, api.ReasonBadRequest},
		{"not an object", "POST", "/ip", `[1,2]`, 400, api.ReasonBadRequest},
		{"trailing garbage", "POST", "/ip", validBody + `{}`, 400, api.ReasonBadRequest},
		{"unknown field", "POST", "/ip", `{"pod-namespace":"ns","pod-name":"p","container-id":"c","color":"red"}`, 400, api.ReasonBadRequest},
		{"missing container id", "POST", "/ip", `{"pod-namespace":"ns","pod-name":"p"}`, 400, api.ReasonBadRequest},
		{"missing pod name", "POST", "/ip", `{"pod-namespace":"ns","container-id":"c"}`, 400, api.ReasonBadRequest},
		{"body over 64 KiB", "POST", "/ip", `{"pod-namespace":"` + strings.Repeat("a", 70<<10) + `"}`, 400, api.ReasonBadRequest},
		{"unknown pool", "POST", "/ip", `{"pod-namespace":"missing","pod-name":"p","container-id":"cx"}`, 503, api.ReasonUnavailable},
		{"selected pool missing", "POST", "/ip", `{"pod-namespace":"nopool","pod-name":"p","container-id":"cy"}`, 503, api.ReasonUnavailable},
		{"get", "GET", "/ip/ns/p1/c1", "", 200, ""},
		{"get other interface", "GET", "/ip/ns/p1/c1?interface=net1", "", 404, api.ReasonNotFound},
		{"get unknown", "GET", "/ip/ns/p9/c9", "", 404, api.ReasonNotFound},
		{"get wrong pod", "GET", "/ip/ns/other/c1", "", 404, api.ReasonNotFound},
		{"delete wrong pod", "DELETE", "/ip/ns/other/c1", "", 400, api.ReasonBadRequest},
		{"delete", "DELETE", "/ip/ns/p1/c1", "", 200, ""},
		{"delete again", "DELETE", "/ip/ns/p1/c1", "", 200, ""},
		{"delete never allocated", "DELETE", "/ip/ns/p7/c7", "", 200, ""},
		{"status", "GET", "/status", "", 200, ""},
		{"ready", "GET", "/readyz", "", 200, ""},
		{"health", "GET", "/healthz", "", 200, ""},
		{"unknown path", "GET", "/nope", "", 404, api.ReasonNotFound},
		{"wrong method", "PUT", "/ip", "{}", 405, api.ReasonBadRequest},
		{"gc malformed", "POST", "/gc", `{"valid-attachments":5}`, 400, api.ReasonBadRequest},
		{"gc without network", "POST", "/gc", `{"valid-attachments":[]}`, 400, api.ReasonBadRequest},
		{"gc bad network", "POST", "/gc", `{"network":"-x/y","valid-attachments":[]}`, 400, api.ReasonBadRequest},
		{"bad network", "POST", "/ip", `{"pod-namespace":"ns","pod-name":"p","container-id":"cz","network":"a b"}`, 400, api.ReasonBadRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, body := do(t, c.method, ts.URL+c.path, c.body)
			if code != c.want {
				t.Fatalf("%s %s = %d %v, want %d", c.method, c.path, code, body, c.want)
			}
			if c.reason != "" && body["reason"] != c.reason {
				t.Fatalf("reason = %v, want %s", body["reason"], c.reason)
			}
			if code >= 400 && body["error"] == "" {
				t.Fatal("error response without message")
			}
		})
	}
}

// fakeEgress records what the server asks of egress.
type fakeEgress struct {
	mu       sync.Mutex
	setup    []model.Address
	released []model.Address
	err      error
}

func (f *fakeEgress) SetupPod(_ context.Context, a model.Address) (server.EgressSetup, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setup = append(f.setup, a)
	return server.EgressSetup{
		Gateway: "ns/eg",
		Clients: []server.EgressClient{
			{Egress: "internet/nat", GatewayPod: "internet/gw-0", Gateway: netip.MustParseAddr("10.2.0.3")},
			{Egress: "internet/down"},
		},
		Missing: []string{"internet/gone"},
	}, f.err
}

func (f *fakeEgress) PodReleased(a model.Address) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, a)
}

func TestEgressEndpoint(t *testing.T) {
	eg := &fakeEgress{}
	ts, _ := newServerWith(t, etcd, "10.25.0.0/28", 2, eg)
	withNetNS := `{"pod-namespace":"ns","pod-name":"p1","container-id":"c1","netns":"/var/run/netns/p1"}`
	cases := []struct {
		name, body string
		err        error
		want       int
		reason     string
	}{
		{"before allocation", withNetNS, nil, 404, api.ReasonNotFound},
		{"malformed", `{"pod-name":`, nil, 400, api.ReasonBadRequest},
		{"missing container", `{"pod-namespace":"ns","pod-name":"p1"}`, nil, 400, api.ReasonBadRequest},
		{"wrong pod", `{"pod-namespace":"ns","pod-name":"other","container-id":"c1"}`, nil, 404, api.ReasonNotFound},
		{"ok", withNetNS, nil, 200, ""},
		{"body of the allocation", `{"pod-namespace":"ns","pod-name":"p1","container-id":"c1","interface":"eth0","netns":"/var/run/netns/p1","pod-uid":"u1"}`, nil, 200, ""},
		{"egress not ready", withNetNS, fmt.Errorf("wrapped: %w", egress.ErrNotReady), 503, api.ReasonUnavailable},
		{"egress failed", withNetNS, errors.New("create vxlan: boom"), 500, api.ReasonInternal},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.name == "wrong pod" || c.name == "ok" {
				if code, body := do(t, "POST", ts.URL+"/ip", withNetNS); code != 200 {
					t.Fatalf("allocate = %d %v", code, body)
				}
			}
			eg.mu.Lock()
			eg.err = c.err
			eg.mu.Unlock()
			code, body := do(t, "POST", ts.URL+"/egress", c.body)
			if code != c.want || c.reason != "" && body["reason"] != c.reason {
				t.Fatalf("POST /egress = %d %v, want %d %s", code, body, c.want, c.reason)
			}
			if code == 200 {
				data, _ := json.Marshal(body)
				want := `{"client":[{"egress":"internet/nat","gateway":"10.2.0.3","gateway-pod":"internet/gw-0"},{"egress":"internet/down"}],"gateway":"ns/eg","missing":["internet/gone"],"status":200}`
				if string(data) != want {
					t.Errorf("answer %s does not carry egress's response %s", data, want)
				}
			}
		})
	}
	eg.mu.Lock()
	if len(eg.setup) == 0 || eg.setup[0].NetNS != "/var/run/netns/p1" || eg.setup[0].Pod != "p1" || !eg.setup[0].IPv4.IsValid() {
		t.Errorf("egress was asked to set up %+v, want p1 with its address and netns", eg.setup)
	}
	eg.mu.Unlock()

	if code, body := do(t, "DELETE", ts.URL+"/ip/ns/p1/c1", ""); code != 200 {
		t.Fatalf("release = %d %v", code, body)
	}
	do(t, "DELETE", ts.URL+"/ip/ns/p1/c1", "")
	eg.mu.Lock()
	defer eg.mu.Unlock()
	if len(eg.released) != 1 || eg.released[0].NetNS != "/var/run/netns/p1" {
		t.Errorf("egress learnt of releases %+v, want the one of p1 with its netns", eg.released)
	}
}

func TestPoolExhaustedIs503(t *testing.T) {
	ts, _ := newServer(t, etcd, "10.21.0.0/31", 1) // one block of 2
	for i := range 2 {
		if code, body := do(t, "POST", ts.URL+"/ip", fmt.Sprintf(`{"pod-namespace":"ns","pod-name":"p%d","container-id":"c%d"}`, i, i)); code != 200 {
			t.Fatalf("allocation %d = %d %v", i, code, body)
		}
	}
	code, body := do(t, "POST", ts.URL+"/ip", `{"pod-namespace":"ns","pod-name":"p3","container-id":"c3"}`)
	if code != 503 || body["reason"] != api.ReasonPoolExhausted || !strings.Contains(body["error"].(string), "exhausted") {
		t.Fatalf("full pool = %d %v", code, body)
	}
}

// An allocator whose state is not restored refuses to work, and the
// server says so with 503: retry later.
func TestNotRestoredIs503(t *testing.T) {
	st := model.New(etcd.Client(t), etcdtest.Prefix(t))
	alloc := ipam.New(st, "node1", nil)
	h := server.New(server.Config{Allocator: alloc, Selector: fixedPool("default"), Ready: func() bool { return true }, Registry: prometheus.NewRegistry()})
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/ip", validBody},
		{"DELETE", "/ip/ns/p1/c1", ""},
	} {
		code, body := do(t, c.method, ts.URL+c.path, c.body)
		if code != 503 || body["reason"] != api.ReasonUnavailable || !strings.Contains(body["error"].(string), "not restored") {
			t.Errorf("%s %s before restore = %d %v, want 503 unavailable", c.method, c.path, code, body)
		}
	}
}

func TestEtcdDownIs503(t *testing.T) {
	private, err := etcdtest.Start(etcdtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ts, _ := newServer(t, private, "10.22.0.0/24", 2)
	private.Close()
	code, body := do(t, "POST", ts.URL+"/ip", validBody)
	if code != 503 || body["reason"] != api.ReasonUnavailable || !strings.Contains(body["error"].(string), "etcd") {
		t.Fatalf("etcd down = %d %v", code, body)
	}
}

func TestGCKeepsValidAndYoung(t *testing.T) {
	ts, alloc := newServer(t, etcd, "10.23.0.0/28", 2)
	for _, c := range []string{"keep", "drop"} {
		if code, body := do(t, "POST", ts.URL+"/ip", fmt.Sprintf(`{"pod-namespace":"ns","pod-name":"%s","container-id":"%s","network":"k8s"}`, c, c)); code != 200 {
			t.Fatalf("allocate = %d %v", code, body)
		}
	}
	// Both are younger than GCMinAge (zero here means no protection).
	code, body := do(t, "POST", ts.URL+"/gc", `{"network":"k8s","valid-attachments":[{"containerID":"keep","ifname":"eth0"}]}`)
	if code != 200 || body["released"].(float64) != 1 {
		t.Fatalf("gc = %d %v", code, body)
	}
	if _, ok := alloc.Lookup(api.Attachment{ContainerID: "keep", Interface: "eth0"}); !ok {
		t.Fatal("gc released a valid attachment")
	}
	if _, ok := alloc.Lookup(api.Attachment{ContainerID: "drop", Interface: "eth0"}); ok {
		t.Fatal("gc kept an invalid attachment")
	}
}

func TestMetrics(t *testing.T) {
	ts, _ := newServer(t, etcd, "10.24.0.0/28", 2)
	do(t, "POST", ts.URL+"/ip", validBody)
	// One more, with the runtime's annotations (none for egress).
	if code, body := do(t, "POST", ts.URL+"/ip", `{"pod-namespace":"ns","pod-name":"p2","container-id":"c2","egress-annotations":{}}`); code != 200 {
		t.Fatalf("allocate = %d %v", code, body)
	}
	resp, err := http.Get(ts.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"coild_allocations_total 2", "coild_allocations_with_pod_annotations_total 1", "coild_blocks_owned 1", "coild_addresses_in_use 2", "coild_allocation_duration_seconds_count 2", `coild_addresses_free{pool="default"} 2`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:9383": true, "localhost:9383": true, "[::1]:9383": true, "127.0.0.5:1": true,
		"0.0.0.0:9383": false, ":9383": false, "10.0.0.1:9383": false, "[::]:9383": false, "example.com:80": false, "[::1": false,
	} {
		if got := server.IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// judgingEgress is a fakeEgress that judges whether pods need set-up,
// recording the runtime's annotations it was given.
type judgingEgress struct {
	fakeEgress
	needs bool
	mu    sync.Mutex
	given []map[string]string
}

func (j *judgingEgress) PrepareSetup(namespace, name string, annotations map[string]string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.given = append(j.given, annotations)
	return j.needs
}

// TestAllocationPassesTheRuntimesAnnotations: the egress annotations a
// client sends with POST /ip reach the egress judgement as sent: absent
// stays nil (unknown), {} stays empty (the runtime passed annotations,
// none for egress). Keys other than egress ones are refused.
func TestAllocationPassesTheRuntimesAnnotations(t *testing.T) {
	tests := []struct {
		name   string
		extra  string
		status int
		want   map[string]string
	}{
		{"absent", ``, 200, nil},
		{"null", `,"egress-annotations":null`, 200, nil},
		{"empty", `,"egress-annotations":{}`, 200, map[string]string{}},
		{"a client", `,"egress-annotations":{"egress.coil.cybozu.com/internet":"nat"}`, 200, map[string]string{"egress.coil.cybozu.com/internet": "nat"}},
		{"another annotation", `,"egress-annotations":{"kubernetes.io/config.seen":"x"}`, 400, nil},
		{"no namespace in the key", `,"egress-annotations":{"egress.coil.cybozu.com/":"nat"}`, 400, nil},
		{"not an object", `,"egress-annotations":["x"]`, 400, nil},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eg := &judgingEgress{}
			ts, _ := newServerWith(t, etcd, fmt.Sprintf("10.27.%d.0/28", i), 2, eg)
			req := `{"pod-namespace":"ns","pod-name":"p1","container-id":"c1","netns":"/var/run/netns/p1"` + tt.extra + `}`
			code, body := do(t, "POST", ts.URL+"/ip", req)
			if code != tt.status {
				t.Fatalf("allocate = %d %v, want %d", code, body, tt.status)
			}
			eg.mu.Lock()
			defer eg.mu.Unlock()
			if tt.status != 200 {
				if len(eg.given) != 0 {
					t.Errorf("a refused request was judged")
				}
				return
			}
			if len(eg.given) != 1 {
				t.Fatalf("judged %d times, want 1", len(eg.given))
			}
			got := eg.given[0]
			if (got == nil) != (tt.want == nil) || !maps.Equal(got, tt.want) {
				t.Errorf("annotations given = %#v, want %#v", got, tt.want)
			}
		})
	}
	if api.EgressAnnotationPrefix != model.EgressClientAnnotationPrefix {
		t.Errorf("api.EgressAnnotationPrefix %q != model.EgressClientAnnotationPrefix %q", api.EgressAnnotationPrefix, model.EgressClientAnnotationPrefix)
	}
}

// TestAllocationSaysWhenEgressIsNotNeeded: POST /ip tells the plugin to
// skip POST /egress only when egress says so (or coild runs without
// egress), never for an egress that cannot judge, and not on a retried
// ADD, which coild answers from what it holds.
func TestAllocationSaysWhenEgressIsNotNeeded(t *testing.T) {
	tests := []struct {
		name string
		eg   server.Egress
		want bool
	}{
		{"no egress in coild", nil, true},
		{"egress cannot judge", &fakeEgress{}, false},
		{"egress: needed", &judgingEgress{needs: true}, false},
		{"egress: not needed", &judgingEgress{needs: false}, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts, _ := newServerWith(t, etcd, fmt.Sprintf("10.26.%d.0/28", i), 2, tt.eg)
			req := `{"pod-namespace":"ns","pod-name":"p1","container-id":"c1","netns":"/var/run/netns/p1"}`
			code, body := do(t, "POST", ts.URL+"/ip", req)
			if code != 200 {
				t.Fatalf("allocate = %d %v", code, body)
			}
			if got := body["skip-egress"] == true; got != tt.want {
				t.Errorf("skip-egress in %v = %v, want %v", body, got, tt.want)
			}
			if _, present := body["skip-egress"]; present && !tt.want {
				t.Errorf("skip-egress present when egress is needed: %v", body)
			}
			code, body = do(t, "POST", ts.URL+"/ip", req)
			if _, present := body["skip-egress"]; code != 200 || present {
				t.Errorf("retried allocation = %d %v, want 200 without skip-egress", code, body)
			}
		})
	}
}
