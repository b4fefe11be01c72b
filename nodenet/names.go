package nodenet

// Names of the links nodenet makes or looks for. Listing and cleanup find
// Coil's links by these prefixes, so a name scheme changes here only.
const (
	// HostVethPrefix starts the name of the host side of each pod's veth
	// pair (see HostVethName).
	HostVethPrefix = "veth"
	// EgressClientLinkPrefix starts the name of a client pod's tunnel
	// device (see EgressClientLinkName).
	EgressClientLinkPrefix = "egc-"
	// EgressGatewayLinkPrefix starts the names of a gateway pod's tunnel
	// devices; "4-" or "6-" follows (see EgressGatewayLinkName).
	EgressGatewayLinkPrefix = "egg"
	// DefaultEgressUplink is the pod interface egress tunnels run over
	// when the configuration names none.
	DefaultEgressUplink = "eth0"
	// loopbackName is the loopback link, which exported routes point to.
	loopbackName = "lo"
)

// Link types nodenet looks for, as netlink.Link.Type reports them.
const (
	linkTypeVeth  = "veth"
	linkTypeVXLAN = "vxlan"
)
