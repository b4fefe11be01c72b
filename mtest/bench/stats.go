package main

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// latencies are the durations of the operations of one phase.
type latencies []time.Duration

// percentile returns the p-th percentile (0 < p <= 100), nearest rank.
func (l latencies) percentile(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	rank = min(max(rank, 1), len(s))
	return s[rank-1]
}

// phaseResult is the outcome of one measured phase: ops operations by
// clients concurrent workers in elapsed wall time.
type phaseResult struct {
	clients int
	ops     int
	elapsed time.Duration
	p50     time.Duration
	p99     time.Duration
	errors  int
	// cpu is the CPU time etcd and this process used, when measured.
	cpu *cpuMeter
	lat latencies
}

// mergePhases combines rounds of the same phase: operations and time add
// up, percentiles are over all operations.
func mergePhases(ps []phaseResult) phaseResult {
	var all latencies
	var elapsed time.Duration
	var errs int
	cpu := &cpuMeter{}
	for _, p := range ps {
		all = append(all, p.lat...)
		elapsed += p.elapsed
		errs += p.errors
		if p.cpu != nil {
			cpu.etcdCPU += p.cpu.etcdCPU
			cpu.selfCPU += p.cpu.selfCPU
			cpu.childCPU += p.cpu.childCPU
		}
	}
	r := newPhaseResult(ps[0].clients, elapsed, all, errs)
	r.cpu = cpu
	return r
}

func newPhaseResult(clients int, elapsed time.Duration, lat latencies, errs int) phaseResult {
	return phaseResult{
		clients: clients,
		ops:     len(lat),
		elapsed: elapsed,
		p50:     lat.percentile(50),
		p99:     lat.percentile(99),
		errors:  errs,
		lat:     lat,
	}
}

func (r phaseResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ops) / r.elapsed.Seconds()
}

// fmtDur shows a latency in milliseconds with sensible precision.
func fmtDur(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case ms == 0:
		return "0"
	case ms < 1:
		return fmt.Sprintf("%.3f ms", ms)
	case ms < 100:
		return fmt.Sprintf("%.2f ms", ms)
	default:
		return fmt.Sprintf("%.0f ms", ms)
	}
}

func fmtRate(r float64) string {
	return fmt.Sprintf("%s/s", fmtCount(int64(math.Round(r))))
}

// fmtCount groups thousands with commas.
func fmtCount(n int64) string {
	s := fmt.Sprint(n)
	neg := n < 0
	if neg {
		s = s[1:]
	}
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func fmtRatio(x float64) string {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", x)
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func fmtSeconds(d time.Duration) string {
	return fmt.Sprintf("%.2f s", d.Seconds())
}
