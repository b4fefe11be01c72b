package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/coil-project/coil/coild/ipam"
	"github.com/coil-project/coil/model"
)

// startupResults is part 4: a node's start-up (node record, restore of its
// blocks and addresses) in clusters of different sizes, each node as full
// as the others, with the per-node index and with the scan of every block
// the restore made before it.
type startupResults struct {
	podsPerNode int
	sample      int
	sizes       []startupSize
}

type startupSize struct {
	nodes      int
	fill       time.Duration
	keys       int64
	indexed    latencies
	scanned    latencies
	reqIndexed float64 // etcd requests per start-up
	reqScanned float64
}

// runStartupBench fills one etcd per cluster size with nodes of podsPerNode
// addresses each (written directly, as many coilds would have), then
// starts a sample of the nodes one after the other as coild does, and
// the same sample again finding its blocks by the scan.
func runStartupBench(ctx context.Context, o *options, tmp string, cl *cleanups, res *results) error {
	sr := &startupResults{podsPerNode: o.startupPods, sample: o.startupSample}
	res.startup = sr
	for _, n := range o.startupNodes {
		logf("part 4: start-up of %d of %d nodes with %d pods each, with the node index and with a scan of every block", o.startupSample, n, o.startupPods)
		sz, err := startupAt(ctx, o, tmp, cl, n)
		if err != nil {
			return fmt.Errorf("%d nodes: %w", n, err)
		}
		sr.sizes = append(sr.sizes, sz)
		logf("  %d nodes: filled in %s (%s keys); start-up p50/p99 indexed %s / %s, scanning %s / %s",
			n, fmtSeconds(sz.fill), fmtCount(sz.keys), fmtDur(sz.indexed.percentile(50)), fmtDur(sz.indexed.percentile(99)),
			fmtDur(sz.scanned.percentile(50)), fmtDur(sz.scanned.percentile(99)))
	}
	return nil
}

func startupAt(ctx context.Context, o *options, tmp string, cl *cleanups, nodes int) (startupSize, error) {
	sz := startupSize{nodes: nodes}
	etcd, err := startEtcd(ctx, o.etcdBin, tmp, fmt.Sprintf("startup-%d", nodes), cl)
	if err != nil {
		return sz, err
	}
	defer etcd.Stop()
	cli, err := etcd.Client()
	if err != nil {
		return sz, err
	}
	defer cli.Close()
	kv := newCountingKV(cli.KV, scalePrefix)
	st := model.NewWithKV(kv, scalePrefix)
	blockSize := 1 << o.blockBits
	perNode := (o.startupPods + blockSize - 1) / blockSize
	pool, err := initPool(ctx, st, poolSubnetFor(perNode*nodes*blockSize*2, "10.64.0.0"), o.blockBits)
	if err != nil {
		return sz, err
	}
	names := make([]string, nodes)
	for i := range names {
		names[i] = fmt.Sprintf("node-%05d", i)
	}

	// Fill: one node at a time per writer, each node's blocks, addresses
	// and index written in transactions of at most 100 operations, the
	// same records coild would have written.
	start := time.Now()
	var next atomic.Int64
	var failed atomic.Pointer[error]
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= nodes || failed.Load() != nil || ctx.Err() != nil {
					return
				}
				if err := writeNode(ctx, cli, st, &pool, names[i], i, perNode, o.startupPods); err != nil {
					failed.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	sz.fill = time.Since(start)
	if p := failed.Load(); p != nil {
		return sz, *p
	}
	if err := compact(ctx, cli); err != nil {
		return sz, err
	}
	status, err := etcd.status(ctx, cli)
	if err != nil {
		return sz, err
	}
	sz.keys = status.keys

	// The sample, spread over the cluster; one start-up at a time, so
	// the figures are latencies, not queueing.
	sample := min(o.startupSample, nodes)
	before := kv.snapshot()
	for j := range sample {
		node := names[j*nodes/sample]
		t0 := time.Now()
		if err := st.PutNode(ctx, model.Node{Name: node, Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}); err != nil {
			return sz, err
		}
		a := ipam.New(st, node, nil)
		if err := a.Restore(ctx); err != nil {
			return sz, err
		}
		sz.indexed = append(sz.indexed, time.Since(t0))
		if b, n := a.Usage(); b != perNode || n != o.startupPods {
			return sz, fmt.Errorf("node %s restored %d blocks and %d addresses, want %d and %d", node, b, n, perNode, o.startupPods)
		}
	}
	sz.reqIndexed = float64(kv.snapshot().sub(before).requests) / float64(sample)

	// The same with the restore before the index: every block listed to
	// find the node's, then its addresses.
	before = kv.snapshot()
	for j := range sample {
		node := names[j*nodes/sample]
		t0 := time.Now()
		if err := st.PutNode(ctx, model.Node{Name: node, Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}); err != nil {
			return sz, err
		}
		if _, err := st.Revision(ctx); err != nil {
			return sz, err
		}
		all, err := st.ListBlocks(ctx, "")
		if err != nil {
			return sz, err
		}
		found := 0
		for _, b := range all {
			if b.Node != node {
				continue
			}
			found++
			if _, err := st.BlockAddresses(ctx, b); err != nil {
				return sz, err
			}
		}
		sz.scanned = append(sz.scanned, time.Since(t0))
		if found != perNode {
			return sz, fmt.Errorf("scan found %d blocks of %s, want %d", found, node, perNode)
		}
	}
	sz.reqScanned = float64(kv.snapshot().sub(before).requests) / float64(sample)
	return sz, nil
}

// writeNode writes the records of one node as coild leaves them: its
// blocks (the i-th perNode blocks of the pool), pods addresses spread
// over them, the node's index entries and the index's completion mark.
func writeNode(ctx context.Context, cli *clientv3.Client, st *model.Store, p *model.Pool, node string, i, perNode, pods int) error {
	now := time.Now().UTC()
	var ops []clientv3.Op
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		_, err := cli.Txn(ctx).Then(ops...).Commit()
		ops = ops[:0]
		return err
	}
	left := pods
	for k := range perNode {
		index := i*perNode + k
		v4, v6 := p.BlockPrefixes(0, index)
		b := model.Block{Pool: p.Name, Subnet: 0, Index: index, IPv4: v4, IPv6: v6, Node: node, AcquiredAt: now}
		prefix := st.Prefix()
		// The block and its index entry in one transaction, as an
		// acquisition writes them (same creation revision).
		if _, err := cli.Txn(ctx).Then(
			clientv3.OpPut(prefix+"blocks/"+b.ID(), encodeJSON(b)),
			clientv3.OpPut(prefix+"nodeblocks/"+node+"/"+b.ID(), "{}"),
		).Commit(); err != nil {
			return err
		}
		for off := 0; off < b.Size() && left > 0; off++ {
			a4, a6 := b.AddressAt(off)
			a := model.Address{Pool: b.Pool, Subnet: 0, Block: index, Offset: off, IPv4: a4, IPv6: a6, CreatedAt: now,
				Owner: model.Owner{Node: node, Namespace: benchNS, Pod: fmt.Sprintf("pod-%d", off), ContainerID: fmt.Sprintf("%s-%d-%d", node, index, off), Interface: "eth0"}}
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("%saddresses/%s/%d", prefix, b.ID(), off), encodeJSON(a)))
			left--
			if len(ops) == 100 {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	ops = append(ops, clientv3.OpPut(st.Prefix()+"nodeblocks/"+node+"/.complete", fmt.Sprintf(`{"since":%q}`, now.Format(time.RFC3339Nano))))
	return flush()
}

func encodeJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
