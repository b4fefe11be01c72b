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

// scaleResults is part 3: many nodes filling one pool, then the clean-up of
// deleted nodes.
type scaleResults struct {
	nodes, podsPerNode, parallel, podParallel int
	poolSubnet                                string
	blockSize                                 int

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

	gcNodes       int
	gcTime        time.Duration
	gcScan        time.Duration
	gcBlocks      int
	gcAddresses   int64
	gcKV          kvCounts
	gcLeft        int
	gcAltNodes    int
	gcAltTime     time.Duration
	gcAltScan     time.Duration
	gcAltBlocks   int
	etcdAfterGC   etcdStatus
	addrKeysAfter int64
}

const scalePrefix = "/coil/"

func runScaleBench(ctx context.Context, o *options, tmp string, cl *cleanups, res *results) error {
	logf("part 3: %d simulated nodes x %d pods, %d nodes at a time, %d allocations at a time per node", o.nodes, o.podsNode, o.scalePar, o.podPar)
	etcd, err := startEtcd(ctx, o.etcdBin, tmp, "scale", cl)
	if err != nil {
		return err
	}
	defer etcd.Stop()
	cli, err := etcd.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	kv := newCountingKV(cli.KV, scalePrefix)
	st := model.NewWithKV(kv, scalePrefix)
	if err := st.Init(ctx); err != nil {
		return err
	}
	sr := &scaleResults{nodes: o.nodes, podsPerNode: o.podsNode, parallel: o.scalePar, podParallel: o.podPar, blockSize: 1 << o.blockBits}
	res.scale = sr
	perNodeBlocks := (o.podsNode + sr.blockSize - 1) / sr.blockSize
	sr.minBlocks = perNodeBlocks * o.nodes
	// Room for four times the blocks the pods need: a realistic fill
	// level, where nodes starting at random spots rarely meet.
	sr.poolSubnet = poolSubnetFor(sr.minBlocks*sr.blockSize*4, "10.64.0.0")
	sub, err := model.ParseSubnet(sr.poolSubnet, "")
	if err != nil {
		return err
	}
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: o.blockBits, Subnets: []model.Subnet{sub}}); err != nil {
		return err
	}

	names := make([]string, o.nodes)
	for i := range names {
		names[i] = fmt.Sprintf("node-%04d", i)
	}
	// Preallocate what the measurement keeps, so it is not counted as
	// allocator memory.
	allocLat := make([]latencies, o.nodes)
	for i := range allocLat {
		allocLat[i] = make(latencies, 0, o.podsNode)
	}
	restoreLat := make(latencies, o.nodes)
	allocators := make([]*ipam.Allocator, o.nodes)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heapBefore := int64(ms.HeapAlloc)

	before := kv.snapshot()
	var next atomic.Int64
	var failed atomic.Pointer[error]
	var progress atomic.Int64
	start := time.Now()
	var wg sync.WaitGroup
	for range o.scalePar {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= o.nodes || failed.Load() != nil || ctx.Err() != nil {
					return
				}
				// A store per node, as each coild has its own: a node's
				// concurrent address writes share transactions, different
				// nodes' never do.
				a, rt, err := fillNode(ctx, model.NewWithKV(kv, scalePrefix), names[i], o.podsNode, o.podPar, &allocLat[i])
				if err != nil {
					err = fmt.Errorf("node %s: %w", names[i], err)
					failed.CompareAndSwap(nil, &err)
					return
				}
				allocators[i] = a
				restoreLat[i] = rt
				if n := progress.Add(1); n%200 == 0 {
					debugf("  %d nodes filled", n)
				}
			}
		}()
	}
	wg.Wait()
	sr.fill = time.Since(start)
	if p := failed.Load(); p != nil {
		return *p
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	sr.kv = kv.snapshot().sub(before)

	runtime.GC()
	runtime.ReadMemStats(&ms)
	sr.heapDelta = int64(ms.HeapAlloc) - heapBefore
	sr.perNode = sr.heapDelta / int64(o.nodes)

	var all latencies
	for _, l := range allocLat {
		all = append(all, l...)
	}
	sr.allocs = len(all)
	sr.allocP50, sr.allocP99 = all.percentile(50), all.percentile(99)
	sr.restoreP50, sr.restoreP99 = restoreLat.percentile(50), restoreLat.percentile(99)
	for _, a := range allocators {
		b, _ := a.Usage()
		sr.blocks += b
		sr.maxPerNode = max(sr.maxPerNode, b)
	}
	if sr.etcdAfter, err = etcd.status(ctx, cli); err != nil {
		return err
	}
	if sr.addressKeys, err = countKeys(ctx, cli); err != nil {
		return err
	}
	runtime.KeepAlive(allocators)
	logf("  filled %d nodes in %s: %s allocations/s, %d blocks (%d minimum), %d lost block races, %s per node",
		o.nodes, fmtSeconds(sr.fill), fmtRate(float64(sr.allocs)/sr.fill.Seconds()), sr.blocks, sr.minBlocks, sr.kv.blockAcquireLost, fmtBytes(sr.perNode))

	// GC: the blocks of deleted nodes are released as coil-controller's
	// node worker does for a batch of queued deletions: one listing of all
	// blocks, then per node each block force-released guarded by its
	// creation revision, then the node record. (The controller also asks
	// the API server once per node to confirm the deletion; that request
	// is not part of this measurement.)
	sr.gcNodes = o.gcNodes
	before = kv.snapshot()
	start = time.Now()
	allBlocks, err := st.ListBlocks(ctx, "")
	if err != nil {
		return err
	}
	sr.gcScan = time.Since(start)
	byNode := map[string][]model.Block{}
	for _, b := range allBlocks {
		byNode[b.Node] = append(byNode[b.Node], b)
	}
	for _, name := range names[:o.gcNodes] {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, addrs, err := releaseBlocks(ctx, st, name, byNode[name])
		if err != nil {
			return err
		}
		sr.gcBlocks += n
		sr.gcAddresses += addrs
	}
	sr.gcTime = time.Since(start)
	sr.gcKV = kv.snapshot().sub(before)
	for _, name := range names[:o.gcNodes] {
		left, err := st.NodeBlocks(ctx, name)
		if err != nil {
			return err
		}
		sr.gcLeft += len(left)
	}
	logf("  GC of %d deleted nodes: %s (%s listing blocks), %d blocks and %s addresses released",
		o.gcNodes, fmtSeconds(sr.gcTime), fmtSeconds(sr.gcScan), sr.gcBlocks, fmtCount(sr.gcAddresses))

	// For comparison, the same clean-up listing the blocks once per node,
	// on the next nodes: what the controller did before it batched.
	if alt := min(o.gcNodes, o.nodes-o.gcNodes); alt > 0 {
		sr.gcAltNodes = alt
		start = time.Now()
		for _, name := range names[o.gcNodes : o.gcNodes+alt] {
			t0 := time.Now()
			blocks, err := st.NodeBlocks(ctx, name)
			if err != nil {
				return err
			}
			sr.gcAltScan += time.Since(t0)
			n, _, err := releaseBlocks(ctx, st, name, blocks)
			if err != nil {
				return err
			}
			sr.gcAltBlocks += n
		}
		sr.gcAltTime = time.Since(start)
		logf("  GC of %d more nodes reading blocks per node: %s", alt, fmtSeconds(sr.gcAltTime))
	}
	if sr.etcdAfterGC, err = etcd.status(ctx, cli); err != nil {
		return err
	}
	sr.addrKeysAfter, err = countKeys(ctx, cli)
	return err
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
				_, err := a.Allocate(ctx, "default", model.Owner{Namespace: benchNS, Pod: fmt.Sprintf("pod-%d", i), ContainerID: cid, Interface: "eth0"})
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

// releaseBlocks force-releases blocks of a deleted node and deletes its
// record: the owner-checked calls coil-controller makes.
func releaseBlocks(ctx context.Context, st *model.Store, node string, blocks []model.Block) (int, int64, error) {
	released := 0
	var addrs int64
	for _, b := range blocks {
		n, err := st.ForceReleaseBlock(ctx, b)
		if errors.Is(err, model.ErrBlockLost) {
			continue
		}
		if err != nil {
			return released, addrs, err
		}
		released++
		addrs += n
	}
	return released, addrs, st.DeleteNode(ctx, node)
}

// countKeys counts the address records under the store's prefix.
func countKeys(ctx context.Context, cli *clientv3.Client) (int64, error) {
	resp, err := cli.Get(ctx, scalePrefix+"addresses/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Count, nil
}
