package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/coil-project/coil/coil-controller/controller"
	"github.com/coil-project/coil/model"
)

// leakEvery makes one pod in leakEvery absent from the API while its
// address stays in etcd: a leak for the controller's sweep to reclaim.
const leakEvery = 100

// ctrlResult is the real coil-controller (controller.New and Run) over a
// filled cluster: its sweep reclaiming leaks, a steady sweep, and the
// release of deleted nodes.
type ctrlResult struct {
	apiPods  int
	leaks    int
	leak     sweepCost // the sweep that reclaimed the leaks
	steady   sweepCost // the next one, with nothing to reclaim
	unsynced int       // sweeps before those that ran before the pod cache had synced

	gcNodes     int
	gcTime      time.Duration
	gcBatches   int
	gcBlocks    int64
	gcAddresses int64
	gcKV        kvCounts
	gcSent      int64
	gcLeft      int // blocks or node records of deleted nodes left
	etcdEnd     etcdStatus
}

// sweepCost is one sweep of the controller: its duration (the
// controller's own coil_controller_sweep_duration_seconds), the etcd
// requests and bytes it caused, and the addresses it reclaimed.
type sweepCost struct {
	time      time.Duration
	kv        kvCounts
	sent      int64
	reclaimed int64
}

// runController runs coil-controller twice over the filled cluster, with a
// fake Kubernetes API (client-go's fake clientset) holding its Nodes and
// Pods: first with one pod in leakEvery missing from the API, until its
// sweep has reclaimed their addresses and swept once more; then with
// gcNodes nodes and their pods gone from the API, as if deleted while no
// controller ran, until their blocks and node records are released.
func runController(ctx context.Context, etcd *etcdServer, cli *clientv3.Client, st *model.Store, kv *countingKV, names []string, pods, gcNodes int) (*ctrlResult, error) {
	r := &ctrlResult{gcNodes: gcNodes}
	api := newFakeAPI()
	for i, node := range names {
		if err := api.addNode(node); err != nil {
			return nil, err
		}
		for j := range pods {
			if (i*pods+j)%leakEvery == 0 {
				r.leaks++
				continue
			}
			if err := api.addPod(node, podName(node, j)); err != nil {
				return nil, err
			}
			r.apiPods++
		}
	}
	logf("  coil-controller: %d nodes and %d pods in a fake API, %d addresses leaked", len(names), r.apiPods, r.leaks)

	// Leak sweep. The first sweep usually runs before the pod cache has
	// synced (the controller does not wait for it) and reclaims nothing;
	// the sweep interval is short so the next ones follow soon.
	obs := &observedStore{Store: st}
	sweeps, err := runSweeps(ctx, obs, api, etcd, kv, r.leaks)
	if err != nil {
		return nil, err
	}
	for i, s := range sweeps {
		if s.reclaimed > 0 {
			r.leak, r.unsynced = s, i
			if i+1 < len(sweeps) {
				r.steady = sweeps[i+1]
			}
			break
		}
	}
	if r.leak.reclaimed != int64(r.leaks) {
		return nil, fmt.Errorf("the sweep reclaimed %d of %d leaked addresses", r.leak.reclaimed, r.leaks)
	}
	logf("  leak sweep: %s (%d reclaimed, %d etcd requests, %s read); steady sweep: %s (%d requests, %s read)",
		fmtSeconds(r.leak.time), r.leak.reclaimed, r.leak.kv.requests, fmtBytes(r.leak.sent),
		fmtSeconds(r.steady.time), r.steady.kv.requests, fmtBytes(r.steady.sent))

	// Node GC: the last gcNodes nodes and their pods leave the API while
	// no controller runs; the next controller's first sweep finds them
	// missing and its node worker releases them.
	gone := names[len(names)-gcNodes:]
	for _, node := range gone {
		if err := api.deleteNode(node); err != nil {
			return nil, err
		}
	}
	gs := &observedStore{Store: st, gcTarget: int64(gcNodes), done: make(chan struct{})}
	// The first block listing is the sweep's snapshot, the next are the
	// node worker's batches.
	gs.onListBlocks = func(n int64) {
		if n == 2 {
			gs.kv0 = kv.snapshot()
			gs.sent0, _ = etcd.sentBytes(ctx)
			gs.gcStart = time.Now()
		}
	}
	if err := runGC(ctx, gs, api); err != nil {
		return nil, err
	}
	r.gcTime = gs.gcEnd.Sub(gs.gcStart)
	r.gcBatches = int(gs.listBlocks.Load()) - 1
	r.gcBlocks, r.gcAddresses = gs.blocks.Load(), gs.addresses.Load()
	r.gcKV = kv.snapshot().sub(gs.kv0)
	sent, err := etcd.sentBytes(ctx)
	if err != nil {
		return nil, err
	}
	r.gcSent = sent - gs.sent0
	for _, node := range gone {
		left, err := st.NodeBlocks(ctx, node)
		if err != nil {
			return nil, err
		}
		r.gcLeft += len(left)
		if _, err := st.GetNode(ctx, node); err == nil {
			r.gcLeft++
		} else if !errors.Is(err, model.ErrNotFound) {
			return nil, err
		}
	}
	if r.etcdEnd, err = etcd.status(ctx, cli); err != nil {
		return nil, err
	}
	logf("  node GC of %d deleted nodes: %s in %d batches, %d blocks and %s addresses released, %d etcd requests, %d left",
		gcNodes, fmtSeconds(r.gcTime), r.gcBatches, r.gcBlocks, fmtCount(r.gcAddresses), r.gcKV.requests, r.gcLeft)
	return r, nil
}

// runSweeps runs a controller until one sweep has reclaimed addresses and
// one more has completed, and returns every sweep's cost.
func runSweeps(ctx context.Context, obs *observedStore, api *fakeAPI, etcd *etcdServer, kv *countingKV, leaks int) ([]sweepCost, error) {
	reg := &histogramCatcher{Registerer: prometheus.NewRegistry(), name: "coil_controller_sweep_duration_seconds"}
	c := controller.New(obs, api.client, controller.Options{
		ScanInterval: 3 * time.Second, LeakGrace: 0,
		Metrics: controller.NewMetrics(reg), Logger: slog.New(slog.DiscardHandler),
	})
	if reg.hist == nil {
		return nil, errors.New("the controller registers no sweep duration histogram")
	}
	// Every block listing starts a sweep (nothing else lists blocks
	// here): what etcd did between two starts is one sweep's work, exact
	// whatever the scheduling of the loop below. The read of etcd's
	// metrics adds a few ms to the sweep it starts.
	type mark struct {
		kv        kvCounts
		sent      int64
		reclaimed int64
	}
	marks := make(chan mark, 64)
	obs.onListBlocks = func(int64) {
		sent, _ := etcd.sentBytes(ctx)
		select {
		case marks <- mark{kv.snapshot(), sent, obs.releases.Load()}:
		default: // the loop below has stopped reading
		}
	}
	stop := runOwned(ctx, c.Run)
	defer stop()

	var starts []mark
	var times []time.Duration
	var count uint64
	var sum float64
	var sweeps []sweepCost
	reclaimedAt := -1
	deadline := time.Now().Add(5 * time.Minute)
	for reclaimedAt < 0 || len(sweeps) < reclaimedAt+2 {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("after %d sweeps, %d of %d leaked addresses reclaimed", len(sweeps), obs.releases.Load(), leaks)
		}
		select {
		case m := <-marks:
			starts = append(starts, m)
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		var m dto.Metric
		if err := reg.hist.Write(&m); err != nil {
			return nil, err
		}
		// Sweeps are seconds apart: one observation per change.
		if n, s := m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum(); n != count {
			times = append(times, seconds(s-sum))
			count, sum = n, s
		}
		// A sweep's work is known once the next one has started.
		for i := len(sweeps); i+1 < len(starts) && i < len(times); i++ {
			a, b := starts[i], starts[i+1]
			sweeps = append(sweeps, sweepCost{time: times[i], kv: b.kv.sub(a.kv), sent: b.sent - a.sent, reclaimed: b.reclaimed - a.reclaimed})
			if sweeps[i].reclaimed > 0 && reclaimedAt < 0 {
				reclaimedAt = i
			}
		}
	}
	return sweeps, stop()
}

// runGC runs a controller until its node worker has deleted the records of
// gs.gcTarget nodes.
func runGC(ctx context.Context, gs *observedStore, api *fakeAPI) error {
	c := controller.New(gs, api.client, controller.Options{
		ScanInterval: time.Hour, LeakGrace: time.Hour,
		Metrics: controller.NewMetrics(prometheus.NewRegistry()), Logger: slog.New(slog.DiscardHandler),
	})
	stop := runOwned(ctx, c.Run)
	defer stop()
	select {
	case <-gs.done:
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("node GC: %d of %d node records deleted after 5 minutes", gs.deletes.Load(), gs.gcTarget)
	case <-ctx.Done():
		return ctx.Err()
	}
	return stop()
}

// runOwned runs fn in a goroutine until the returned stop is called; stop
// cancels fn's context, waits for it and returns its error (once).
func runOwned(ctx context.Context, fn func(context.Context) error) (stop func() error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	var err error
	return func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// histogramCatcher registers the controller's metrics and keeps the
// histogram called name, to be read without gathering every metric.
type histogramCatcher struct {
	prometheus.Registerer
	name string
	hist prometheus.Histogram
}

func (h *histogramCatcher) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if hist, ok := c.(prometheus.Histogram); ok && strings.Contains(hist.Desc().String(), `"`+h.name+`"`) {
			h.hist = hist
		}
	}
	h.Registerer.MustRegister(cs...)
}

// observedStore is the model.Store the controller uses, counting what the
// bench needs to tell its phases apart: the node worker's block listings
// follow the sweep's one, and the GC is over when gcTarget node records
// are deleted.
type observedStore struct {
	*model.Store
	releases   atomic.Int64
	listBlocks atomic.Int64
	deletes    atomic.Int64
	blocks     atomic.Int64
	addresses  atomic.Int64

	// onListBlocks, if set, is called with the count before each block
	// listing; set before the controller runs.
	onListBlocks func(n int64)

	gcTarget       int64
	gcStart, gcEnd time.Time // written before done is closed
	kv0            kvCounts
	sent0          int64
	done           chan struct{}
	endOnce        sync.Once
}

func (s *observedStore) ListBlocks(ctx context.Context, pool string) ([]model.Block, error) {
	n := s.listBlocks.Add(1)
	if s.onListBlocks != nil {
		s.onListBlocks(n)
	}
	return s.Store.ListBlocks(ctx, pool)
}

func (s *observedStore) ReleaseAddress(ctx context.Context, a model.Address) error {
	err := s.Store.ReleaseAddress(ctx, a)
	if err == nil {
		s.releases.Add(1)
	}
	return err
}

func (s *observedStore) ForceReleaseBlock(ctx context.Context, b model.Block) (int64, error) {
	n, err := s.Store.ForceReleaseBlock(ctx, b)
	if err == nil {
		s.blocks.Add(1)
		s.addresses.Add(n)
	}
	return n, err
}

func (s *observedStore) DeleteNode(ctx context.Context, name string) error {
	err := s.Store.DeleteNode(ctx, name)
	if err == nil && s.deletes.Add(1) == s.gcTarget && s.done != nil {
		s.endOnce.Do(func() {
			s.gcEnd = time.Now()
			close(s.done)
		})
	}
	return err
}

// fakeAPI is client-go's fake clientset holding the cluster's Nodes and
// Pods. The fake ignores field selectors, so the controller's quorum list
// of the pods bound to one node is answered from an index by node, as the
// API server answers it from its watch cache's index.
type fakeAPI struct {
	client *fake.Clientset
	mu     sync.Mutex
	byNode map[string][]*corev1.Pod
}

var podsResource = corev1.SchemeGroupVersion.WithResource("pods")
var nodesResource = corev1.SchemeGroupVersion.WithResource("nodes")

func newFakeAPI() *fakeAPI {
	// The simple tracker: the field-managed one of NewClientset costs a
	// structured-merge conversion per object, minutes for 150,000 pods.
	f := &fakeAPI{client: fake.NewSimpleClientset(), byNode: map[string][]*corev1.Pod{}}
	f.client.PrependReactor("list", "pods", func(action k8stesting.Action) (bool, runtime.Object, error) {
		la, ok := action.(k8stesting.ListAction)
		if !ok || la.GetListRestrictions().Fields == nil {
			return false, nil, nil
		}
		node, ok := la.GetListRestrictions().Fields.RequiresExactMatch("spec.nodeName")
		if !ok {
			return false, nil, nil
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		list := &corev1.PodList{}
		for _, p := range f.byNode[node] {
			list.Items = append(list.Items, *p.DeepCopy())
		}
		return true, list, nil
	})
	return f
}

func (f *fakeAPI) addNode(name string) error {
	return f.client.Tracker().Add(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}})
}

func (f *fakeAPI) addPod(node, name string) error {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: name},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if err := f.client.Tracker().Add(p); err != nil {
		return err
	}
	f.mu.Lock()
	f.byNode[node] = append(f.byNode[node], p)
	f.mu.Unlock()
	return nil
}

// deleteNode removes a Node and its pods. Only while no informer watches:
// the fake's watchers panic when their buffer of 100 events is full.
func (f *fakeAPI) deleteNode(node string) error {
	f.mu.Lock()
	pods := f.byNode[node]
	delete(f.byNode, node)
	f.mu.Unlock()
	for _, p := range pods {
		if err := f.client.Tracker().Delete(podsResource, p.Namespace, p.Name); err != nil {
			return err
		}
	}
	return f.client.Tracker().Delete(nodesResource, "", node)
}
