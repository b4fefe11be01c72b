package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/coil-project/coil/nodenet"
)

// peerSyncChanges is how many block changes each way of syncing applies.
const peerSyncChanges = 20

// peerSyncResult is part 5b at one size: the CPU one change of the
// cluster's blocks costs a --flat-l2 node's kernel route sync, comparing
// with a listing of the table every time (before) and writing only what
// changed (now).
type peerSyncResult struct {
	routes       int
	install      time.Duration // the first sync, every route added
	listing, now time.Duration // CPU per change
}

// measurePeerSync installs routes block routes (via on-link node
// addresses) in a namespace of its own, as coild --flat-l2 does on a node
// of a cluster with that many blocks besides its own, then applies
// peerSyncChanges changes of one block each, once with a PeerRouter that
// compares with the table every time and once with coild's.
func measurePeerSync(ctx context.Context, routes int) (peerSyncResult, error) {
	r := peerSyncResult{routes: routes}
	n, err := newNetns(ctx, netnsPrefix+strconv.Itoa(os.Getpid())+"-peersync", nil)
	if err != nil {
		return r, err
	}
	defer deleteNetns(n)
	err = n.Do(func(ns.NetNS) error {
		// Do runs on a thread locked to the namespace: the thread's CPU
		// is the sync's, user and kernel.
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "fabric0"}, PeerName: "fabric1"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add fabric veth: %w", err)
		}
		l, err := netlink.LinkByName("fabric0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		fabric := &net.IPNet{IP: net.IPv4(192, 168, 0, 1), Mask: net.CIDRMask(16, 32)}
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: fabric}); err != nil {
			return err
		}
		want := make(map[netip.Prefix]netip.Addr, routes)
		for i := range routes {
			// Blocks of 32 addresses in 10.0.0.0/8, four per node.
			block := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 11), byte(i >> 3), byte(i&7) << 5}), 27)
			want[block] = netip.AddrFrom4([4]byte{192, 168, byte(i / 4 >> 8), byte(i/4) | 2})
		}
		for _, way := range []struct {
			full bool
			cpu  *time.Duration
		}{{true, &r.listing}, {false, &r.now}} {
			pr := &nodenet.PeerRouter{Protocol: 30}
			sync := pr.Sync
			if way.full {
				sync = pr.Resync
			}
			t0 := threadCPU()
			if err := pr.Sync(want); err != nil {
				return err
			}
			r.install = threadCPU() - t0
			t0 = threadCPU()
			for k := range peerSyncChanges {
				// A node takes a block, or gives it back.
				block := netip.PrefixFrom(netip.AddrFrom4([4]byte{11, 0, byte(k / 2), 0}), 27)
				if k%2 == 0 {
					want[block] = netip.MustParseAddr("192.168.255.2")
				} else {
					delete(want, block)
				}
				if err := sync(want); err != nil {
					return err
				}
			}
			*way.cpu = (threadCPU() - t0) / peerSyncChanges
			if err := pr.Sync(nil); err != nil {
				return err
			}
		}
		return nil
	})
	return r, err
}

// threadCPU is the CPU time of the calling thread, user and kernel.
func threadCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
