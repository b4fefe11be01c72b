package controller

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	kubeapitest "github.com/coil-project/coil/internal/testenv/kubeapi"
	"github.com/coil-project/coil/model"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// One embedded etcd serves every test (each under its own prefix); the
// kube-apiserver is started on first use and shared by the tests that
// need it, storing into the same etcd under its own prefix.
var (
	etcdServer *etcdtest.Server
	sharedAPI  = &kubeapitest.Shared{
		Options: kubeapitest.Options{Users: []kubeapitest.User{{Name: controllerUser}, {Name: noPodsUser}}},
		Setup:   setupRBAC,
	}
)

func TestMain(m *testing.M) {
	flag.Parse()
	s, err := etcdtest.Start(etcdtest.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	etcdServer = s
	sharedAPI.Options.EtcdEndpoint = s.Endpoint
	code := m.Run()
	// The server dies with this process anyway (Pdeathsig), but stopping
	// it before etcd lets it close its connections without errors.
	sharedAPI.Stop()
	s.Close()
	os.Exit(code)
}

// kubeAPI returns the shared kube-apiserver, starting it on first use.
func kubeAPI(t *testing.T) *kubeapitest.Server { return sharedAPI.Get(t) }

// newStore returns a store under a prefix of the test's own, with one
// pool "default" of /30 blocks (4 addresses each) in 10.100.0.0/24.
func newStore(t *testing.T) *model.Store {
	t.Helper()
	st := model.New(etcdServer.Client(t), etcdtest.Prefix(t))
	ctx := context.Background()
	if err := st.Init(ctx); err != nil {
		t.Fatal(err)
	}
	p := model.Pool{Name: "default", BlockSizeBits: 2,
		Subnets: []model.Subnet{{IPv4: netip.MustParsePrefix("10.100.0.0/24")}}}
	if err := st.CreatePool(ctx, p); err != nil {
		t.Fatal(err)
	}
	return st
}

// allocator hands out addresses in the store the way coild does: one
// block per node, filled offset by offset.
type allocator struct {
	st     *model.Store
	blocks map[string]model.Block
	next   map[string]int
}

func newAllocator(st *model.Store) *allocator {
	return &allocator{st: st, blocks: map[string]model.Block{}, next: map[string]int{}}
}

// alloc allocates an address for pod ns/name on node; newBlock forces a
// fresh block.
func (al *allocator) alloc(t *testing.T, nodeName, ns, name string, newBlock bool) model.Address {
	t.Helper()
	ctx := context.Background()
	owner := model.Owner{Node: nodeName, Namespace: ns, Pod: name, ContainerID: "cid-" + name, Interface: "eth0"}
	b, ok := al.blocks[nodeName]
	if !ok || newBlock || al.next[nodeName] >= b.Size() {
		b, a, err := al.st.AcquireBlock(ctx, "default", owner)
		if err != nil {
			t.Fatal(err)
		}
		al.blocks[nodeName] = b
		al.next[nodeName] = 1
		return a
	}
	a, err := al.st.AllocateAddress(ctx, b, al.next[nodeName], owner)
	if err != nil {
		t.Fatal(err)
	}
	al.next[nodeName]++
	return a
}

// exists reports whether the record of a is still in etcd (same revision).
func exists(t *testing.T, st *model.Store, a model.Address) bool {
	t.Helper()
	all, err := st.ListAddresses(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range all {
		if idOf(x) == idOf(a) {
			return true
		}
	}
	return false
}

func nodeBlocks(t *testing.T, st *model.Store, name string) int {
	t.Helper()
	bs, err := st.NodeBlocks(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return len(bs)
}

func hasNodeRecord(t *testing.T, st *model.Store, name string) bool {
	t.Helper()
	ns, err := st.ListNodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.Name == name {
			return true
		}
	}
	return false
}

// metricValue reads a counter or gauge from reg; labels select one series.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue series
				}
			}
			return value(m)
		}
	}
	return 0
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	return 0
}

// testLogger writes to the test log only with -v, to keep failures readable.
func testLogger(t *testing.T, name string) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, nil)).With("instance", name)
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// runInBackground runs fn in a goroutine owned by the test: the returned
// stop function cancels it and waits for it, and is also registered as a
// cleanup so a failing test never leaves it running.
func runInBackground(t *testing.T, fn func(ctx context.Context) error) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	var err error
	halt := func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = fmt.Errorf("did not stop within 30s")
			}
		})
		return err
	}
	var explicit atomic.Bool
	t.Cleanup(func() {
		// An error the test already received is the test's to judge.
		if err := halt(); err != nil && !explicit.Load() {
			t.Errorf("stop: %v", err)
		}
	})
	return func() error {
		explicit.Store(true)
		return halt()
	}
}
