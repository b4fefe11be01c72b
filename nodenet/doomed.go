package nodenet

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// DoomedLinkGroup is the link group (IFLA_GROUP, "ip link set group") that
// coild moves the host veths of released pods into, so that one request
// deletes them all (DeleteDoomedLinks). The kernel then unregisters the
// whole batch at once: one RCU grace period and one wait for in-flight
// packets instead of one per veth (measured: ~0.6 ms per veth in a batch of
// 40 against ~20 ms one at a time), which keeps the RTNL lock, and with it
// every pod's ADD and DEL on the node, free. The value spells "coil" in
// ASCII; a link of another program in this group would be deleted with
// them, so coild puts only links it has checked to be its own here.
const DoomedLinkGroup = 0x636f696c

// DoomPodLinks moves the host side of a released pod's veth pair into
// DoomedLinkGroup, after the same checks TeardownPod makes: the pod's
// interface must be a veth and the host link named hostVethName its peer.
// It reports whether a link was moved; when the pod side has no peer that
// can be moved (the namespace holds an unpaired link, or its peer lives
// elsewhere), it deletes the pod side itself as TeardownPod does. A pod
// netns or link already gone is success with nothing moved.
func DoomPodLinks(netnsPath, ifName, hostVethName string) (bool, error) {
	peerIndex, err := podVethPeer(netnsPath, ifName, false)
	if err != nil || peerIndex == 0 {
		// Gone already, or not made by Coil: leave it to whoever made it.
		return false, err
	}
	host, err := hostPeer(hostVethName, peerIndex)
	if err != nil {
		return false, err
	}
	if host == nil || host.Type() != linkTypeVeth {
		// No host peer of that name here: delete the pod side the slow way.
		return false, TeardownPod(netnsPath, ifName, "")
	}
	if err := netlink.LinkSetGroup(host, DoomedLinkGroup); err != nil {
		if isLinkNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("mark host veth %q for deletion: %w", hostVethName, err)
	}
	return true, nil
}

// DoomHostLink moves the host link of the given index into DoomedLinkGroup
// if it still has the given name and is a Coil host veth: the link a
// released pod's routes went through, when its namespace is gone but the
// link outlived it. It reports whether it moved one.
func DoomHostLink(index int, name string) (bool, error) {
	link, err := netlink.LinkByIndex(index)
	if err != nil {
		if isLinkNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("find link %d: %w", index, err)
	}
	if link.Attrs().Name != name || link.Type() != linkTypeVeth || !IsCoilVeth(name) {
		return false, nil
	}
	if link.Attrs().Group == DoomedLinkGroup {
		return true, nil
	}
	if err := netlink.LinkSetGroup(link, DoomedLinkGroup); err != nil {
		if isLinkNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("mark host link %q for deletion: %w", name, err)
	}
	return true, nil
}

// DeleteDoomedLinks deletes every link of the current network namespace
// in DoomedLinkGroup with one RTM_DELLINK request (by group, as "ip link
// delete group" does), and with each veth its peer in the pod's namespace.
// An empty group is success.
func DeleteDoomedLinks() error {
	req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(DoomedLinkGroup)))
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil && !isLinkNotFound(err) {
		return fmt.Errorf("delete the links of group %#x: %w", DoomedLinkGroup, err)
	}
	return nil
}
