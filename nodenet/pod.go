package nodenet

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Gateway addresses the pod's default routes point to. No interface holds
// them: the pod reaches them through permanent neighbour entries carrying the
// host veth's MAC, so the host needs neither proxy ARP nor proxy NDP, and
// every pod sees the same gateway whatever node it runs on.
var (
	GatewayIPv4 = netip.MustParseAddr("169.254.1.1")
	GatewayIPv6 = netip.MustParseAddr("fe80::1")
)

// maxIfNameLen is IFNAMSIZ minus the terminating NUL.
const maxIfNameLen = 15

// Sentinel errors callers can branch on with errors.Is.
var (
	// ErrInvalidConfig is returned for a PodConfig that cannot be set up.
	ErrInvalidConfig = errors.New("invalid pod network config")
	// ErrInterfaceExists is returned by SetupPod when the pod netns
	// already has an interface of the requested name.
	ErrInterfaceExists = errors.New("interface already exists in pod netns")
	// ErrMismatch is returned by CheckPod when the pod's network is not
	// what SetupPod would have made.
	ErrMismatch = errors.New("pod network is not as configured")
)

// HostVethName returns the name of the host side of a pod's veth pair:
// HostVethPrefix and the first 11 hex digits of sha1("<namespace>.<pod>"). It is the
// scheme Calico uses, so names are stable across restarts of the pod's
// sandbox, fit IFNAMSIZ, and tools that know the scheme find the link.
func HostVethName(namespace, pod string) string {
	sum := sha1.Sum([]byte(namespace + "." + pod))
	return HostVethPrefix + hex.EncodeToString(sum[:])[:11]
}

// PrimaryInterface is the pod interface that keeps HostVethName and gets
// the pod's default routes; other interfaces (a second network attached by
// Multus, say) are secondary.
const PrimaryInterface = "eth0"

// PodHostVethName returns the name of the host side of the veth of a pod's
// interface ifName. The primary interface (and "", which means it) keeps
// the Calico-compatible HostVethName; any other interface gets
// HostVethPrefix and 11 hex digits of sha1("<namespace>.<pod>/<ifName>"),
// so that adding a second interface never replaces the first one's veth.
// The "/" cannot occur in a namespace or pod name, so no interface's name
// equals the primary name of another pod.
func PodHostVethName(namespace, pod, ifName string) string {
	if ifName == "" || ifName == PrimaryInterface {
		return HostVethName(namespace, pod)
	}
	sum := sha1.Sum([]byte(namespace + "." + pod + "/" + ifName))
	return HostVethPrefix + hex.EncodeToString(sum[:])[:11]
}

// PodConfig says how one pod interface is set up.
type PodConfig struct {
	// NetNSPath is the path of the pod's network namespace.
	NetNSPath string
	// IfName is the interface name inside the pod, usually "eth0".
	IfName string
	// HostVethName is the name of the host side, see PodHostVethName.
	HostVethName string
	// Secondary marks an interface other than the pod's primary one: it
	// gets its address and the gateway neighbours but no routes, since
	// the pod's on-link gateway and default routes belong to the primary
	// interface and a second set would clash with them. Traffic to the
	// interface's address comes in through it; what the pod sends
	// follows the pod's routes.
	Secondary bool
	// IPv4 and IPv6 are the pod's addresses; either may be the zero
	// Addr for a single-stack pod, not both.
	IPv4, IPv6 netip.Addr
	// MTU of both ends of the veth; 0 keeps the kernel default.
	MTU int
}

func (c PodConfig) validate() error {
	return c.check(true)
}

// check validates the configuration, its addresses too if withAddresses.
func (c PodConfig) check(withAddresses bool) error {
	var problems []string
	if c.NetNSPath == "" {
		problems = append(problems, "netns path is empty")
	}
	if c.IfName == "" || len(c.IfName) > maxIfNameLen {
		problems = append(problems, fmt.Sprintf("interface name %q must be 1-%d characters", c.IfName, maxIfNameLen))
	}
	if c.HostVethName == "" || len(c.HostVethName) > maxIfNameLen {
		problems = append(problems, fmt.Sprintf("host veth name %q must be 1-%d characters", c.HostVethName, maxIfNameLen))
	}
	if withAddresses && !c.IPv4.IsValid() && !c.IPv6.IsValid() {
		problems = append(problems, "no address given")
	}
	if c.IPv4.IsValid() && !c.IPv4.Unmap().Is4() {
		problems = append(problems, fmt.Sprintf("IPv4 address %s is not IPv4", c.IPv4))
	}
	if c.IPv6.IsValid() && (!c.IPv6.Is6() || c.IPv6.Is4In6()) {
		problems = append(problems, fmt.Sprintf("IPv6 address %s is not IPv6", c.IPv6))
	}
	if c.MTU < 0 {
		problems = append(problems, fmt.Sprintf("MTU %d is negative", c.MTU))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, strings.Join(problems, "; "))
	}
	return nil
}

// Link describes one end of a pod's veth pair, as a CNI result needs it.
type Link struct {
	// Name is the interface name.
	Name string
	// MAC is the interface's hardware address.
	MAC net.HardwareAddr
	// Index is the interface index in its own namespace.
	Index int
	// Sandbox is the netns path for the pod side, empty for the host side.
	Sandbox string
}

// PodLinks are the two ends of a pod's veth pair.
type PodLinks struct {
	// Host is the end in the host netns.
	Host Link
	// Container is the end in the pod netns, with Sandbox set.
	Container Link
}

// SetupPod creates the veth pair of a pod and configures both ends:
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
// A secondary interface (cfg.Secondary) gets the same minus the pod's
// routes, which stay with the primary interface.
//
// The host side has no address: the permanent neighbours spare the pod ARP
// and NDP for its gateway, and the host routes bring replies back. A host
// link left with the same name (a node that crashed half-way through a
// teardown) is replaced. On any failure everything SetupPod created is
// removed again.
func SetupPod(cfg PodConfig) (PodLinks, error) {
	if err := cfg.validate(); err != nil {
		return PodLinks{}, err
	}
	p, err := CreatePodLinks(cfg)
	if err != nil {
		return PodLinks{}, err
	}
	return p.Finish(cfg.IPv4, cfg.IPv6)
}

// PendingPod is a pod's veth pair created before its addresses are known,
// so that a CNI ADD can build the links while coild allocates the
// addresses (an etcd write) instead of after. Exactly one of Finish and
// Abandon must follow.
type PendingPod struct {
	cfg   PodConfig
	podNS ns.NetNS
	host  Link
}

// CreatePodLinks does the first half of SetupPod, which needs no address:
// it replaces a leftover host link of the same name, creates the veth pair
// with its peer in the pod netns, and brings the host side up. cfg's
// addresses are ignored. On failure nothing it created is left.
func CreatePodLinks(cfg PodConfig) (*PendingPod, error) {
	if err := cfg.check(false); err != nil {
		return nil, err
	}
	podNS, err := ns.GetNS(cfg.NetNSPath)
	if err != nil {
		return nil, fmt.Errorf("open pod netns %q: %w", cfg.NetNSPath, err)
	}
	p := &PendingPod{cfg: cfg, podNS: podNS}
	if err := p.create(); err != nil {
		podNS.Close()
		return nil, err
	}
	return p, nil
}

func (p *PendingPod) create() error {
	cfg := p.cfg
	if err := DeleteLink(cfg.HostVethName); err != nil {
		return fmt.Errorf("remove leftover host link: %w", err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: cfg.HostVethName, MTU: cfg.MTU},
		PeerName:      cfg.IfName,
		PeerNamespace: netlink.NsFd(int(p.podNS.Fd())),
		PeerMTU:       uint32(cfg.MTU),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("create veth %q with peer %q in %q: %w: %w",
				cfg.HostVethName, cfg.IfName, cfg.NetNSPath, ErrInterfaceExists, err)
		}
		return fmt.Errorf("create veth %q with peer %q in %q: %w",
			cfg.HostVethName, cfg.IfName, cfg.NetNSPath, err)
	}
	err := func() error {
		host, err := netlink.LinkByName(cfg.HostVethName)
		if err != nil {
			return fmt.Errorf("find host veth %q: %w", cfg.HostVethName, err)
		}
		if err := disableDAD(cfg.HostVethName); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(host); err != nil {
			return fmt.Errorf("set host veth %q up: %w", cfg.HostVethName, err)
		}
		p.host = Link{Name: cfg.HostVethName, MAC: host.Attrs().HardwareAddr, Index: host.Attrs().Index}
		return nil
	}()
	if err != nil {
		return p.undo(err)
	}
	return nil
}

// undo deletes the pair after err, reporting both failures if that fails
// too. Deleting one end of a veth deletes the other end and every address
// and route on either, so this undoes all of SetupPod.
func (p *PendingPod) undo(err error) error {
	if delErr := DeleteLink(p.cfg.HostVethName); delErr != nil {
		err = errors.Join(err, fmt.Errorf("roll back: %w", delErr))
	}
	return err
}

// Finish configures the pair with the pod's addresses, as SetupPod does,
// and returns both ends. On failure it deletes the pair.
func (p *PendingPod) Finish(ipv4, ipv6 netip.Addr) (PodLinks, error) {
	defer p.podNS.Close()
	cfg := p.cfg
	cfg.IPv4, cfg.IPv6 = ipv4, ipv6
	if err := cfg.validate(); err != nil {
		return PodLinks{}, p.undo(err)
	}
	links, err := configurePod(cfg, p.podNS, p.host)
	if err != nil {
		return PodLinks{}, p.undo(err)
	}
	return links, nil
}

// Abandon deletes the pair, when the pod gets no address after all.
func (p *PendingPod) Abandon() error {
	defer p.podNS.Close()
	if err := DeleteLink(p.cfg.HostVethName); err != nil {
		return fmt.Errorf("abandon links of pod netns %q: %w", p.cfg.NetNSPath, err)
	}
	return nil
}

// configurePod configures the pod side of a fresh veth pair whose host
// side host is up, then adds the host routes.
func configurePod(cfg PodConfig, podNS ns.NetNS, host Link) (PodLinks, error) {
	links := PodLinks{Host: host}
	err := podNS.Do(func(ns.NetNS) error {
		c, err := configurePodSide(cfg, links.Host.MAC)
		links.Container = c
		return err
	})
	if err != nil {
		return PodLinks{}, fmt.Errorf("configure %q in pod netns %q: %w", cfg.IfName, cfg.NetNSPath, err)
	}

	// Host routes come last: until the pod side is up the veth has no
	// carrier, and there is no point in attracting traffic before then.
	for _, a := range []netip.Addr{cfg.IPv4, cfg.IPv6} {
		if !a.IsValid() {
			continue
		}
		r := hostRoute(host.Index, a)
		if err := netlink.RouteReplace(r); err != nil {
			return PodLinks{}, fmt.Errorf("add host route %s dev %s: %w", r.Dst, cfg.HostVethName, err)
		}
	}
	return links, nil
}

// hostRoute is the route on the host that sends a pod's address to its veth.
func hostRoute(linkIndex int, a netip.Addr) *netlink.Route {
	return &netlink.Route{
		LinkIndex: linkIndex,
		Dst:       hostNet(a),
		Scope:     netlink.SCOPE_LINK,
	}
}

// configurePodSide runs inside the pod netns.
func configurePodSide(cfg PodConfig, hostMAC net.HardwareAddr) (Link, error) {
	link, err := netlink.LinkByName(cfg.IfName)
	if err != nil {
		return Link{}, fmt.Errorf("find interface: %w", err)
	}
	idx := link.Attrs().Index
	if err := disableDAD(cfg.IfName); err != nil {
		return Link{}, err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return Link{}, fmt.Errorf("set up: %w", err)
	}

	if cfg.IPv4.IsValid() {
		a := &netlink.Addr{IPNet: hostNet(cfg.IPv4)}
		if err := netlink.AddrAdd(link, a); err != nil {
			return Link{}, fmt.Errorf("add address %s: %w", a.IPNet, err)
		}
		if err := addGateway(idx, GatewayIPv4, hostMAC, !cfg.Secondary); err != nil {
			return Link{}, err
		}
	}
	if cfg.IPv6.IsValid() {
		// NODAD: the address is ours by IPAM and must be usable as soon
		// as the CNI ADD returns, not a second later.
		a := &netlink.Addr{IPNet: hostNet(cfg.IPv6), Flags: unix.IFA_F_NODAD}
		if err := netlink.AddrAdd(link, a); err != nil {
			return Link{}, fmt.Errorf("add address %s: %w", a.IPNet, err)
		}
		if err := addGateway(idx, GatewayIPv6, hostMAC, !cfg.Secondary); err != nil {
			return Link{}, err
		}
	}
	return Link{
		Name:    cfg.IfName,
		MAC:     link.Attrs().HardwareAddr,
		Index:   idx,
		Sandbox: cfg.NetNSPath,
	}, nil
}

// podRoutes returns the routes the pod side gets for one gateway family.
func podRoutes(linkIndex int, gw netip.Addr) []*netlink.Route {
	gwIP := net.IP(gw.AsSlice())
	if gw.Is4() {
		return []*netlink.Route{
			// The gateway is in no subnet of the pod, so it needs
			// its own on-link route before it can be a next hop.
			{LinkIndex: linkIndex, Dst: hostNet(gw), Scope: netlink.SCOPE_LINK},
			{LinkIndex: linkIndex, Dst: ipNet(defaultV4), Gw: gwIP},
		}
	}
	// fe80::/64 is on-link on every IPv6 interface already.
	return []*netlink.Route{
		{LinkIndex: linkIndex, Dst: ipNet(defaultV6), Gw: gwIP},
	}
}

// podNeigh is the permanent neighbour entry that resolves a gateway address
// to the host veth's MAC.
func podNeigh(linkIndex int, gw netip.Addr, hostMAC net.HardwareAddr) *netlink.Neigh {
	family := netlink.FAMILY_V4
	if gw.Is6() {
		family = netlink.FAMILY_V6
	}
	return &netlink.Neigh{
		LinkIndex:    linkIndex,
		Family:       family,
		State:        netlink.NUD_PERMANENT,
		IP:           net.IP(gw.AsSlice()),
		HardwareAddr: hostMAC,
	}
}

// addGateway installs the neighbour entry for one gateway, and its routes
// if withRoutes (the primary interface).
func addGateway(linkIndex int, gw netip.Addr, hostMAC net.HardwareAddr, withRoutes bool) error {
	if err := netlink.NeighSet(podNeigh(linkIndex, gw, hostMAC)); err != nil {
		return fmt.Errorf("add neighbour %s lladdr %s: %w", gw, hostMAC, err)
	}
	if !withRoutes {
		return nil
	}
	for _, r := range podRoutes(linkIndex, gw) {
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("add route %s via %s: %w", r.Dst, r.Gw, err)
		}
	}
	return nil
}

// TeardownPod removes a pod's veth pair by deleting its pod side, which
// takes the host side and the host routes with it. It is idempotent: a pod
// netns or link that is already gone is success, because kubelet repeats
// DEL and the runtime may have deleted the netns first (which deletes the
// pair as well).
//
// The host link is never deleted by name alone. HostVethName derives from
// the pod's name, not its sandbox, so when the pod netns is gone a link of
// that name can only be the veth of a newer sandbox of the same pod, and a
// late DEL must not cut that one off.
func TeardownPod(netnsPath, ifName, hostVethName string) error {
	peerIndex, err := podVethPeer(netnsPath, ifName, true)
	if err != nil {
		return err
	}
	// The kernel deletes the peer with the pod side; this only catches a
	// host link that somehow outlived it while still being that peer.
	host, err := hostPeer(hostVethName, peerIndex)
	if err != nil || host == nil {
		return err
	}
	if err := DeleteLink(hostVethName); err != nil {
		return fmt.Errorf("teardown host side: %w", err)
	}
	return nil
}

// podVethPeer finds the pod's interface ifName in its netns and, if it is
// a veth, returns its peer's index (in the peer's namespace), deleting it
// first if del. An interface that is not a veth is not Coil's: 0, left
// alone. So is a netns or interface already gone.
func podVethPeer(netnsPath, ifName string, del bool) (int, error) {
	if netnsPath == "" || ifName == "" {
		return 0, nil
	}
	peerIndex := 0
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		link, err := netlink.LinkByName(ifName)
		if err != nil {
			if isLinkNotFound(err) {
				return nil
			}
			return fmt.Errorf("find %q: %w", ifName, err)
		}
		if link.Type() != linkTypeVeth {
			return nil
		}
		peerIndex = link.Attrs().ParentIndex
		if del {
			if err := netlink.LinkDel(link); err != nil && !isLinkNotFound(err) {
				return fmt.Errorf("delete %q: %w", ifName, err)
			}
		}
		return nil
	})
	if err != nil && !netnsGone(err) {
		return 0, fmt.Errorf("teardown %q in pod netns %q: %w", ifName, netnsPath, err)
	}
	return peerIndex, nil
}

// hostPeer returns the link of the current netns named hostVethName if it
// is the peer of index peerIndex, nil if there is none: a link of that
// name is never trusted by its name alone (see TeardownPod).
func hostPeer(hostVethName string, peerIndex int) (netlink.Link, error) {
	if peerIndex == 0 || hostVethName == "" {
		return nil, nil
	}
	host, err := netlink.LinkByName(hostVethName)
	if err != nil {
		if isLinkNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("find host veth %q: %w", hostVethName, err)
	}
	if host.Attrs().Index != peerIndex {
		return nil, nil
	}
	return host, nil
}

// netnsGone reports whether err says the network namespace no longer exists.
func netnsGone(err error) bool {
	var notExist ns.NSPathNotExistErr
	var notNS ns.NSPathNotNSErr
	return errors.As(err, &notExist) || errors.As(err, &notNS)
}

// isLinkNotFound reports whether err says a link does not exist.
func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// DeleteLink deletes the link of the given name in the current netns; a
// link that does not exist is success.
func DeleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		if isLinkNotFound(err) {
			return nil
		}
		return fmt.Errorf("find link %q: %w", name, err)
	}
	if err := netlink.LinkDel(link); err != nil && !isLinkNotFound(err) {
		return fmt.Errorf("delete link %q: %w", name, err)
	}
	return nil
}

// ListHostVeths returns the names of the veth links in the current netns
// whose name starts with HostVethPrefix, the host sides of pods. coild compares
// them with its allocations to remove links of pods that no longer exist.
func ListHostVeths() ([]string, error) {
	links, err := retryDump("links", netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var names []string
	for _, l := range links {
		if l.Type() == linkTypeVeth && strings.HasPrefix(l.Attrs().Name, HostVethPrefix) {
			names = append(names, l.Attrs().Name)
		}
	}
	return names, nil
}
