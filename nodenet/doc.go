// Package nodenet holds everything Coil does to a node's kernel through
// netlink: the veth pair and routes of each pod, the routing table that
// exports the node's address blocks to a routing daemon, and routes to peer
// nodes' blocks. It knows nothing of etcd or HTTP.
//
// A pod set up by SetupPod looks like this:
//
//	pod netns:  eth0  10.1.0.5/32, fd00::5/128 (nodad)
//	            169.254.1.1 dev eth0 scope link
//	            default via 169.254.1.1 dev eth0
//	            default via fe80::1 dev eth0
//	            neigh 169.254.1.1 and fe80::1 lladdr <host veth MAC> PERMANENT
//	host netns: vethXXXXXXXXXXX up
//	            10.1.0.5 dev vethXXXXXXXXXXX scope link
//	            fd00::5 dev vethXXXXXXXXXXX
//
// No address is put on the host side: the permanent neighbour entries let
// the pod send to its gateway without ARP or NDP, and the host routes
// return the traffic.
//
// The egress NAT data path lives here too (egress*.go): the VXLAN tunnel,
// policy routing and nftables masquerade of client and gateway pods, each
// function taking the pod's netns path and leaving exactly one copy of
// what it programs however often it runs.
//
// Functions that act on "the host" act on the network namespace of the
// calling OS thread; callers that are not in the node's root namespace (such
// as tests) must lock the thread and enter the namespace first, for example
// with ns.NetNS.Do.
package nodenet
