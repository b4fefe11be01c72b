package nodenet

import (
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestDeleteDoomedLinks: released pods' veths are deleted together by one
// request, and nothing else goes with them: not a pod still running, not a
// link of another sandbox that happens to carry a released pod's host veth
// name, not a pod interface that is not Coil's veth.
func TestDeleteDoomedLinks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	host := newHost(t)
	setup := func(name string, last byte) PodConfig {
		pod := newTestNS(t)
		cfg := PodConfig{NetNSPath: pod.Path(), IfName: "eth0", HostVethName: HostVethName("ns", name),
			IPv4: netip.AddrFrom4([4]byte{10, 1, 0, last})}
		inNS(t, host, func() error {
			_, err := SetupPod(cfg)
			return err
		})
		return cfg
	}
	var released []PodConfig
	for i := range 3 {
		released = append(released, setup(fmt.Sprintf("released-%d", i), byte(10+i)))
	}
	running := setup("running", 20)
	// A released pod whose record names a host veth that is not its pair's
	// (the name taken by another sandbox): its pair goes on its own, the
	// other sandbox's link stays.
	stale := setup("stale", 21)
	other := setup("other", 22)
	// A pod interface that is not a veth: never touched.
	foreign := newTestNS(t)
	inNS(t, foreign, func() error {
		return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}})
	})

	inNS(t, host, func() error {
		if err := DeleteDoomedLinks(); err != nil {
			return fmt.Errorf("empty group: %w", err)
		}
		for _, cfg := range released {
			marked, err := DoomPodLinks(cfg.NetNSPath, cfg.IfName, cfg.HostVethName)
			if err != nil {
				return err
			}
			if !marked {
				return fmt.Errorf("%s not marked", cfg.HostVethName)
			}
			// Marking twice is harmless.
			if _, err := DoomPodLinks(cfg.NetNSPath, cfg.IfName, cfg.HostVethName); err != nil {
				return err
			}
		}
		marked, err := DoomPodLinks(stale.NetNSPath, "eth0", other.HostVethName)
		if err != nil || marked {
			return fmt.Errorf("host veth of another sandbox: marked %v, err %v", marked, err)
		}
		marked, err = DoomPodLinks(foreign.Path(), "eth0", HostVethName("ns", "foreign"))
		if err != nil || marked {
			return fmt.Errorf("non-veth pod interface: marked %v, err %v", marked, err)
		}
		return DeleteDoomedLinks()
	})
	for _, cfg := range released {
		if linkExists(t, host, cfg.HostVethName) {
			t.Errorf("host veth %s of a released pod still exists", cfg.HostVethName)
		}
	}
	if linkExists(t, host, stale.HostVethName) {
		t.Error("the pair of the pod whose record named another link still exists")
	}
	for _, cfg := range []PodConfig{running, other} {
		inNS(t, host, func() error { return CheckPod(cfg) })
	}
	if !linkExists(t, foreign, "eth0") {
		t.Error("the foreign pod's interface was deleted")
	}
}
