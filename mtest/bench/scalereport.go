package main

import (
	"fmt"
	"time"
)

// sizeName names a cluster size of part 3 in headers and targets.
func (r *scaleRun) sizeName() string {
	return fmt.Sprintf("%s x %d", fmtCount(int64(r.nodes)), r.podsPerNode)
}

// defaultScanInterval is coil-controller's default --scan-interval: a
// sweep is cut off when the next one is due.
const defaultScanInterval = 5 * time.Minute

// tables are part 3's: one column per cluster size, then the reference.
func (s *scaleResults) tables() []table {
	header := []string{"metric"}
	for _, r := range s.runs {
		header = append(header, r.sizeName())
	}
	header = append(header, "reference")
	row := func(metric, ref string, cell func(r *scaleRun) string) []string {
		cells := []string{metric}
		for _, r := range s.runs {
			cells = append(cells, cell(r))
		}
		return append(cells, ref)
	}
	var ts []table

	t := table{id: "scale", title: "3. Scale: nodes x pods from one pool, each size on a fresh etcd", header: header}
	t.rows = [][]string{
		row("pods", "Kubernetes' limit: 150,000", func(r *scaleRun) string { return fmtCount(int64(r.allocs)) }),
		row("total time to fill", "", func(r *scaleRun) string { return fmtSeconds(r.fill) }),
		row("allocations/s", fmt.Sprintf("coil v1: %s at 16 clients", fmtRate(refV1At16)), func(r *scaleRun) string {
			return fmtRate(float64(r.allocs) / r.fill.Seconds())
		}),
		row("allocation latency p50 / p99", "", func(r *scaleRun) string { return fmtDur(r.allocP50) + " / " + fmtDur(r.allocP99) }),
		row("node start-up during the fill (node record + restore) p50 / p99", "", func(r *scaleRun) string {
			return fmtDur(r.restoreP50) + " / " + fmtDur(r.restoreP99)
		}),
		row("etcd requests per allocation", "1 + 2 per block taken, + a node's start-up", func(r *scaleRun) string {
			return fmt.Sprintf("%.3f", float64(r.kv.requests)/float64(max(r.allocs, 1)))
		}),
		row("  of which a node's start-up (requests - allocations - 2 per block taken) / nodes", "", func(r *scaleRun) string {
			return fmt.Sprintf("%.1f", r.startupRequests())
		}),
		row("block acquisitions (needed at the least)", "", func(r *scaleRun) string {
			return fmt.Sprintf("%s (%s)", fmtCount(r.kv.blockAcquire), fmtCount(int64(r.minBlocks)))
		}),
		row("block keys read per block acquisition (probed, or listed)", "a listing of the pool's taken blocks before: up to one per node", func(r *scaleRun) string {
			return fmt.Sprintf("%.1f", r.kv.keysPerAcquisition())
		}),
		row("lost block races (acquisition transactions that failed)", "0 ideal", func(r *scaleRun) string { return fmtCount(r.kv.blockAcquireLost) }),
		row("lost address races", "0 ideal", func(r *scaleRun) string { return fmtCount(r.kv.addrAllocLost) }),
		row("blocks per node, max (needed)", "", func(r *scaleRun) string {
			return fmt.Sprintf("%d (%d)", r.maxPerNode, (r.podsPerNode+s.blockSize-1)/s.blockSize)
		}),
		row("etcd keys (all)", "", func(r *scaleRun) string { return fmtCount(r.etcdAfter.keys) }),
		row("address records", "one per pod", func(r *scaleRun) string { return fmtCount(r.addressKeys) }),
		row("etcd database size (in use)", "etcd's default quota: 2 GiB", func(r *scaleRun) string {
			return fmtBytes(r.etcdAfter.dbSize) + " (" + fmtBytes(r.etcdAfter.dbSizeInUse) + ")"
		}),
		row("allocator memory per node (live heap with the allocators less without, / nodes)", "well under 1 MiB", func(r *scaleRun) string { return fmtBytes(r.perNode) }),
		row("  per pod", "", func(r *scaleRun) string { return fmtBytes(r.perNode / int64(r.podsPerNode)) }),
	}
	t.note = fmt.Sprintf("Every node is a real ipam.Allocator in this process with a model.Store of its own, as each coild has (a node's concurrent address writes share transactions, different nodes' never do), all over one etcd client; %d nodes start "+
		"(node record, Restore from etcd) and fill at a time, %d allocations at a time within a node. Blocks of %d addresses; the pool "+
		"has four times the blocks the pods need (%s).", s.parallel, s.podParallel, s.blockSize, s.pools())
	ts = append(ts, t)

	t = table{id: "restart", title: fmt.Sprintf("3b. Rolling restart of every coild, %d at a time", s.restartPar), header: header}
	t.rows = [][]string{
		row("coilds restarted", "", func(r *scaleRun) string { return fmtCount(int64(len(r.restart.lat))) }),
		row("total time", "", func(r *scaleRun) string { return fmtSeconds(r.restart.total) }),
		row("restarts/s", "", func(r *scaleRun) string { return fmtRate(float64(len(r.restart.lat)) / r.restart.total.Seconds()) }),
		row("restore p50 / p99 (schema, node record, restore)", "", func(r *scaleRun) string {
			return fmtDur(r.restart.lat.percentile(50)) + " / " + fmtDur(r.restart.lat.percentile(99))
		}),
		row("etcd requests per coild", "", func(r *scaleRun) string {
			return fmt.Sprintf("%.1f", float64(r.restart.kv.requests)/float64(len(r.restart.lat)))
		}),
		row("bytes etcd sent per coild", "", func(r *scaleRun) string { return fmtBytes(r.restart.sent / int64(len(r.restart.lat))) }),
		row("bytes etcd sent in all", "", func(r *scaleRun) string { return fmtBytes(r.restart.sent) }),
		row("etcd CPU in all (per coild)", "", func(r *scaleRun) string {
			return fmt.Sprintf("%s (%s)", fmtSeconds(r.restart.etcdCPU), fmtDur(r.restart.etcdCPU/time.Duration(len(r.restart.lat))))
		}),
		row("etcd CPU share of the rollout", fmt.Sprintf("%d cores", s.cpus()), func(r *scaleRun) string {
			return fmt.Sprintf("%.2f cores", r.restart.etcdCPU.Seconds()/r.restart.total.Seconds())
		}),
	}
	t.note = fmt.Sprintf("After the fill, every node's coild restarts as coild's start does it against etcd: the schema check, its node record, "+
		"then ipam.Allocator.Restore (revision, the node's index and block keys, the addresses of each block), and must get all its "+
		"addresses back. %d restart at a time, a slot taking the next node as soon as its restore is done: a DaemonSet rollout with "+
		"maxUnavailable %d whose pods start back to back, so etcd sees more than a real rollout, where a slot also waits for the old "+
		"pod to stop and the new one to start (%d is 1%% of 5,000 nodes: at 10%%, 500 at a time, a rollout would finish in a few of "+
		"these slots' turns; one at a time would take 5,000 pod restarts end to end). All coilds share this process's etcd client; "+
		"bytes are etcd's own count of what it sent to gRPC clients; CPU is the etcd process's. A restore reads the node's own keys only: "+
		"its cost follows its blocks (4 at 110 pods, 1 at 30: 5 requests plus one per block), not the cluster.", s.restartPar, s.restartPar, s.restartPar)
	ts = append(ts, t)

	t = table{id: "controller", title: "3c. coil-controller: leak sweep and clean-up of deleted nodes", header: header}
	t.rows = [][]string{
		row("pods in the API (leaked addresses: pod gone, record kept)", "", func(r *scaleRun) string {
			return fmt.Sprintf("%s (%s)", fmtCount(int64(r.ctrl.apiPods)), fmtCount(int64(r.ctrl.leaks)))
		}),
		row("sweep that reclaimed the leaks", fmt.Sprintf("cut off after --scan-interval, %s", defaultScanInterval), func(r *scaleRun) string {
			return fmtSeconds(r.ctrl.leak.time)
		}),
		row("  etcd requests; bytes read", "", func(r *scaleRun) string {
			return fmt.Sprintf("%s; %s", fmtCount(r.ctrl.leak.kv.requests), fmtBytes(r.ctrl.leak.sent))
		}),
		row("next sweep, nothing to reclaim", "", func(r *scaleRun) string { return fmtSeconds(r.ctrl.steady.time) }),
		row("  etcd requests; bytes read", "", func(r *scaleRun) string {
			return fmt.Sprintf("%s; %s", fmtCount(r.ctrl.steady.kv.requests), fmtBytes(r.ctrl.steady.sent))
		}),
		row("sweeps before the pod cache had synced", "", func(r *scaleRun) string { return fmt.Sprint(r.ctrl.unsynced) }),
		row("deleted nodes cleaned up", "", func(r *scaleRun) string { return fmtCount(int64(r.ctrl.gcNodes)) }),
		row("  time to release their blocks and records", "< 10 s for 500", func(r *scaleRun) string { return fmtSeconds(r.ctrl.gcTime) }),
		row("  batches (one block listing each)", "", func(r *scaleRun) string { return fmt.Sprint(r.ctrl.gcBatches) }),
		row("  blocks; addresses released", "", func(r *scaleRun) string {
			return fmt.Sprintf("%s; %s", fmtCount(r.ctrl.gcBlocks), fmtCount(r.ctrl.gcAddresses))
		}),
		row("  etcd requests; bytes read", "", func(r *scaleRun) string {
			return fmt.Sprintf("%s; %s", fmtCount(r.ctrl.gcKV.requests), fmtBytes(r.ctrl.gcSent))
		}),
		row("  blocks or records of deleted nodes left", "0", func(r *scaleRun) string { return fmt.Sprint(r.ctrl.gcLeft) }),
		row("etcd keys at the end", "", func(r *scaleRun) string { return fmtCount(r.ctrl.etcdEnd.keys) }),
	}
	t.note = fmt.Sprintf("The real coil-controller (controller.New and Run, this tree's code) on the filled etcd, with client-go's fake "+
		"clientset as the Kubernetes API holding every Node and Pod (so the API side costs what the fake costs; it ignores field "+
		"selectors, so the controller's quorum list of the pods bound to a deleted node is answered from an index by node, as the "+
		"API server's watch cache does). Leak sweep: one pod in %d is missing from the API while its address stays in etcd, "+
		"--leak-grace 0, a sweep every 3 s; times are the controller's coil_controller_sweep_duration_seconds (reading every block, "+
		"address and node record, comparing with the informer caches, refreshing the metrics, reclaiming: an API GET and a guarded "+
		"delete per leak). Clean-up: the last nodes and their pods leave the API while no controller runs; a new controller's first "+
		"sweep finds them missing and its node worker releases them, each after the checks it makes (the Node confirmed gone by a "+
		"GET, no pod bound to it, its liveness key expired); timed from the worker's first block listing to the last node record "+
		"deleted.", leakEvery)
	ts = append(ts, t)
	return ts
}

// startupRequests is what the fill's etcd requests leave for each node's
// start-up once every allocation (one transaction) and every block taken
// (two reads more: the pool and the block keys) are counted.
func (r *scaleRun) startupRequests() float64 {
	return float64(r.kv.requests-int64(r.allocs)-2*(r.kv.blockAcquire+r.kv.blockAcquireLost)) / float64(r.nodes)
}

func (s *scaleResults) pools() string {
	var out string
	for i, r := range s.runs {
		if i > 0 {
			out += ", "
		}
		out += r.sizeName() + ": " + r.poolSubnet
	}
	return out
}

func (s *scaleResults) cpus() int { return machineInfo().cpus }

// verdicts are part 3's rows of the Targets table. Where the issue sets no
// goal, the largest cluster is shown beside the first (the reference) so
// that a per-node cost growing with the cluster shows.
func (s *scaleResults) verdicts() []verdict {
	var vs []verdict
	for _, r := range s.runs {
		v := verdict{target: fmt.Sprintf("allocator memory per node, %s", r.sizeName()), measured: fmtBytes(r.perNode), goal: "well under 1 MiB"}
		v.met = r.perNode < 1<<20
		if !v.met {
			v.outcome = missBy(float64(r.perNode), 1<<20, false)
		}
		vs = append(vs, v)
	}
	for _, r := range s.runs {
		c := r.ctrl
		limit := 10 * time.Second * time.Duration(c.gcNodes) / 500
		v := verdict{target: fmt.Sprintf("coil-controller clean-up of %d deleted nodes, %s", c.gcNodes, r.sizeName()),
			measured: fmtSeconds(c.gcTime), goal: fmt.Sprintf("< %s (10 s per 500 nodes)", fmtSeconds(limit))}
		v.met = c.gcTime < limit && c.gcLeft == 0
		switch {
		case c.gcLeft > 0:
			v.outcome = fmt.Sprintf("FAILED: %d blocks or records left", c.gcLeft)
		case !v.met:
			v.outcome = missBy(c.gcTime.Seconds(), limit.Seconds(), false)
		}
		vs = append(vs, v)
	}
	for _, r := range s.runs {
		c := r.ctrl
		v := verdict{target: fmt.Sprintf("coil-controller sweep, %s addresses (%s)", fmtCount(r.addressKeys), r.sizeName()),
			measured: fmt.Sprintf("%s reclaiming %d leaks, %s with none", fmtSeconds(c.leak.time), c.leak.reclaimed, fmtSeconds(c.steady.time)),
			goal:     fmt.Sprintf("< %s (--scan-interval, where it is cut off)", defaultScanInterval)}
		v.met = max(c.leak.time, c.steady.time) < defaultScanInterval
		vs = append(vs, v)
	}
	if len(s.runs) < 2 {
		return vs
	}
	a, b := s.runs[0], s.runs[len(s.runs)-1]
	vs = append(vs,
		verdict{target: fmt.Sprintf("etcd requests per allocation, %s vs %s", b.sizeName(), a.sizeName()),
			measured: fmt.Sprintf("%.3f vs %.3f; of which per node start-up %.1f vs %.1f requests", float64(b.kv.requests)/float64(b.allocs),
				float64(a.kv.requests)/float64(a.allocs), b.startupRequests(), a.startupRequests())},
		verdict{target: fmt.Sprintf("block keys read per block acquisition, %s vs %s", b.sizeName(), a.sizeName()),
			measured: fmt.Sprintf("%.1f vs %.1f", b.kv.keysPerAcquisition(), a.kv.keysPerAcquisition())},
		verdict{target: fmt.Sprintf("lost block races, %s vs %s", b.sizeName(), a.sizeName()),
			measured: fmt.Sprintf("%d vs %d", b.kv.blockAcquireLost, a.kv.blockAcquireLost)},
		verdict{target: fmt.Sprintf("allocator memory per pod, %s vs %s", b.sizeName(), a.sizeName()),
			measured: fmt.Sprintf("%s vs %s", fmtBytes(b.perNode/int64(b.podsPerNode)), fmtBytes(a.perNode/int64(a.podsPerNode)))},
		verdict{target: fmt.Sprintf("rolling restart, %d at a time: restore p50 / p99, etcd requests per coild, %s vs %s", s.restartPar, b.sizeName(), a.sizeName()),
			measured: fmt.Sprintf("%s / %s vs %s / %s (%s); %.1f vs %.1f", fmtDur(b.restart.lat.percentile(50)), fmtDur(b.restart.lat.percentile(99)),
				fmtDur(a.restart.lat.percentile(50)), fmtDur(a.restart.lat.percentile(99)),
				fmtRatio(float64(b.restart.lat.percentile(50))/float64(a.restart.lat.percentile(50))),
				float64(b.restart.kv.requests)/float64(b.nodes), float64(a.restart.kv.requests)/float64(a.nodes))},
		verdict{target: fmt.Sprintf("rolling restart of %s coilds, %d at a time: total, etcd CPU", fmtCount(int64(b.nodes)), s.restartPar),
			measured: fmt.Sprintf("%s, %s (%s per coild, %s sent per coild)", fmtSeconds(b.restart.total), fmtSeconds(b.restart.etcdCPU),
				fmtDur(b.restart.etcdCPU/time.Duration(b.nodes)), fmtBytes(b.restart.sent/int64(b.nodes)))},
	)
	return vs
}
