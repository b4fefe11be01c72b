package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coil-project/coil/coild/ipam"
	"github.com/coil-project/coil/model"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// scaleResults is part 3: clusters of many nodes filling one pool each,
// every size on a fresh etcd, then a rolling restart of every coild and
// coil-controller's sweep and clean-up of deleted nodes at that size.
type scaleResults struct {
	parallel, podParallel, restartPar int
	blockSize                         int
	runs                              []*scaleRun
}

// scaleRun is one cluster size of part 3.
type scaleRun struct {
	nodes, podsPerNode int
	poolSubnet         string

	fill        time.Duration
	allocs      int
	allocP50    time.Duration
	allocP99    time.Duration
	restoreP50  time.Duration
	restoreP99  time.Duration
	kv          kvCounts
	blocks      int // owned by all nodes at the end
	minBlocks   int // what the pods need at the least
	maxPerNode  int
	heapDelta   int64
	perNode     int64
	etcdAfter   etcdStatus
	addressKeys int64

	restart *restartResult
	ctrl    *ctrlResult
}

const scalePrefix = "/coil/"

func runScaleBench(ctx context.Context, o *options, tmp string, cl *cleanups, res *results) error {
	sr := &scaleResults{parallel: o.scalePar, podParallel: o.podPar, restartPar: o.restartPar, blockSize: 1 << o.blockBits}
	res.scale = sr
	for _, z := range o.scaleSizes {
		run, err := scaleAt(ctx, o, tmp, cl, sr, z)
		if err != nil {
			return fmt.Errorf("%d nodes x %d pods: %w", z.nodes, z.pods, err)
		}
		sr.runs = append(sr.runs, run)
	}
	return nil
}

// scaleAt fills one fresh etcd with z.nodes nodes of z.pods pods, restarts
// every coild, and runs coil-controller over the result.
func scaleAt(ctx context.Context, o *options, tmp string, cl *cleanups, sr *scaleResults, z scaleSize) (*scaleRun, error) {
	logf("part 3: %d simulated nodes x %d pods, %d nodes at a time, %d allocations at a time per node", z.nodes, z.pods, o.scalePar, o.podPar)
	etcd, err := startEtcd(ctx, o.etcdBin, tmp, fmt.Sprintf("scale-%d", z.nodes), cl)
	if err != nil {
		return nil, err
	}
	defer etcd.Stop()
	cli, err := etcd.Client()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	kv := newCountingKV(cli.KV, scalePrefix)
	st := model.NewWithKV(kv, scalePrefix)
	r := &scaleRun{nodes: z.nodes, podsPerNode: z.pods}
	perNodeBlocks := (z.pods + sr.blockSize - 1) / sr.blockSize
	r.minBlocks = perNodeBlocks * z.nodes
	// Room for four times the blocks the pods need: a realistic fill
	// level, where nodes starting at random spots rarely meet.
	r.poolSubnet = poolSubnetFor(r.minBlocks*sr.blockSize*4, "10.64.0.0")
	if _, err := initPool(ctx, st, r.poolSubnet, o.blockBits); err != nil {
		return nil, err
	}

	names := make([]string, z.nodes)
	for i := range names {
		names[i] = fmt.Sprintf("node-%05d", i)
	}
	// Preallocate what the measurement keeps, so it is not counted as
	// allocator memory.
	allocLat := make([]latencies, z.nodes)
	for i := range allocLat {
		allocLat[i] = make(latencies, 0, z.pods)
	}
	restoreLat := make(latencies, z.nodes)
	allocators := make([]*ipam.Allocator, z.nodes)

	before := kv.snapshot()
	var progress atomic.Int64
	start := time.Now()
	err = forEach(ctx, z.nodes, o.scalePar, func(i int) error {
		// A store per node, as each coild has its own: a node's
		// concurrent address writes share transactions, different
		// nodes' never do.
		a, rt, err := fillNode(ctx, model.NewWithKV(kv, scalePrefix), names[i], z.pods, o.podPar, &allocLat[i])
		if err != nil {
			return fmt.Errorf("node %s: %w", names[i], err)
		}
		allocators[i] = a
		restoreLat[i] = rt
		if n := progress.Add(1); n%500 == 0 {
			debugf("  %d nodes filled", n)
		}
		return nil
	})
	r.fill = time.Since(start)
	if err != nil {
		return nil, err
	}
	r.kv = kv.snapshot().sub(before)

	var all latencies
	for _, l := range allocLat {
		all = append(all, l...)
	}
	r.allocs = len(all)
	r.allocP50, r.allocP99 = all.percentile(50), all.percentile(99)
	r.restoreP50, r.restoreP99 = restoreLat.percentile(50), restoreLat.percentile(99)
	for _, a := range allocators {
		b, _ := a.Usage()
		r.blocks += b
		r.maxPerNode = max(r.maxPerNode, b)
	}
	if r.etcdAfter, err = etcd.status(ctx, cli); err != nil {
		return nil, err
	}
	if r.addressKeys, err = countKeys(ctx, cli); err != nil {
		return nil, err
	}
	// Allocator memory: the live heap with the allocators, less the live
	// heap once they are dropped; garbage left by an earlier size or by
	// the fill is in neither.
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	with := int64(ms.HeapAlloc)
	runtime.KeepAlive(allocators)
	allocators = nil
	runtime.GC()
	runtime.ReadMemStats(&ms)
	r.heapDelta = with - int64(ms.HeapAlloc)
	r.perNode = r.heapDelta / int64(z.nodes)
	logf("  filled %d nodes in %s: %s allocations/s, %d blocks (%d minimum), %d lost block races, %s per node",
		z.nodes, fmtSeconds(r.fill), fmtRate(float64(r.allocs)/r.fill.Seconds()), r.blocks, r.minBlocks, r.kv.blockAcquireLost, fmtBytes(r.perNode))

	if err := compact(ctx, cli); err != nil {
		return nil, err
	}
	if r.restart, err = rollingRestart(ctx, etcd, st, kv, names, z.pods, o.restartPar); err != nil {
		return nil, fmt.Errorf("rolling restart: %w", err)
	}
	if r.ctrl, err = runController(ctx, etcd, cli, st, kv, names, z.pods, min(o.gcNodes, z.nodes/2)); err != nil {
		return nil, fmt.Errorf("coil-controller: %w", err)
	}
	return r, nil
}

// fillNode starts an allocator for node as coild does (node record, restore
// from etcd) and allocates pods addresses, par at a time.
func fillNode(ctx context.Context, st *model.Store, node string, pods, par int, lat *latencies) (*ipam.Allocator, time.Duration, error) {
	t0 := time.Now()
	if err := st.PutNode(ctx, model.Node{Name: node, Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}); err != nil {
		return nil, 0, err
	}
	a := ipam.New(st, node, nil)
	if err := a.Restore(ctx); err != nil {
		return nil, 0, err
	}
	restore := time.Since(t0)
	var mu sync.Mutex
	errs := make([]error, par)
	var wg sync.WaitGroup
	for w := range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < pods; i += par {
				cid := fmt.Sprintf("%s-c%d", node, i)
				t := time.Now()
				_, err := a.Allocate(ctx, "default", model.Owner{Namespace: benchNS, Pod: podName(node, i), ContainerID: cid, Interface: "eth0"})
				if err != nil {
					errs[w] = err
					return
				}
				d := time.Since(t)
				mu.Lock()
				*lat = append(*lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return a, restore, errors.Join(errs...)
}

// podName names the i-th pod of node, unique in the cluster as the
// controller's comparison with the API needs.
func podName(node string, i int) string { return fmt.Sprintf("%s-pod-%d", node, i) }

// countKeys counts the address records under the store's prefix.
func countKeys(ctx context.Context, cli *clientv3.Client) (int64, error) {
	resp, err := cli.Get(ctx, scalePrefix+"addresses/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Count, nil
}
