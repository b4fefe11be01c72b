package soak

import (
	"bufio"
	"context"
	"strconv"
	"strings"
	"sync"

	"github.com/coil-project/coil/mtest"
)

// etcdCounter adds up the unary gRPC requests etcd's members served, from
// their /metrics, across member restarts (which reset the counters).
type etcdCounter struct {
	mu    sync.Mutex
	last  map[int]map[string]float64
	total map[string]float64
}

// sample scrapes every running member and adds what each served since the
// last sample.
func (e *etcdCounter) sample(ctx context.Context, c *mtest.Cluster) error {
	var firstErr error
	for i := range c.EtcdMembers() {
		m, err := c.EtcdMetrics(ctx, i)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		e.add(i, parseUnary(m))
	}
	return firstErr
}

func (e *etcdCounter) add(member int, now map[string]float64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.last == nil {
		e.last = map[int]map[string]float64{}
		e.total = map[string]float64{}
	}
	prev := e.last[member]
	for method, v := range now {
		p, seen := prev[method]
		switch {
		case !seen && prev == nil:
			// The first sample of a member is the baseline.
		case v >= p:
			e.total[method] += v - p
		default:
			// Restarted: it counts from zero again.
			e.total[method] += v
		}
	}
	e.last[member] = now
}

// reset forgets the totals (keeping the baselines).
func (e *etcdCounter) reset() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.total = map[string]float64{}
}

// unary returns the totals by method, less the checker's own reads
// (etcdctl get and endpoint health: Range requests).
func (e *etcdCounter) unary(checkerReads int) map[string]float64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]float64{}
	for k, v := range e.total {
		out[k] = v
	}
	out["Range"] -= float64(checkerReads)
	if out["Range"] < 0 {
		out["Range"] = 0
	}
	return out
}

// parseUnary reads grpc_server_started_total of unary methods of the KV
// and Lease services (Maintenance is the checker's endpoint status).
func parseUnary(metrics string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(metrics))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, "grpc_server_started_total{") || !strings.Contains(l, `grpc_type="unary"`) {
			continue
		}
		if !strings.Contains(l, `grpc_service="etcdserverpb.KV"`) && !strings.Contains(l, `grpc_service="etcdserverpb.Lease"`) {
			continue
		}
		method := between(l, `grpc_method="`, `"`)
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil || method == "" {
			continue
		}
		out[method] += v
	}
	return out
}

func between(s, from, to string) string {
	i := strings.Index(s, from)
	if i < 0 {
		return ""
	}
	s = s[i+len(from):]
	j := strings.Index(s, to)
	if j < 0 {
		return ""
	}
	return s[:j]
}
