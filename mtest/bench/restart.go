package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/coil-project/coil/coild/ipam"
	"github.com/coil-project/coil/model"
)

// restartResult is a rolling restart of every coild of a cluster: each
// restarted coild does what coild's start does against etcd (schema check,
// node record, ipam.Allocator.Restore through the node's index), par of
// them at a time.
type restartResult struct {
	par     int
	total   time.Duration
	lat     latencies
	kv      kvCounts
	sent    int64 // bytes etcd sent to its clients (gRPC, from its metrics)
	etcdCPU time.Duration
	selfCPU time.Duration
}

// rollingRestart restarts the coild of every node, par at a time, each
// slot taking the next node as soon as its restore is done: a DaemonSet
// rollout whose pods start back to back, the most etcd such a rollout
// sees at that concurrency.
func rollingRestart(ctx context.Context, etcd *etcdServer, st *model.Store, kv *countingKV, names []string, pods, par int) (*restartResult, error) {
	logf("  rolling restart of %d coilds, %d at a time", len(names), par)
	r := &restartResult{par: par, lat: make(latencies, len(names))}
	sent0, err := etcd.sentBytes(ctx)
	if err != nil {
		return nil, err
	}
	before := kv.snapshot()
	cpu := startCPU(etcd.PID())
	start := time.Now()
	err = forEach(ctx, len(names), par, func(i int) error {
		t0 := time.Now()
		n, err := restartNode(ctx, st, names[i])
		r.lat[i] = time.Since(t0)
		if err == nil && n != pods {
			err = fmt.Errorf("restored %d addresses, want %d", n, pods)
		}
		if err != nil {
			return fmt.Errorf("node %s: %w", names[i], err)
		}
		return nil
	})
	r.total = time.Since(start)
	cpu.stop()
	if err != nil {
		return nil, err
	}
	r.etcdCPU, r.selfCPU = cpu.etcdCPU, cpu.selfCPU
	r.kv = kv.snapshot().sub(before)
	sent1, err := etcd.sentBytes(ctx)
	if err != nil {
		return nil, err
	}
	r.sent = sent1 - sent0
	logf("  restarted %d coilds in %s: restore p50 %s, p99 %s, %.1f etcd requests and %s read per node, etcd CPU %s",
		len(names), fmtSeconds(r.total), fmtDur(r.lat.percentile(50)), fmtDur(r.lat.percentile(99)),
		float64(r.kv.requests)/float64(len(names)), fmtBytes(r.sent/int64(len(names))), fmtSeconds(r.etcdCPU))
	return r, nil
}

// restartNode is one coild's start against etcd, as coild's daemon.restore
// does it, and returns how many addresses the node got back.
func restartNode(ctx context.Context, st *model.Store, node string) (int, error) {
	if err := st.Init(ctx); err != nil {
		return 0, err
	}
	if err := st.PutNode(ctx, model.Node{Name: node, Addresses: []netip.Addr{netip.MustParseAddr("192.0.2.1")}}); err != nil {
		return 0, err
	}
	a := ipam.New(st, node, nil)
	if err := a.Restore(ctx); err != nil {
		return 0, err
	}
	_, n := a.Usage()
	return n, nil
}
