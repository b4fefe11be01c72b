package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/coil-project/coil/nodenet"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// DefaultNodeWait is how long coild waits, by default, for its Node object
// to show an InternalIP before it takes the node's address from the
// default route.
const DefaultNodeWait = 30 * time.Second

// nodeAddrSource says where a node address came from, for the log.
type nodeAddrSource struct {
	addr netip.Addr
	from string
}

// findNodeAddresses decides the addresses other nodes route this node's
// blocks through: --node-address if given; else, per family, the Node
// object's InternalIP (what the kubelet registered, --node-ip), else the
// address of the link the default route of that family leaves through.
// It waits up to cfg.NodeWait for the Node to exist with an InternalIP
// (the kubelet may not have registered it yet), and fails if no address
// is found at all.
func (d *daemon) findNodeAddresses(ctx context.Context, kube kubernetes.Interface) ([]netip.Addr, error) {
	if len(d.cfg.NodeAddresses) > 0 {
		for _, a := range d.cfg.NodeAddresses {
			d.log.Info("node address", "address", a, "from", "--node-address")
		}
		return d.cfg.NodeAddresses, nil
	}
	internal, why := d.waitInternalIPs(ctx, kube)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var uplink []nodenet.UplinkAddress
	if !hasBothFamilies(internal) {
		if why != "" {
			d.log.Warn("no InternalIP in the Node object; the default route decides the node address", "node", d.cfg.NodeName, "reason", why)
		}
		if err := d.inHostNS(func() (err error) { uplink, err = nodenet.UplinkAddresses(); return err }); err != nil {
			return nil, fmt.Errorf("find the node's address from its default route: %w", err)
		}
	}
	chosen := chooseNodeAddresses(internal, uplink)
	if len(chosen) == 0 {
		return nil, fmt.Errorf("no address found for node %s: its Node object has no InternalIP (%s) and no default route leaves through a link that may carry the node's address (bridges, dummies, veths, vxlans, kube-ipvs0 and lo are never used); give it with --node-address", d.cfg.NodeName, why)
	}
	out := make([]netip.Addr, 0, len(chosen))
	for _, c := range chosen {
		d.log.Info("node address", "address", c.addr, "from", c.from)
		out = append(out, c.addr)
	}
	return out, nil
}

// waitInternalIPs polls the Node object until it has an InternalIP or
// cfg.NodeWait has passed, and returns its InternalIPs (internalIPs), or
// none and why.
func (d *daemon) waitInternalIPs(ctx context.Context, kube kubernetes.Interface) ([]netip.Addr, string) {
	wait := d.cfg.NodeWait
	if wait <= 0 {
		wait = DefaultNodeWait
	}
	deadline := time.Now().Add(wait)
	for first := true; ; first = false {
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		node, err := kube.CoreV1().Nodes().Get(gctx, d.cfg.NodeName, metav1.GetOptions{})
		cancel()
		var why string
		switch {
		case err == nil:
			if addrs := internalIPs(node); len(addrs) > 0 {
				return addrs, ""
			}
			why = "the Node object lists no InternalIP"
		case apierrors.IsForbidden(err):
			// Waiting does not grant the permission.
			return nil, fmt.Sprintf("get Node: %v", err)
		case apierrors.IsNotFound(err):
			why = "the Node object does not exist"
		default:
			why = fmt.Sprintf("get Node: %v", err)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Sprintf("%s after %v", why, wait)
		}
		if first {
			d.log.Info("waiting for the Node object's InternalIP", "node", d.cfg.NodeName, "reason", why, "for", wait)
		}
		select {
		case <-ctx.Done():
			return nil, why
		case <-time.After(time.Second):
		}
	}
}

// internalIPs are the Node's InternalIP addresses usable as its address:
// the first global unicast one of each family, IPv4 first.
func internalIPs(node *corev1.Node) []netip.Addr {
	var v4, v6 netip.Addr
	for _, a := range node.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		ip, err := netip.ParseAddr(a.Address)
		if err != nil || !ip.Unmap().IsGlobalUnicast() {
			continue
		}
		ip = ip.Unmap()
		switch {
		case ip.Is4() && !v4.IsValid():
			v4 = ip
		case ip.Is6() && !v6.IsValid():
			v6 = ip
		}
	}
	var out []netip.Addr
	for _, a := range []netip.Addr{v4, v6} {
		if a.IsValid() {
			out = append(out, a)
		}
	}
	return out
}

func hasBothFamilies(addrs []netip.Addr) bool {
	var v4, v6 bool
	for _, a := range addrs {
		v4, v6 = v4 || a.Is4(), v6 || a.Is6()
	}
	return v4 && v6
}

// chooseNodeAddresses takes, per family, the Node's InternalIP if there is
// one, else the default route's link address; IPv4 first.
func chooseNodeAddresses(internal []netip.Addr, uplink []nodenet.UplinkAddress) []nodeAddrSource {
	var out []nodeAddrSource
	for _, v6 := range []bool{false, true} {
		var pick nodeAddrSource
		for _, a := range internal {
			if a.Is6() == v6 {
				pick = nodeAddrSource{a, "Node InternalIP"}
				break
			}
		}
		if !pick.addr.IsValid() {
			for _, u := range uplink {
				if u.Addr.Is6() == v6 {
					pick = nodeAddrSource{u.Addr, "default route via " + u.Link}
					break
				}
			}
		}
		if pick.addr.IsValid() {
			out = append(out, pick)
		}
	}
	return out
}
