// Package nodenet programs a node's kernel through netlink and nftables:
// pod veth pairs, the route export table, peer routes and the egress data
// path. It knows nothing of etcd or HTTP. "The host" is the network
// namespace of the calling OS thread: lock the thread and enter it first.
package nodenet
