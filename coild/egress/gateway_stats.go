package egress

import (
	"slices"
	"strings"
	"sync"

	"github.com/coil-project/coil/nodenet"
	"github.com/prometheus/client_golang/prometheus"
)

// gatewayStats exports the counters of the node's gateway pods, read from
// their network namespaces at each scrape, so that rates are as fresh as
// the scrape and not as old as the last reconcile pass. A pod whose
// namespace cannot be read (it is going away) is left out of that scrape.
type gatewayStats struct {
	packets, bytes, entries, limit *prometheus.Desc

	mu   sync.Mutex
	pods []gatewayPod
}

// gatewayPod is one gateway pod of the node, as the last reconcile pass
// programmed it.
type gatewayPod struct {
	egress, pod, netns string
}

// newGatewayStats registers the collector with reg, if any.
func newGatewayStats(reg prometheus.Registerer) *gatewayStats {
	labels := []string{"egress", "pod"}
	g := &gatewayStats{
		packets: prometheus.NewDesc("coild_egress_gateway_masqueraded_packets_total",
			"Packets the gateway pod sent out for the egress's clients, masqueraded to its own address (nftables counter in the pod's namespace).", labels, nil),
		bytes: prometheus.NewDesc("coild_egress_gateway_masqueraded_bytes_total",
			"Bytes the gateway pod sent out for the egress's clients, masqueraded to its own address.", labels, nil),
		entries: prometheus.NewDesc("coild_egress_gateway_conntrack_entries",
			"Connections tracked in the gateway pod's network namespace (nf_conntrack_count there).", labels, nil),
		limit: prometheus.NewDesc("coild_egress_gateway_conntrack_limit",
			"The most connections the gateway pod's namespace can track (nf_conntrack_max there); new connections are dropped once it is reached.", labels, nil),
	}
	if reg != nil {
		reg.MustRegister(g)
	}
	return g
}

// set takes the gateway pods of the last reconcile pass from want.
func (g *gatewayStats) set(want map[string]podState) {
	var pods []gatewayPod
	for k, d := range want {
		if d.gateway != nil {
			pods = append(pods, gatewayPod{egress: d.serves, pod: k, netns: d.netns})
		}
	}
	slices.SortFunc(pods, func(a, b gatewayPod) int { return strings.Compare(a.pod, b.pod) })
	g.mu.Lock()
	g.pods = pods
	g.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (g *gatewayStats) Describe(ch chan<- *prometheus.Desc) {
	ch <- g.packets
	ch <- g.bytes
	ch <- g.entries
	ch <- g.limit
}

// Collect implements prometheus.Collector.
func (g *gatewayStats) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	pods := g.pods
	g.mu.Unlock()
	for _, p := range pods {
		st, err := nodenet.ReadEgressGatewayStats(p.netns)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(g.packets, prometheus.CounterValue, float64(st.MasqueradedPackets), p.egress, p.pod)
		ch <- prometheus.MustNewConstMetric(g.bytes, prometheus.CounterValue, float64(st.MasqueradedBytes), p.egress, p.pod)
		ch <- prometheus.MustNewConstMetric(g.entries, prometheus.GaugeValue, float64(st.ConntrackEntries), p.egress, p.pod)
		ch <- prometheus.MustNewConstMetric(g.limit, prometheus.GaugeValue, float64(st.ConntrackMax), p.egress, p.pod)
	}
}
