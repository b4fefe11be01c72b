package egress

import (
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"

	"github.com/coil-project/coil/model"
	corev1 "k8s.io/api/core/v1"
)

// addrs are a pod's addresses by family; either may be the zero Addr.
type addrs struct {
	v4, v6 netip.Addr
}

func (a addrs) valid() bool { return a.v4.IsValid() || a.v6.IsValid() }

// podAddrs reads the addresses the pod's status reports.
func podAddrs(p *corev1.Pod) addrs {
	var out addrs
	for _, ip := range p.Status.PodIPs {
		a, err := netip.ParseAddr(ip.IP)
		if err != nil {
			continue
		}
		a = a.Unmap()
		switch {
		case a.Is4() && !out.v4.IsValid():
			out.v4 = a
		case a.Is6() && !out.v6.IsValid():
			out.v6 = a
		}
	}
	if !out.valid() && p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			if a = a.Unmap(); a.Is4() {
				out.v4 = a
			} else {
				out.v6 = a
			}
		}
	}
	return out
}

// outer picks the addresses a tunnel between a client and a gateway runs
// between: IPv4 when both have it, else IPv6. Both sides of a tunnel call
// it with the same addresses, so they agree without talking.
func outer(client, gateway addrs) (c, g netip.Addr, ok bool) {
	switch {
	case client.v4.IsValid() && gateway.v4.IsValid():
		return client.v4, gateway.v4, true
	case client.v6.IsValid() && gateway.v6.IsValid():
		return client.v6, gateway.v6, true
	}
	return netip.Addr{}, netip.Addr{}, false
}

// clientEgresses returns the egresses ("namespace/name") a pod's
// annotations opt it into, sorted and without duplicates. Keys are
// egress.coil.cybozu.com/<namespace>; a value may list several names,
// comma-separated.
func clientEgresses(p *corev1.Pod) []string {
	return clientEgressesOf(p.Annotations)
}

// clientEgressesOf returns the egresses ("namespace/name") that a pod of
// these annotations is a client of, sorted.
func clientEgressesOf(annotations map[string]string) []string {
	var out []string
	for k, v := range annotations {
		ns, ok := strings.CutPrefix(k, model.EgressClientAnnotationPrefix)
		if !ok || ns == "" {
			continue
		}
		for name := range strings.SplitSeq(v, ",") {
			if name = strings.TrimSpace(name); name != "" {
				out = append(out, ns+"/"+name)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// gatewayOf returns the egress ("namespace/name") a pod is a gateway of,
// "" if none.
func gatewayOf(p *corev1.Pod) string {
	name := p.Labels[model.EgressGatewayLabel]
	if name == "" {
		return ""
	}
	return p.Namespace + "/" + name
}

// eligible reports whether a gateway pod may take new clients: running,
// not being deleted, with an address.
func eligible(p *corev1.Pod) bool {
	return p.DeletionTimestamp == nil && running(p)
}

// running reports whether a gateway pod runs with an address, being
// deleted or not: a pod being deleted still carries the connections
// opened through it until it exits (drain).
func running(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodRunning && podAddrs(p).valid()
}

// gateway is an eligible gateway pod of an egress.
type gateway struct {
	key   string // "namespace/name" of the pod
	addrs addrs
}

// choose picks the gateway of client (its pod key and addresses) by
// rendezvous hashing: every gateway it can reach gets a score from the pair
// of keys, and the highest wins. When a gateway goes away only its own
// clients move, and every node computes the same answer from the same
// gateway list. ok is false when no gateway shares a family with client.
func choose(clientKey string, client addrs, gateways []gateway) (gateway, bool) {
	var best gateway
	var bestScore uint64
	found := false
	for _, g := range gateways {
		if _, _, ok := outer(client, g.addrs); !ok {
			continue
		}
		s := score(clientKey, g.key)
		if !found || s > bestScore || s == bestScore && g.key < best.key {
			best, bestScore, found = g, s, true
		}
	}
	return best, found
}

// score is the rendezvous weight of a client and gateway pair: FNV-1a of
// both keys, finished with the splitmix64 mixer so that keys differing in
// one character still score independently.
func score(clientKey, gatewayKey string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(clientKey))
	h.Write([]byte{0})
	h.Write([]byte(gatewayKey))
	x := h.Sum64()
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// sortPrefixes returns ps sorted (IPv4 first), for stable comparisons.
func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	out := slices.Clone(ps)
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}
