package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
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
// the same sample again finding its blocks by the scan. The sizes' etcds
// run side by side and their start-ups alternate, one of each size in
// turn, so that what the machine does meanwhile (other processes, the
// page cache, CPU frequency) weighs on every size alike: the sizes are
// compared at the same moments, not minutes apart.
func runStartupBench(ctx context.Context, o *options, tmp string, cl *cleanups, res *results) error {
	sr := &startupResults{podsPerNode: o.startupPods, sample: o.startupSample}
	res.startup = sr
	clusters := make([]*startupCluster, 0, len(o.startupNodes))
	defer func() {
		for _, c := range clusters {
			c.close()
		}
	}()
	for _, n := range o.startupNodes {
		logf("part 4: filling a cluster of %d nodes with %d pods each", n, o.startupPods)
		c, err := fillStartupCluster(ctx, o, tmp, cl, n)
		if c != nil {
			clusters = append(clusters, c)
		}
		if err != nil {
			return fmt.Errorf("%d nodes: %w", n, err)
		}
		logf("  %d nodes: filled in %s (%s keys)", n, fmtSeconds(c.size.fill), fmtCount(c.size.keys))
	}
	logf("part 4: start-up of %d nodes per size, sizes alternating, with the node index and with a scan of every block", o.startupSample)
	for _, scan := range []bool{false, true} {
		for _, c := range clusters {
			c.before = c.kv.snapshot()
		}
		for j := range o.startupSample {
			for _, c := range clusters {
				if err := c.startOne(ctx, j, scan); err != nil {
					return fmt.Errorf("%d nodes: %w", c.size.nodes, err)
				}
			}
		}
		for _, c := range clusters {
			reqs := float64(c.kv.snapshot().sub(c.before).requests) / float64(c.sample())
			if scan {
				c.size.reqScanned = reqs
			} else {
				c.size.reqIndexed = reqs
			}
		}
	}
	for _, c := range clusters {
		sz := c.size
		sr.sizes = append(sr.sizes, sz)
		logf("  %d nodes: start-up p50/p99 indexed %s / %s, scanning %s / %s",
			sz.nodes, fmtDur(sz.indexed.percentile(50)), fmtDur(sz.indexed.percentile(99)),
			fmtDur(sz.scanned.percentile(50)), fmtDur(sz.scanned.percentile(99)))
	}
	return nil
}

// startupCluster is one cluster size of part 4: its etcd, filled, and the
// figures measured on it.
type startupCluster struct {
	o       *options
	etcd    *etcdServer
	cli     *clientv3.Client
	kv      *countingKV
	st      *model.Store
	names   []string
	perNode int
	size    startupSize
	before  kvCounts
}

func (c *startupCluster) close() {
	if c.cli != nil {
		c.cli.Close()
	}
	c.etcd.Stop()
}

// sample is how many of the cluster's nodes are started.
func (c *startupCluster) sample() int { return min(c.o.startupSample, len(c.names)) }

// fillStartupCluster starts an etcd and writes a cluster of nodes into it.
// The cluster is returned whenever its etcd runs, for the caller to stop.
func fillStartupCluster(ctx context.Context, o *options, tmp string, cl *cleanups, nodes int) (*startupCluster, error) {
	etcd, err := startEtcd(ctx, o.etcdBin, tmp, fmt.Sprintf("startup-%d", nodes), cl)
	if err != nil {
		return nil, err
	}
	c := &startupCluster{o: o, etcd: etcd, size: startupSize{nodes: nodes}}
	if c.cli, err = etcd.Client(); err != nil {
		return c, err
	}
	c.kv = newCountingKV(c.cli.KV, scalePrefix)
	c.st = model.NewWithKV(c.kv, scalePrefix)
	blockSize := 1 << o.blockBits
	c.perNode = (o.startupPods + blockSize - 1) / blockSize
	pool, err := initPool(ctx, c.st, poolSubnetFor(c.perNode*nodes*blockSize*2, "10.64.0.0"), o.blockBits)
	if err != nil {
		return c, err
	}
	c.names = make([]string, nodes)
	for i := range c.names {
		c.names[i] = fmt.Sprintf("node-%05d", i)
	}

	// Fill: one node at a time per writer, each node's blocks, addresses
	// and index written in transactions of at most 100 operations, the
	// same records coild would have written.
	start := time.Now()
	err = forEach(ctx, nodes, 8, func(i int) error {
		return writeNode(ctx, c.cli, c.st, &pool, c.names[i], i, c.perNode, o.startupPods)
	})
	c.size.fill = time.Since(start)
	if err != nil {
		return c, err
	}
	if err := compact(ctx, c.cli); err != nil {
		return c, err
	}
	status, err := etcd.status(ctx, c.cli)
	if err != nil {
		return c, err
	}
	c.size.keys = status.keys
	return c, nil
}

// startOne starts the j-th node of the sample (spread over the cluster)
// as coild does, or, with scan, finds its blocks the way the restore did
// before the node index: every block listed, then the node's addresses.
func (c *startupCluster) startOne(ctx context.Context, j int, scan bool) error {
	nodes := len(c.names)
	node := c.names[j*nodes/c.sample()]
	t0 := time.Now()
	if err := c.st.PutNode(ctx, model.Node{Name: node, Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}); err != nil {
		return err
	}
	if !scan {
		a := ipam.New(c.st, node, nil)
		if err := a.Restore(ctx); err != nil {
			return err
		}
		c.size.indexed = append(c.size.indexed, time.Since(t0))
		if b, n := a.Usage(); b != c.perNode || n != c.o.startupPods {
			return fmt.Errorf("node %s restored %d blocks and %d addresses, want %d and %d", node, b, n, c.perNode, c.o.startupPods)
		}
		return nil
	}
	if _, err := c.st.Revision(ctx); err != nil {
		return err
	}
	all, err := c.st.ListBlocks(ctx, "")
	if err != nil {
		return err
	}
	found := 0
	for _, b := range all {
		if b.Node != node {
			continue
		}
		found++
		if _, err := c.st.BlockAddresses(ctx, b); err != nil {
			return err
		}
	}
	c.size.scanned = append(c.size.scanned, time.Since(t0))
	if found != c.perNode {
		return fmt.Errorf("scan found %d blocks of %s, want %d", found, node, c.perNode)
	}
	return nil
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
