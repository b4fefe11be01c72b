package nodenet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

var (
	hostV4 = netip.MustParseAddr("10.99.0.1")
	hostV6 = netip.MustParseAddr("fd99::1")
)

// newHost returns a netns playing the node: lo up with an IPv4 and an IPv6
// address of its own, forwarding on.
func newHost(t *testing.T) ns.NetNS {
	t.Helper()
	host := newTestNS(t)
	inNS(t, host, func() error {
		for _, a := range []netip.Addr{hostV4, hostV6} {
			if err := addLoAddr(a); err != nil {
				return err
			}
		}
		return EnableForwarding()
	})
	return host
}

func TestHostVethName(t *testing.T) {
	tests := []struct{ ns, pod, want string }{
		{"default", "nginx", "vethc440f455693"},
		{"kube-system", "coredns-5d78c9869d-abcde", "veth4d5f75c480c"},
		{"", "", "veth3a52ce78095"},
	}
	for _, tt := range tests {
		got := HostVethName(tt.ns, tt.pod)
		if got != tt.want {
			t.Errorf("HostVethName(%q, %q) = %q, want %q", tt.ns, tt.pod, got, tt.want)
		}
		if len(got) > maxIfNameLen {
			t.Errorf("HostVethName(%q, %q) = %q is longer than IFNAMSIZ", tt.ns, tt.pod, got)
		}
	}
}

func TestPodConfigValidate(t *testing.T) {
	good := PodConfig{NetNSPath: "/x", IfName: "eth0", HostVethName: "veth1", IPv4: netip.MustParseAddr("10.0.0.1")}
	tests := []struct {
		name   string
		modify func(*PodConfig)
		ok     bool
	}{
		{"ok", func(*PodConfig) {}, true},
		{"v6 only", func(c *PodConfig) { c.IPv4 = netip.Addr{}; c.IPv6 = netip.MustParseAddr("fd00::1") }, true},
		{"no address", func(c *PodConfig) { c.IPv4 = netip.Addr{} }, false},
		{"v6 in v4 slot", func(c *PodConfig) { c.IPv4 = netip.MustParseAddr("fd00::1") }, false},
		{"v4 in v6 slot", func(c *PodConfig) { c.IPv6 = netip.MustParseAddr("10.0.0.2") }, false},
		{"long ifname", func(c *PodConfig) { c.IfName = "eth0123456789012" }, false},
		{"no netns", func(c *PodConfig) { c.NetNSPath = "" }, false},
		{"negative mtu", func(c *PodConfig) { c.MTU = -1 }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.modify(&c)
			err := c.validate()
			if tt.ok && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if !tt.ok && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("want ErrInvalidConfig, got %v", err)
			}
		})
	}
}

func TestSetupPod(t *testing.T) {
	tests := []struct {
		name       string
		ipv4, ipv6 string
	}{
		{"ipv4", "10.1.0.5", ""},
		{"ipv6", "", "fd00:1::5"},
		{"dual", "10.1.0.6", "fd00:1::6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newHost(t)
			pod := newTestNS(t)
			cfg := PodConfig{
				NetNSPath:    pod.Path(),
				IfName:       "eth0",
				HostVethName: HostVethName("ns", tt.name),
				MTU:          1400,
			}
			if tt.ipv4 != "" {
				cfg.IPv4 = netip.MustParseAddr(tt.ipv4)
			}
			if tt.ipv6 != "" {
				cfg.IPv6 = netip.MustParseAddr(tt.ipv6)
			}

			var links PodLinks
			inNS(t, host, func() error {
				var err error
				links, err = SetupPod(cfg)
				return err
			})
			if links.Host.Name != cfg.HostVethName || len(links.Host.MAC) != 6 {
				t.Errorf("host link = %+v", links.Host)
			}
			if links.Container.Name != "eth0" || len(links.Container.MAC) != 6 || links.Container.Sandbox != pod.Path() {
				t.Errorf("container link = %+v", links.Container)
			}

			// The pod holds exactly its addresses as host routes.
			inNS(t, pod, func() error {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				if l.Attrs().MTU != 1400 {
					t.Errorf("pod MTU = %d, want 1400", l.Attrs().MTU)
				}
				addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
				if err != nil {
					return err
				}
				var got []string
				for _, a := range addrs {
					if !a.IP.IsLinkLocalUnicast() {
						got = append(got, a.IPNet.String())
					}
				}
				var want []string
				if tt.ipv4 != "" {
					want = append(want, tt.ipv4+"/32")
				}
				if tt.ipv6 != "" {
					want = append(want, tt.ipv6+"/128")
				}
				if strings.Join(got, ",") != strings.Join(want, ",") {
					t.Errorf("pod addresses = %v, want %v", got, want)
				}
				return nil
			})

			inNS(t, host, func() error { return CheckPod(cfg) })

			// The pod reaches the host over each of its families.
			for _, pair := range []struct{ podAddr, hostAddr netip.Addr }{{cfg.IPv4, hostV4}, {cfg.IPv6, hostV6}} {
				if !pair.podAddr.IsValid() {
					continue
				}
				target := listen(t, host, pair.hostAddr)
				// Under load the kernel takes up to a second to route IPv6
				// over a fresh veth (connect: network is unreachable), an
				// asynchronous step SetupPod cannot wait for: allow it.
				testenv.Eventually(t, 3*time.Second, fmt.Sprintf("pod %s reaches host %s", pair.podAddr, target), func() error {
					return dial(pod, target)
				})
			}

			// Teardown is idempotent.
			for i := range 2 {
				inNS(t, host, func() error { return TeardownPod(pod.Path(), "eth0", cfg.HostVethName) })
				if linkExists(t, host, cfg.HostVethName) || linkExists(t, pod, "eth0") {
					t.Fatalf("teardown %d left links behind", i+1)
				}
			}
			err := host.Do(func(ns.NetNS) error { return CheckPod(cfg) })
			if !errors.Is(err, ErrMismatch) {
				t.Errorf("CheckPod after teardown = %v, want ErrMismatch", err)
			}
		})
	}
}

func TestPodToPod(t *testing.T) {
	host := newHost(t)
	pods := []ns.NetNS{newTestNS(t), newTestNS(t)}
	cfgs := make([]PodConfig, 2)
	for i, p := range pods {
		cfgs[i] = PodConfig{
			NetNSPath:    p.Path(),
			IfName:       "eth0",
			HostVethName: HostVethName("ns", []string{"a", "b"}[i]),
			IPv4:         netip.AddrFrom4([4]byte{10, 1, 0, byte(10 + i)}),
			IPv6:         netip.MustParseAddr("fd00:1::" + []string{"a", "b"}[i]),
		}
		inNS(t, host, func() error {
			_, err := SetupPod(cfgs[i])
			return err
		})
	}
	for _, a := range []netip.Addr{cfgs[1].IPv4, cfgs[1].IPv6} {
		target := listen(t, pods[1], a)
		if err := dial(pods[0], target); err != nil {
			t.Errorf("pod a cannot reach pod b at %s: %v", target, err)
		}
	}
}

func TestSetupPodReplacesLeftover(t *testing.T) {
	host := newHost(t)
	pod := newTestNS(t)
	cfg := PodConfig{
		NetNSPath:    pod.Path(),
		IfName:       "eth0",
		HostVethName: HostVethName("ns", "leftover"),
		IPv4:         netip.MustParseAddr("10.1.0.7"),
	}
	inNS(t, host, func() error {
		// A veth of the same name, as a crashed teardown leaves it.
		if err := addVethPair(cfg.HostVethName, "stale-peer", 0); err != nil {
			return err
		}
		if _, err := SetupPod(cfg); err != nil {
			return err
		}
		return CheckPod(cfg)
	})
	if linkExists(t, host, "stale-peer") {
		t.Error("leftover veth was not removed")
	}
	target := listen(t, host, hostV4)
	if err := dial(pod, target); err != nil {
		t.Errorf("pod cannot reach host after replacing leftover: %v", err)
	}
}

func TestSetupPodRollback(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(pod ns.NetNS) error
		wantErr error
	}{
		{
			name: "interface exists in pod",
			prepare: func(pod ns.NetNS) error {
				return pod.Do(func(ns.NetNS) error { return addVethPair("eth0", "other", 0) })
			},
			wantErr: ErrInterfaceExists,
		},
		{
			name: "ipv6 disabled in pod",
			prepare: func(pod ns.NetNS) error {
				// Fails after the veth exists: when the IPv6
				// address is added.
				return pod.Do(func(ns.NetNS) error {
					for _, k := range []string{"all", "default"} {
						if err := writeSysctl("net/ipv6/conf/"+k+"/disable_ipv6", "1"); err != nil {
							return err
						}
					}
					return nil
				})
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newHost(t)
			pod := newTestNS(t)
			if err := tt.prepare(pod); err != nil {
				t.Fatal(err)
			}
			cfg := PodConfig{
				NetNSPath:    pod.Path(),
				IfName:       "eth0",
				HostVethName: HostVethName("ns", "rollback"),
				IPv4:         netip.MustParseAddr("10.1.0.8"),
				IPv6:         netip.MustParseAddr("fd00:1::8"),
			}
			err := host.Do(func(ns.NetNS) error {
				_, err := SetupPod(cfg)
				return err
			})
			if err == nil {
				t.Fatal("SetupPod succeeded")
			}
			t.Logf("SetupPod failed as expected: %v", err)
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want %v", err, tt.wantErr)
			}
			if linkExists(t, host, cfg.HostVethName) {
				t.Errorf("host veth left behind after failure %v", err)
			}
		})
	}
}

func TestTeardownAfterNetNSGone(t *testing.T) {
	host := newHost(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	pod, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	path := pod.Path()
	cfg := PodConfig{NetNSPath: path, IfName: "eth0", HostVethName: HostVethName("ns", "gone"), IPv4: netip.MustParseAddr("10.1.0.9")}
	inNS(t, host, func() error {
		_, err := SetupPod(cfg)
		return err
	})
	// The runtime removes the netns before kubelet's DEL arrives.
	pod.Close()
	if err := testutils.UnmountNS(pod); err != nil {
		t.Fatal(err)
	}
	// The kernel destroys a netns asynchronously, and the veth with it.
	testenv.Eventually(t, 10*time.Second, "the host veth to go with the pod netns", func() bool {
		return !linkExists(t, host, cfg.HostVethName)
	})
	for range 2 {
		inNS(t, host, func() error { return TeardownPod(path, "eth0", cfg.HostVethName) })
	}

	// A newer sandbox of the same pod has the same host veth name; a late
	// DEL of the old sandbox must leave it alone.
	newer := newTestNS(t)
	cfg.NetNSPath = newer.Path()
	inNS(t, host, func() error {
		if _, err := SetupPod(cfg); err != nil {
			return err
		}
		if err := TeardownPod(path, "eth0", cfg.HostVethName); err != nil {
			return err
		}
		if err := TeardownPod("", "eth0", cfg.HostVethName); err != nil {
			return err
		}
		return CheckPod(cfg)
	})
}

func TestCheckPodDetectsChanges(t *testing.T) {
	tests := []struct {
		name   string
		break_ func(cfg PodConfig) error
		inPod  bool
		want   string
	}{
		{
			name:  "default route",
			inPod: true,
			break_: func(PodConfig) error {
				return netlink.RouteDel(&netlink.Route{Dst: ipNet(defaultV4), Gw: GatewayIPv4.AsSlice()})
			},
			want: "route 0.0.0.0/0 via 169.254.1.1 dev eth0 missing",
		},
		{
			name:  "ipv6 address",
			inPod: true,
			break_: func(cfg PodConfig) error {
				l, err := netlink.LinkByName(cfg.IfName)
				if err != nil {
					return err
				}
				return netlink.AddrDel(l, &netlink.Addr{IPNet: hostNet(cfg.IPv6)})
			},
			want: "address fd00:1::c/128 missing",
		},
		{
			name: "host route",
			break_: func(cfg PodConfig) error {
				l, err := netlink.LinkByName(cfg.HostVethName)
				if err != nil {
					return err
				}
				return netlink.RouteDel(hostRoute(l.Attrs().Index, cfg.IPv4))
			},
			want: "host route 10.1.0.12 dev",
		},
		{
			name:  "neighbour",
			inPod: true,
			break_: func(cfg PodConfig) error {
				l, err := netlink.LinkByName(cfg.IfName)
				if err != nil {
					return err
				}
				return netlink.NeighDel(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V6, IP: GatewayIPv6.AsSlice()})
			},
			want: "permanent neighbour fe80::1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newHost(t)
			pod := newTestNS(t)
			cfg := PodConfig{
				NetNSPath:    pod.Path(),
				IfName:       "eth0",
				HostVethName: HostVethName("ns", "check"),
				IPv4:         netip.MustParseAddr("10.1.0.12"),
				IPv6:         netip.MustParseAddr("fd00:1::c"),
			}
			inNS(t, host, func() error {
				_, err := SetupPod(cfg)
				return err
			})
			where := host
			if tt.inPod {
				where = pod
			}
			inNS(t, where, func() error { return tt.break_(cfg) })
			err := host.Do(func(ns.NetNS) error { return CheckPod(cfg) })
			if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("CheckPod = %v, want ErrMismatch mentioning %q", err, tt.want)
			}
		})
	}
}

func TestListHostVethsAndDeleteLink(t *testing.T) {
	host := newHost(t)
	pod := newTestNS(t)
	name := HostVethName("ns", "list")
	inNS(t, host, func() error {
		if _, err := SetupPod(PodConfig{NetNSPath: pod.Path(), IfName: "eth0", HostVethName: name, IPv4: netip.MustParseAddr("10.1.0.13")}); err != nil {
			return err
		}
		// Neither of these is a pod's host veth.
		if err := addVethPair("other0", "other1", 0); err != nil {
			return err
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "vethbridge"}}); err != nil {
			return err
		}
		got, err := ListHostVeths()
		if err != nil {
			return err
		}
		if len(got) != 1 || got[0] != name {
			t.Errorf("ListHostVeths = %v, want [%s]", got, name)
		}
		for range 2 {
			if err := DeleteLink(name); err != nil {
				return err
			}
		}
		got, err = ListHostVeths()
		if err != nil {
			return err
		}
		if len(got) != 0 {
			t.Errorf("ListHostVeths after delete = %v", got)
		}
		return nil
	})
}

func TestEnableForwarding(t *testing.T) {
	host := newTestNS(t)
	inNS(t, host, func() error {
		if err := EnableForwarding(); err != nil {
			return err
		}
		for _, k := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
			b, err := os.ReadFile("/proc/sys/" + k)
			if err != nil {
				return err
			}
			if strings.TrimSpace(string(b)) != "1" {
				t.Errorf("%s = %q", k, b)
			}
		}
		return nil
	})
}
