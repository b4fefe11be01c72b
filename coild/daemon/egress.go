package daemon

import (
	"context"
	"net/netip"

	"github.com/coil-project/coil/coild/egress"
	"github.com/coil-project/coil/coild/server"
	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/nodenet"
)

// serverEgress lets the server drive the egress reconciler: the two
// packages do not know each other, so it carries egress's result over to
// the server's type.
type serverEgress struct {
	*egress.Reconciler
}

// SetupPod implements server.Egress.
func (e serverEgress) SetupPod(ctx context.Context, addr model.Address) (server.EgressSetup, error) {
	ps, err := e.Reconciler.SetupPod(ctx, addr)
	setup := server.EgressSetup{Gateway: ps.Gateway, Missing: ps.Missing}
	for _, c := range ps.Clients {
		setup.Clients = append(setup.Clients, server.EgressClient{Egress: c.Egress, GatewayPod: c.GatewayPod, Gateway: c.Gateway})
	}
	return setup, err
}

// podNetNS checks the netns paths of requests with nodenet against the
// node's own namespace.
type podNetNS struct{ host nodenet.NetNSID }

func (p podNetNS) Check(path string) error { return nodenet.CheckPodNetNS(path, p.host) }

func (p podNetNS) CheckAddresses(path, ifName string, addrs []netip.Addr) error {
	return nodenet.CheckPodAddresses(path, ifName, addrs)
}
