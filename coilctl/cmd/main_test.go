package cmd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/coil-project/coil/coilctl/cmd"
	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// server is one embedded etcd shared by the package's tests; each test
// works under a key prefix of its own.
var server *etcdtest.Server

func TestMain(m *testing.M) {
	os.Exit(etcdtest.Main(m, func(s *etcdtest.Server) { server = s }))
}

// result is what one coilctl invocation produced.
type result struct {
	code   int
	stdout string
	stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// run executes coilctl in-process with exactly args.
func run(args ...string) result {
	var out, errOut bytes.Buffer
	code := cmd.Run(context.Background(), args, &out, &errOut)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// harness runs coilctl against the shared etcd under a fresh prefix and
// offers a model.Store on the same prefix to set up and check state.
type harness struct {
	t      *testing.T
	prefix string
	cli    *clientv3.Client
	st     *model.Store
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	cli := server.Client(t)
	prefix := etcdtest.Prefix(t)
	return &harness{t: t, prefix: prefix, cli: cli, st: model.New(cli, prefix)}
}

// run executes coilctl with args plus the flags that point it at the
// harness's etcd and prefix.
func (h *harness) run(args ...string) result {
	return run(append(args, "--etcd-endpoints", server.Endpoint, "--etcd-prefix", h.prefix)...)
}

// ok runs a command that must succeed and returns its stdout.
func (h *harness) ok(args ...string) string {
	h.t.Helper()
	r := h.run(args...)
	if r.code != 0 || r.stderr != "" {
		h.t.Fatalf("coilctl %s: %v", strings.Join(args, " "), r)
	}
	return r.stdout
}

// dump returns every key and value under the harness's prefix.
func (h *harness) dump(t testing.TB) map[string]string {
	t.Helper()
	resp, err := h.cli.Get(context.Background(), h.prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := make(map[string]string, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = string(kv.Value)
	}
	return m
}

// owner is a pod attachment on node for allocations made in tests.
func owner(node, pod string) model.Owner {
	return model.Owner{Node: node, Namespace: "ns-" + pod, Pod: pod, ContainerID: "cid-" + pod, Interface: "eth0"}
}

// acquire takes a block for owner through the model, as coild would.
func (h *harness) acquire(pool string, o model.Owner) (model.Block, model.Address) {
	h.t.Helper()
	b, a, err := h.st.AcquireBlock(context.Background(), pool, o)
	if err != nil {
		h.t.Fatal(err)
	}
	return b, a
}

// allocate allocates offset of block b for o through the model.
func (h *harness) allocate(b model.Block, offset int, o model.Owner) model.Address {
	h.t.Helper()
	a, err := h.st.AllocateAddress(context.Background(), b, offset, o)
	if err != nil {
		h.t.Fatal(err)
	}
	return a
}

// tableRows splits a table's output into rows of fields, header included.
func tableRows(out string) [][]string {
	var rows [][]string
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 0 {
			rows = append(rows, f)
		}
	}
	return rows
}

// assertJSON compares JSON output with the expected document, ignoring
// formatting. Time fields named in times are checked to be present and
// are then removed, since they depend on when the test ran.
func assertJSON(t *testing.T, got, want string, times ...string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad expectation: %v\n%s", err, want)
	}
	dropTimes(t, g, times)
	if !reflect.DeepEqual(g, w) {
		pretty, _ := json.MarshalIndent(g, "", "  ")
		t.Fatalf("JSON output differs\ngot:  %s\nwant: %s", pretty, want)
	}
}

func dropTimes(t *testing.T, v any, names []string) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		for _, n := range names {
			ts, ok := v[n]
			if !ok {
				continue
			}
			s, _ := ts.(string)
			if !strings.HasPrefix(s, "20") || !strings.HasSuffix(s, "Z") {
				t.Errorf("%s = %v, want an RFC 3339 UTC time", n, ts)
			}
			delete(v, n)
		}
		for _, e := range v {
			dropTimes(t, e, names)
		}
	case []any:
		for _, e := range v {
			dropTimes(t, e, names)
		}
	}
}

// failure is a command that must fail without touching etcd.
type failure struct {
	name string
	args []string
	code int
	// stderr must contain every one of these.
	stderr []string
}

// assertFailures runs each failure and checks its exit code, its message,
// that it printed nothing on stdout, and that etcd is unchanged.
func (h *harness) assertFailures(cases []failure) {
	h.t.Helper()
	for _, c := range cases {
		h.t.Run(c.name, func(t *testing.T) {
			before := h.dump(t)
			r := h.run(c.args...)
			if r.code != c.code {
				t.Errorf("exit code = %d, want %d\n%v", r.code, c.code, r)
			}
			if r.stdout != "" {
				t.Errorf("stdout not empty:\n%s", r.stdout)
			}
			if !strings.HasPrefix(r.stderr, "Error: ") {
				t.Errorf("stderr does not start with \"Error: \":\n%s", r.stderr)
			}
			for _, s := range c.stderr {
				if !strings.Contains(r.stderr, s) {
					t.Errorf("stderr lacks %q:\n%s", s, r.stderr)
				}
			}
			if after := h.dump(t); !reflect.DeepEqual(before, after) {
				t.Errorf("a failed command changed etcd:\nbefore %v\nafter  %v", before, after)
			}
		})
	}
}
