package server

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	allocations prometheus.Counter
	// annotated counts the allocations that carried the runtime's pod
	// annotations: an operator sees whether the runtime passes them.
	annotated prometheus.Counter
	releases  prometheus.Counter
	failures  *prometheus.CounterVec
	latency   prometheus.Histogram
}

func newMetrics(reg *prometheus.Registry, alloc Allocator) *metrics {
	m := &metrics{
		allocations: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "coild", Name: "allocations_total",
			Help: "Addresses allocated to pods.",
		}),
		annotated: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "coild", Name: "allocations_with_pod_annotations_total",
			Help: "Addresses allocated to pods whose request carried the pod's annotations from the container runtime " +
				"(io.kubernetes.cri.pod-annotations), which spare coild asking the API server whether a pod it does not hold yet uses an egress.",
		}),
		releases: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "coild", Name: "releases_total",
			Help: "Addresses released by pods (DEL or GC).",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "coild", Name: "request_failures_total",
			Help: "Failed API requests by reason.",
		}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "coild", Name: "allocation_duration_seconds",
			Help:    "Time to allocate an address, including etcd.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
	}
	blocks := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "coild", Name: "blocks_owned",
		Help: "Address blocks owned by this node.",
	}, func() float64 { n, _ := alloc.Usage(); return float64(n) })
	inUse := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "coild", Name: "addresses_in_use",
		Help: "Addresses allocated on this node.",
	}, func() float64 { _, n := alloc.Usage(); return float64(n) })
	reg.MustRegister(m.allocations, m.annotated, m.releases, m.failures, m.latency, blocks, inUse, freeCollector{alloc})
	return m
}

// freeDesc is coild_addresses_free: per pool, what the node can hand out
// without taking a new block. A node whose pools run low here takes blocks
// (coil-controller's coil_controller_pool_blocks_free shows how many are
// left).
var freeDesc = prometheus.NewDesc("coild_addresses_free",
	"Addresses free in the address blocks this node owns, by pool.", []string{"pool"}, nil)

// freeCollector reads the free addresses from the allocator at each
// scrape: the set of pools changes as blocks come and go.
type freeCollector struct{ alloc Allocator }

func (c freeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- freeDesc }

func (c freeCollector) Collect(ch chan<- prometheus.Metric) {
	for pool, n := range c.alloc.FreeAddresses() {
		ch <- prometheus.MustNewConstMetric(freeDesc, prometheus.GaugeValue, float64(n), pool)
	}
}
