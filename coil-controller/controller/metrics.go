package controller

import (
	"github.com/coil-project/coil/audit"
	"github.com/coil-project/coil/model"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the controller's Prometheus metrics. Gauges describing etcd
// are refreshed by every sweep of the leader; a standby replica leaves them
// unset.
type Metrics struct {
	blocks             *prometheus.GaugeVec
	addresses          *prometheus.GaugeVec
	leakCandidates     prometheus.Gauge
	reclaimedAddresses *prometheus.CounterVec
	reclaimedBlocks    prometheus.Counter
	deletedNodes       prometheus.Counter
	releaseDeferred    *prometheus.CounterVec
	lastSweep          prometheus.Gauge
	sweepDuration      prometheus.Histogram
	sweepSkipped       *prometheus.CounterVec
	leader             prometheus.Gauge
	gatewaysDesired    *prometheus.GaugeVec
	gatewaysAvailable  *prometheus.GaugeVec
	gatewaySyncErrors  prometheus.Counter
	pool               capacityGauges
	subnet             capacityGauges
}

// capacityGauges are the capacity metrics of pools, or of subnets.
type capacityGauges struct {
	addresses, inUse, ratio, blocks, owned, free, drained *prometheus.GaugeVec
}

func newCapacityGauges(of string, labels []string) capacityGauges {
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "coil_controller_" + of + "_" + name, Help: help}, labels)
	}
	return capacityGauges{
		addresses: gauge("addresses", "Addresses of the "+of+" (a dual-stack pair counts once)."),
		inUse:     gauge("addresses_in_use", "Allocated addresses of the "+of+"."),
		ratio: gauge("usage_ratio", "Addresses in use over usable addresses (those of owned blocks and of free blocks) of the "+
			of+"; coil-controller warns at --pool-usage-warning."),
		blocks:  gauge("blocks", "Address blocks of the "+of+"."),
		owned:   gauge("blocks_owned", "Address blocks of the "+of+" owned by nodes."),
		free:    gauge("blocks_free", "Address blocks of the "+of+" that nodes may still take: not owned, not drained."),
		drained: gauge("drained", "1 when the "+of+" is drained (gives no new blocks), else 0."),
	}
}

func (g capacityGauges) collectors() []prometheus.Collector {
	return []prometheus.Collector{g.addresses, g.inUse, g.ratio, g.blocks, g.owned, g.free, g.drained}
}

func (g capacityGauges) reset() {
	for _, c := range g.collectors() {
		c.(*prometheus.GaugeVec).Reset()
	}
}

func (g capacityGauges) set(c model.Capacity, drained bool, labels ...string) {
	g.addresses.WithLabelValues(labels...).Set(float64(c.Addresses))
	g.inUse.WithLabelValues(labels...).Set(float64(c.AddressesInUse))
	g.ratio.WithLabelValues(labels...).Set(c.Ratio())
	g.blocks.WithLabelValues(labels...).Set(float64(c.Blocks))
	g.owned.WithLabelValues(labels...).Set(float64(c.BlocksOwned))
	g.free.WithLabelValues(labels...).Set(float64(c.BlocksFree))
	d := 0.0
	if drained {
		d = 1
	}
	g.drained.WithLabelValues(labels...).Set(d)
}

// Reclaim causes, the "cause" label of coil_controller_reclaimed_addresses_total.
const (
	causeLeak        = "leak"
	causeNodeDeleted = "node-deleted"
)

// Reasons a deleted node's release waits, the "reason" label of
// coil_controller_node_release_deferred_total.
const (
	deferPodsBound  = "pods-bound"
	deferCoildAlive = "coild-alive"
)

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		blocks: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "coil_controller_blocks",
			Help: "Address blocks owned, by pool and node.",
		}, []string{"pool", "node"}),
		addresses: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "coil_controller_addresses_in_use",
			Help: "Allocated address records, by pool and node.",
		}, []string{"pool", "node"}),
		leakCandidates: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "coil_controller_leak_candidates",
			Help: "Address records whose pod is gone or on another node, at the last sweep (grace period not applied).",
		}),
		reclaimedAddresses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coil_controller_reclaimed_addresses_total",
			Help: "Address records released by the controller, by cause (leak or node-deleted).",
		}, []string{"cause"}),
		reclaimedBlocks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coil_controller_reclaimed_blocks_total",
			Help: "Address blocks of deleted nodes released by the controller.",
		}),
		deletedNodes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coil_controller_deleted_nodes_total",
			Help: "Deleted nodes whose blocks and node record were cleaned up.",
		}),
		releaseDeferred: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coil_controller_node_release_deferred_total",
			Help: "Times the release of a deleted node's blocks was put off because the node may still run, by reason (pods-bound, coild-alive).",
		}, []string{"reason"}),
		lastSweep: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "coil_controller_last_successful_sweep_timestamp_seconds",
			Help: "Unix time of the last sweep that compared etcd with the API without tripping a safety guard.",
		}),
		sweepDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "coil_controller_sweep_duration_seconds",
			Help: "Duration of each sweep (reading etcd, comparing with the API caches, reclaiming), whether it completed or not; a sweep is cut off at --scan-interval.",
			// From a small cluster to 150,000 addresses read on a busy etcd.
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 15),
		}),
		sweepSkipped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "coil_controller_sweep_skipped_total",
			Help: "Sweeps (or their reclaim step) skipped by a safety guard or an error, by reason.",
		}, []string{"reason"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "coil_controller_leader",
			Help: "1 while this replica holds the leader lease and acts, else 0.",
		}),
		gatewaysDesired: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "coil_controller_egress_gateways_desired",
			Help: "Gateway pods coil-controller runs for the egress (its --replicas), for egresses with managed gateways.",
		}, []string{"namespace", "egress"}),
		gatewaysAvailable: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "coil_controller_egress_gateways_available",
			Help: "Available pods of the egress's managed gateway Deployment.",
		}, []string{"namespace", "egress"}),
		gatewaySyncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "coil_controller_egress_gateway_sync_errors_total",
			Help: "Failed attempts to create, update or delete the managed gateways of an egress (retried).",
		}),
		pool:   newCapacityGauges("pool", []string{"pool"}),
		subnet: newCapacityGauges("subnet", []string{"pool", "subnet"}),
	}
	m.reclaimedAddresses.WithLabelValues(causeLeak)
	m.reclaimedAddresses.WithLabelValues(causeNodeDeleted)
	reg.MustRegister(m.blocks, m.addresses, m.leakCandidates, m.reclaimedAddresses,
		m.reclaimedBlocks, m.deletedNodes, m.releaseDeferred, m.lastSweep, m.sweepDuration, m.sweepSkipped, m.leader,
		m.gatewaysDesired, m.gatewaysAvailable, m.gatewaySyncErrors)
	reg.MustRegister(m.pool.collectors()...)
	reg.MustRegister(m.subnet.collectors()...)
	return m
}

// newUnregisteredMetrics returns metrics nobody scrapes, for callers that
// pass none.
func newUnregisteredMetrics() *Metrics { return NewMetrics(prometheus.NewRegistry()) }

// SetLeader records whether this replica is the acting leader.
func (m *Metrics) SetLeader(leading bool) {
	if leading {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
	}
}

// observeCapacity publishes the capacity of each pool and of each of its
// subnets (labelled with its prefixes as coilctl shows them); pools and
// subnets that are gone disappear.
func (m *Metrics) observeCapacity(usage []model.PoolUsage) {
	m.pool.reset()
	m.subnet.reset()
	for _, u := range usage {
		m.pool.set(u.Capacity, u.Drained, u.Pool)
		for _, su := range u.Subnets {
			m.subnet.set(su.Capacity, su.Drained, u.Pool, su.Subnet.String())
		}
	}
}

// observe publishes the etcd-derived gauges of a report.
func (m *Metrics) observe(r audit.Report) {
	m.blocks.Reset()
	m.addresses.Reset()
	for _, u := range r.Usage {
		m.blocks.WithLabelValues(u.Pool, u.Node).Set(float64(u.Blocks))
		m.addresses.WithLabelValues(u.Pool, u.Node).Set(float64(u.Addresses))
	}
	if r.PodsChecked {
		m.leakCandidates.Set(float64(len(r.LeakCandidates)))
	}
}
