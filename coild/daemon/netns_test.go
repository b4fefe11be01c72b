package daemon_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/coil-project/coil/coild/api"
	nodetest "github.com/coil-project/coil/internal/testenv/node"
	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/nodenet"
	"golang.org/x/sys/unix"
)

// TestNetNSPathsAreChecked: a netns path in a request is not trusted.
// coild refuses with 400, storing and programming nothing, a path that is
// the node's own namespace, no network namespace at all, or (for egress) a
// namespace that does not hold the attachment's address.
func TestNetNSPathsAreChecked(t *testing.T) {
	n := env.NewNode(t, nodetest.Options{Pools: []model.Pool{pool(t, "default", 4, "10.10.0.0/24")}})
	ctx := context.Background()
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"the node's own namespace", n.NS.Path(), "host's own"},
		{"a regular file", "/etc/hostname", "not a network namespace"},
		{"a FIFO", fifo, "not a network namespace"},
		{"another kind of namespace", "/proc/self/ns/uts", "not a network namespace"},
		{"a relative path", "proc/self/ns/net", "not a network namespace"},
		{"a missing path", "/nonexistent/netns", "not a network namespace"},
	} {
		t.Run("POST /ip with "+tc.name, func(t *testing.T) {
			_, err := n.Client.Allocate(ctx, api.AllocRequest{PodNamespace: "default", PodName: "intruder", ContainerID: "c-" + tc.name, NetNS: tc.path})
			var apiErr *api.APIError
			if !errors.As(err, &apiErr) || apiErr.Status != 400 || !strings.Contains(apiErr.Message, tc.want) {
				t.Errorf("Allocate = %v, want 400 saying %q", err, tc.want)
			}
			if recs := n.AddressRecords(); len(recs) != 0 {
				t.Errorf("records stored: %+v", recs)
			}
		})
	}

	p := nodetest.NewPod(t, "default", "owner")
	n.Add(p)
	other := nodetest.NewPod(t, "default", "other")
	n.Add(other)
	for _, tc := range []struct{ name, path, want string }{
		{"the node's own namespace", n.NS.Path(), "host's own"},
		{"another pod's namespace", other.NS.Path(), "does not hold the pod's addresses"},
		{"a regular file", "/etc/hostname", "not a network namespace"},
	} {
		t.Run("POST /egress with "+tc.name, func(t *testing.T) {
			_, err := n.Client.SetupEgress(ctx, api.EgressRequest{PodNamespace: "default", PodName: "owner", ContainerID: p.ContainerID, NetNS: tc.path})
			var apiErr *api.APIError
			if !errors.As(err, &apiErr) || apiErr.Status != 400 || !strings.Contains(apiErr.Message, tc.want) {
				t.Errorf("SetupEgress = %v, want 400 saying %q", err, tc.want)
			}
		})
	}
	// The pod's own namespace passes.
	if _, err := n.Client.SetupEgress(ctx, api.EgressRequest{PodNamespace: "default", PodName: "owner", ContainerID: p.ContainerID, NetNS: p.NS.Path()}); err != nil {
		t.Errorf("SetupEgress with the pod's own namespace: %v", err)
	}
	if s, err := nodenet.SummarizeEgress(n.NS.Path()); err != nil || s != (nodenet.EgressSummary{}) {
		t.Errorf("the node's namespace holds egress settings %+v (%v)", s, err)
	}
}
