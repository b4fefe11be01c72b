package daemon_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/internal/testenv"
	nodetest "github.com/coil-project/coil/internal/testenv/node"
	"github.com/coil-project/coil/model"
)

// TestTCPListenerIsReadOnly: any process on the node can reach coild's
// loopback TCP listener, so it serves probes, status and metrics and
// refuses everything that changes state with 403, changing nothing; the
// plugin pointed at it fails with a configuration error that names the
// socket. (Before, POST /gc, DELETE /ip and POST /egress with the host's
// own netns path all worked there.)
func TestTCPListenerIsReadOnly(t *testing.T) {
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	n := env.NewNode(t, nodetest.Options{
		Pools:    []model.Pool{pool(t, "default", 4, "10.10.0.0/24")},
		HTTPAddr: fmt.Sprintf("127.0.0.1:%d", port),
	})
	p := nodetest.NewPod(t, "default", "victim")
	n.Add(p)
	base := "http://" + n.HTTPAddr

	for _, path := range []string{"/healthz", "/readyz", "/status", "/metrics"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s over TCP = %d, want 200", path, resp.StatusCode)
		}
	}

	ipPath := api.IPPath("default", "victim", p.ContainerID) + "?" + api.QueryInterface + "=eth0"
	for _, tc := range []struct{ method, path, body string }{
		{"POST", api.PathGC, `{"valid-attachments":[]}`},
		{"DELETE", ipPath, ""},
		{"GET", ipPath, ""},
		{"POST", api.PathIP, `{"pod-namespace":"default","pod-name":"intruder","container-id":"c1","interface":"eth0","netns":"/proc/self/ns/net"}`},
		{"POST", api.PathEgress, fmt.Sprintf(`{"pod-namespace":"default","pod-name":"victim","container-id":%q,"interface":"eth0","netns":"/proc/self/ns/net"}`, p.ContainerID)},
	} {
		req, err := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e api.ErrorResponse
		_ = json.Unmarshal(body, &e)
		if resp.StatusCode != http.StatusForbidden || e.Reason != api.ReasonForbidden || !strings.Contains(e.Error, "unix socket") {
			t.Errorf("%s %s over TCP = %d %s, want 403 forbidden naming the unix socket", tc.method, tc.path, resp.StatusCode, body)
		}
	}
	recs := n.AddressRecords()
	if len(recs) != 1 || recs[0].Pod != "victim" || recs[0].ContainerID != p.ContainerID {
		t.Errorf("records after the refused requests: %+v, want only the victim's", recs)
	}
	if got := p.Addrs(t); len(got) == 0 {
		t.Errorf("the victim lost its address")
	}

	// The client the plugin uses, pointed at the TCP listener, gets an
	// error it can tell from "try again" (retrying cannot help).
	c, err := api.NewClient(base)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Allocate(context.Background(), api.AllocRequest{PodNamespace: "default", PodName: "misconfigured", ContainerID: "c2", NetNS: p.NS.Path()})
	if !errors.Is(err, api.ErrForbidden) || errors.Is(err, api.ErrUnavailable) {
		t.Errorf("Allocate through the TCP listener = %v, want ErrForbidden", err)
	}
	if recs := n.AddressRecords(); len(recs) != 1 {
		t.Errorf("records after the refused allocation: %+v", recs)
	}
}
