package cmd_test

import (
	"context"
	"encoding/json"
	"os"
	"os/user"
	"strings"
	"testing"

	"github.com/coil-project/coil/coilctl/cmd"
	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
)

// TestAddressHistory allocates one address four times and frees it in
// each way Coil does: its node's coild, coilctl address free, a
// coil-controller leak reclaim, and the reclaim of the whole block of a
// deleted node.
func TestAddressHistory(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	h.ok("pool", "create", "default", "10.0.0.0/24", "2")
	coild := model.New(h.cli, h.prefix)
	coild.SetReleaser(model.Releaser{Component: "coild", Host: "n1"})
	ctrl := model.New(h.cli, h.prefix)
	ctrl.SetReleaser(model.Releaser{Component: "coil-controller", Host: "ctrl-0"})
	b, _ := h.acquire("default", owner("n1", "first"))
	ip, _ := b.AddressAt(1)

	a := h.allocate(b, 1, owner("n1", "a"))
	if err := coild.ReleaseAddress(ctx, a); err != nil {
		t.Fatal(err)
	}
	h.allocate(b, 1, owner("n1", "b"))
	h.ok("address", "free", ip.String())
	a = h.allocate(b, 1, owner("n1", "c"))
	if err := ctrl.ReleaseAddress(ctx, a); err != nil {
		t.Fatal(err)
	}
	h.allocate(b, 1, owner("n1", "d"))
	if _, err := ctrl.ForceReleaseBlock(ctx, b); err != nil {
		t.Fatal(err)
	}

	host, _ := os.Hostname()
	operator := host
	if u, err := user.Current(); err == nil {
		operator = u.Username + "@" + host
	}
	want := [][]string{
		{"allocated", "ns-a/a", "-"},
		{"released", "ns-a/a", "coild:n1"},
		{"allocated", "ns-b/b", "-"},
		{"reclaimed", "ns-b/b", "coilctl:" + operator},
		{"allocated", "ns-c/c", "-"},
		{"reclaimed", "ns-c/c", "coil-controller:ctrl-0"},
		{"allocated", "ns-d/d", "-"},
		{"reclaimed(block)", "ns-d/d", "coil-controller:ctrl-0"},
	}

	t.Run("table", func(t *testing.T) {
		out := h.ok("address", "history", ip.String())
		if !strings.Contains(out, "(complete: etcd has compacted none of it)") {
			t.Errorf("header does not say the history is complete:\n%s", out)
		}
		rows := tableRows(out)
		var events [][]string
		for i, r := range rows {
			if r[0] == "REVISION" {
				events = rows[i+1:]
			}
		}
		if len(events) != len(want) {
			t.Fatalf("%d events, want %d:\n%s", len(events), len(want), out)
		}
		for i, w := range want {
			got := events[i]
			if len(got) != 7 || got[2] != w[0] || got[3] != w[1] || got[6] != w[2] || got[5] != "n1" || got[1] == "-" {
				t.Errorf("event %d = %q, want event %s pod %s by %s on node n1 with a time", i, got, w[0], w[1], w[2])
			}
		}
	})

	t.Run("json", func(t *testing.T) {
		var v struct {
			IP           string `json:"ip"`
			Compacted    bool   `json:"compacted"`
			FromRevision int64  `json:"fromRevision"`
			Events       []struct {
				Revision int64   `json:"revision"`
				Time     *string `json:"time"`
				Event    string  `json:"event"`
				Holder   struct {
					Pod  string `json:"pod"`
					Node string `json:"node"`
				} `json:"holder"`
				By *struct {
					Component string `json:"component"`
					Host      string `json:"host"`
				} `json:"by"`
				Block string `json:"block"`
			} `json:"events"`
		}
		out := h.ok("address", "history", ip.String(), "-o", "json", "--since", "1h")
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if v.IP != ip.String() || v.Compacted || v.FromRevision != 1 || len(v.Events) != len(want) {
			t.Fatalf("output:\n%s", out)
		}
		last := v.Events[len(v.Events)-1]
		if last.Event != "reclaimed" || last.Block != b.ID() || last.By == nil || last.By.Component != "coil-controller" || last.Holder.Pod != "d" || last.Time == nil {
			t.Errorf("last event = %+v", last)
		}
		if first := v.Events[0]; first.By != nil || first.Holder.Node != "n1" {
			t.Errorf("first event = %+v", first)
		}
	})

	h.assertFailures([]failure{
		{"bad since", []string{"address", "history", ip.String(), "--since", "yesterday"}, cmd.ExitUsage, []string{`--since "yesterday" is not a positive duration`}},
		{"negative since", []string{"address", "history", ip.String(), "--since", "-1h"}, cmd.ExitUsage, []string{"not a positive duration"}},
		{"outside every pool", []string{"address", "history", "192.168.0.1"}, cmd.ExitFailure, []string{"no pool contains it"}},
		{"not an address", []string{"address", "history", "web"}, cmd.ExitFailure, []string{"is not an IP address"}},
	})
	if r := run("address", "history", ip.String(), "--etcd-endpoints", "@kube-system/etcd"); r.code != cmd.ExitFailure || !strings.Contains(r.stderr, "coilctl takes etcd URLs") {
		t.Errorf("a Service as endpoints: %v", r)
	}
}

// TestAddressHistoryCompacted runs against an etcd of its own, since
// compaction is server-wide.
func TestAddressHistoryCompacted(t *testing.T) {
	ctx := context.Background()
	srv, err := etcdtest.Start(etcdtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cli := srv.Client(t)
	prefix := etcdtest.Prefix(t)
	st := model.New(cli, prefix)
	coilctl := func(args ...string) string {
		t.Helper()
		r := run(append(args, "--etcd-endpoints", srv.Endpoint, "--etcd-prefix", prefix)...)
		if r.code != 0 {
			t.Fatalf("coilctl %s: %v", strings.Join(args, " "), r)
		}
		return r.stdout
	}
	coilctl("pool", "create", "default", "10.0.0.0/24", "2")
	b, _, err := st.AcquireBlock(ctx, "default", owner("n1", "first"))
	if err != nil {
		t.Fatal(err)
	}
	ip, _ := b.AddressAt(1)
	a, err := st.AllocateAddress(ctx, b, 1, owner("n1", "old"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseAddress(ctx, a); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AllocateAddress(ctx, b, 1, owner("n1", "held")); err != nil {
		t.Fatal(err)
	}
	rev, err := st.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}

	out := coilctl("address", "history", ip.String())
	for _, s := range []string{
		"etcd compacted the revisions before",
		"earlier events are lost",
		"--auto-compaction-retention",
		"ns-held/held (container cid-held, node n1)",
		"No allocation or release of this address in that range.",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("output lacks %q:\n%s", s, out)
		}
	}
	if strings.Contains(out, "ns-old") {
		t.Errorf("output shows a compacted allocation:\n%s", out)
	}
	var v struct {
		Compacted    bool  `json:"compacted"`
		FromRevision int64 `json:"fromRevision"`
		HeldAtStart  *struct {
			Pod string `json:"pod"`
		} `json:"heldAtStart"`
	}
	if err := json.Unmarshal([]byte(coilctl("address", "history", ip.String(), "--json")), &v); err != nil {
		t.Fatal(err)
	}
	if !v.Compacted || v.FromRevision != rev || v.HeldAtStart == nil || v.HeldAtStart.Pod != "held" {
		t.Errorf("JSON = %+v, want compacted from %d, held by pod held", v, rev)
	}
}
