package egress

import (
	"github.com/coil-project/coil/nodenet"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	clients      *prometheus.GaugeVec
	gateways     *prometheus.GaugeVec
	served       *prometheus.GaugeVec
	failovers    *prometheus.CounterVec
	syncFailures prometheus.Counter
	panics       prometheus.Counter
	foreignDrops *prometheus.GaugeVec

	// Health probes of the gateways this node's clients use.
	probeRTT      *prometheus.HistogramVec
	probeFailures *prometheus.CounterVec
	gatewayUp     *prometheus.GaugeVec
	selected      *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "coild", Subsystem: "egress", Name: "clients",
			Help: "Client pods of this node using the egress.",
		}, []string{"egress"}),
		gateways: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "coild", Subsystem: "egress", Name: "gateways",
			Help: "Running gateway pods of the egress in the cluster, as this node sees them.",
		}, []string{"egress"}),
		served: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "coild", Subsystem: "egress", Name: "gateway_clients",
			Help: "Clients, anywhere in the cluster, served by the egress's gateway pods on this node.",
		}, []string{"egress"}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "coild", Subsystem: "egress", Name: "failovers_total",
			Help: "Client pods of this node moved off a gateway of the egress that went away.",
		}, []string{"egress"}),
		syncFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "coild", Subsystem: "egress", Name: "sync_failures_total",
			Help: "Failed attempts to program a pod's egress settings (retried).",
		}),
		foreignDrops: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "coild", Subsystem: "egress", Name: "gateway_foreign_packets_dropped",
			Help: "VXLAN packets the egress's gateway pods on this node dropped because they came from an address that is not one of its clients (summed over the running gateway pods' counters).",
		}, []string{"egress"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "coild", Subsystem: "egress", Name: "reconcile_panics_total",
			Help: "Reconcile passes that panicked and were abandoned (a bug: the log has the stack).",
		}),
		probeRTT: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "coild", Subsystem: "egress", Name: "probe_rtt_seconds",
			Help:    "Round-trip time of the health probes this node sent to the egress's gateway pods (answered ones).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
		}, []string{"egress"}),
		probeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "coild", Subsystem: "egress", Name: "probe_failures_total",
			Help: "Health probes of the egress's gateway pods that failed: reason timeout (no answer within the probe interval) or unprogrammed (the pod answered, but no coild had made it a gateway of the egress).",
		}, []string{"egress", "reason"}),
		gatewayUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "coild", Subsystem: "egress", Name: "gateway_up",
			Help: "Whether this node's probes find the gateway pod healthy (1) or down (0); a down gateway gets no clients of this node.",
		}, []string{"egress", "gateway"}),
		selected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "coild", Subsystem: "egress", Name: "gateway_selected_clients",
			Help: "Client pods of this node whose new connections go through the gateway pod now.",
		}, []string{"egress", "gateway"}),
	}
	if reg != nil {
		reg.MustRegister(m.clients, m.gateways, m.served, m.failovers, m.syncFailures, m.panics, m.foreignDrops,
			m.probeRTT, m.probeFailures, m.gatewayUp, m.selected)
	}
	return m
}

// updateMetrics sets the gauges from one reconciliation's inputs and the
// configurations it programmed.
func (r *Reconciler) updateMetrics(s *snapshot, want map[string]podState) {
	// Read the gateways' counters before touching the gauges: each read
	// enters a pod's namespace, and a scrape between Reset and Set must
	// not find the series missing.
	drops := map[string]float64{}
	for _, d := range want {
		if d.gateway != nil {
			// A pod gone since this pass began has nothing left to count.
			n, _ := nodenet.EgressGatewayDrops(d.netns)
			drops[d.serves] += float64(n)
		}
	}
	m := r.metrics
	m.clients.Reset()
	m.gateways.Reset()
	m.served.Reset()
	m.foreignDrops.Reset()
	for e := range s.egresses {
		m.gateways.WithLabelValues(e).Set(float64(len(s.gateways[e])))
		m.clients.WithLabelValues(e)
		m.served.WithLabelValues(e)
	}
	for _, d := range want {
		for e := range d.chosen {
			m.clients.WithLabelValues(e).Inc()
		}
		if d.gateway != nil {
			m.served.WithLabelValues(d.serves).Add(float64(len(d.gateway.Clients)))
		}
	}
	for e, n := range drops {
		m.foreignDrops.WithLabelValues(e).Set(n)
	}
	m.selected.Reset()
	for _, d := range want {
		for e, g := range d.chosen {
			if g != "" {
				m.selected.WithLabelValues(e, g).Inc()
			}
		}
	}
}

// forgetTarget drops the series of a gateway no longer probed.
func (m *metrics) forgetTarget(egress, gateway string) {
	m.gatewayUp.DeleteLabelValues(egress, gateway)
}
