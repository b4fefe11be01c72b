package nodetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/coil-project/coil/coild/api"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	"github.com/coil-project/coil/nodenet"
)

// NetworkName is the name of the nodes' CNI network.
const NetworkName = "coil-test"

// Pod is a pod sandbox: its network namespace and its CNI identity.
type Pod struct {
	Namespace, Name string
	ContainerID     string
	NS              ns.NetNS
	// PortMappings are passed as the portMappings capability.
	PortMappings []PortMapping
	// Annotations, when not nil, are passed as containerd passes the
	// pod's annotations (io.kubernetes.cri.pod-annotations).
	Annotations map[string]string
}

// PortMapping is one entry of the portMappings capability, as kubelet
// sends it.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
}

// NewPod creates the sandbox netns of a pod, removed when t ends. The
// container ID is new on every call, as for a recreated sandbox.
func NewPod(t testing.TB, namespace, name string) *Pod {
	t.Helper()
	return &Pod{
		Namespace:   namespace,
		Name:        name,
		ContainerID: fmt.Sprintf("cid-%s-%s-%d", namespace, name, time.Now().UnixNano()),
		NS:          netnstest.New(t),
	}
}

// HostVeth is the name of the pod's eth0 veth on the node.
func (p *Pod) HostVeth() string { return nodenet.HostVethName(p.Namespace, p.Name) }

// HostVethOf is the name of the node's side of the veth of the pod's
// interface ifName.
func (p *Pod) HostVethOf(ifName string) string {
	return nodenet.PodHostVethName(p.Namespace, p.Name, ifName)
}

// RuntimeConf is what a container runtime passes to libcni for the pod's
// eth0.
func (p *Pod) RuntimeConf() *libcni.RuntimeConf { return p.RuntimeConfOf("eth0") }

// RuntimeConfOf is what a container runtime (or Multus) passes to libcni
// for the pod's interface ifName.
func (p *Pod) RuntimeConfOf(ifName string) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.NS.Path(),
		IfName:      ifName,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
		},
	}
	rt.CapabilityArgs = map[string]any{}
	if len(p.PortMappings) > 0 {
		rt.CapabilityArgs["portMappings"] = p.PortMappings
	}
	if p.Annotations != nil {
		rt.CapabilityArgs[api.PodAnnotationsCapability] = p.Annotations
	}
	return rt
}

// Addrs lists the global addresses on the pod's eth0, sorted.
func (p *Pod) Addrs(t testing.TB) []netip.Addr {
	t.Helper()
	return p.AddrsOn(t, "eth0")
}

// AddrsOn lists the global addresses on the pod's interface ifName, sorted.
func (p *Pod) AddrsOn(t testing.TB, ifName string) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	netnstest.Do(t, p.NS, func() error {
		link, err := netlink.LinkByName(ifName)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			ip, _ := netip.AddrFromSlice(a.IP)
			if ip = ip.Unmap(); ip.IsGlobalUnicast() {
				out = append(out, ip)
			}
		}
		return nil
	})
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// DefaultGateways lists the gateways of the pod's default routes, sorted.
func (p *Pod) DefaultGateways(t testing.TB) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	netnstest.Do(t, p.NS, func() error {
		routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			if gw, ok := netip.AddrFromSlice(r.Gw); ok {
				out = append(out, gw.Unmap())
			}
		}
		return nil
	})
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// Sysctl reads a sysctl (dotted name) inside the pod.
func (p *Pod) Sysctl(t testing.TB, name string) string {
	t.Helper()
	var v []byte
	netnstest.Do(t, p.NS, func() error {
		var err error
		v, err = os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/")))
		return err
	})
	return strings.TrimSpace(string(v))
}

// Conflist returns the network configuration list kubelet would read from
// /etc/cni/net.d: coil (declaring the pod annotations capability, as the
// manifests do), then tuning and portmap chained after it.
func (n *Node) Conflist() []byte {
	conf := map[string]any{
		"cniVersion": "1.1.0",
		"name":       NetworkName,
		"plugins": []any{
			map[string]any{"type": "coil", "coild": n.PluginEndpoint, "capabilities": map[string]bool{api.PodAnnotationsCapability: true}},
			map[string]any{"type": "tuning", "sysctl": map[string]string{"net.core.somaxconn": TuningSomaxconn}},
			map[string]any{"type": "portmap", "backend": "nftables", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, err := json.Marshal(conf)
	if err != nil {
		panic(err)
	}
	return b
}

// SecondConflist returns a second network configuration of coil alone,
// named name: what Multus would use for a pod's extra interface.
func (n *Node) SecondConflist(name string) []byte {
	b, err := json.Marshal(map[string]any{
		"cniVersion": "1.1.0",
		"name":       name,
		"plugins":    []any{map[string]any{"type": "coil", "coild": n.PluginEndpoint}},
	})
	if err != nil {
		panic(err)
	}
	return b
}

// CNI returns libcni's view of the node's network and a runtime handle.
func (n *Node) CNI() (*libcni.NetworkConfigList, *libcni.CNIConfig) {
	n.t.Helper()
	return n.CNIOf(n.Conflist())
}

// CNIOf returns libcni's view of the network configuration list conflist
// and a runtime handle sharing the node's CNI cache.
func (n *Node) CNIOf(conflist []byte) (*libcni.NetworkConfigList, *libcni.CNIConfig) {
	n.t.Helper()
	list, err := libcni.NetworkConfFromBytes(conflist)
	if err != nil {
		n.t.Fatal(err)
	}
	return list, libcni.NewCNIConfigWithCacheDir([]string{n.env.BinDir}, n.cniCache, nil)
}

// AddOn runs CNI ADD of the network conflist for the pod's interface
// ifName and returns the addresses of the result, sorted; it fails the
// test on error.
func (n *Node) AddOn(p *Pod, conflist []byte, ifName string) []netip.Addr {
	n.t.Helper()
	list, cni := n.CNIOf(conflist)
	var res types.Result
	err := n.NS.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var err error
		res, err = cni.AddNetworkList(ctx, list, p.RuntimeConfOf(ifName))
		return err
	})
	if err != nil {
		n.t.Fatalf("ADD %s/%s %s of network %s: %v", p.Namespace, p.Name, ifName, list.Name, err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		n.t.Fatal(err)
	}
	return ResultAddrs(n.t, cur)
}

// DelOn runs CNI DEL of the network conflist for the pod's interface
// ifName and fails the test on error.
func (n *Node) DelOn(p *Pod, conflist []byte, ifName string) {
	n.t.Helper()
	list, cni := n.CNIOf(conflist)
	err := n.NS.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return cni.DelNetworkList(ctx, list, p.RuntimeConfOf(ifName))
	})
	if err != nil {
		n.t.Fatalf("DEL %s/%s %s of network %s: %v", p.Namespace, p.Name, ifName, list.Name, err)
	}
}

// GCOn runs CNI GC of the network conflist with the attachments the
// runtime still holds in that network.
func (n *Node) GCOn(conflist []byte, valid []types.GCAttachment) error {
	list, cni := n.CNIOf(conflist)
	return n.NS.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid})
	})
}

// TryAdd runs CNI ADD for p inside the node and returns the result.
func (n *Node) TryAdd(p *Pod) (*current.Result, error) {
	list, cni := n.CNI()
	var res types.Result
	err := n.NS.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var err error
		res, err = cni.AddNetworkList(ctx, list, p.RuntimeConf())
		return err
	})
	if err != nil {
		return nil, err
	}
	return current.NewResultFromResult(res)
}

// Add runs CNI ADD and fails the test on error. It returns the pod's
// addresses from the result, sorted (IPv4 first).
func (n *Node) Add(p *Pod) []netip.Addr {
	n.t.Helper()
	res, err := n.TryAdd(p)
	if err != nil {
		n.t.Fatalf("ADD %s/%s: %v", p.Namespace, p.Name, err)
	}
	return ResultAddrs(n.t, res)
}

// ResultAddrs returns the addresses of a CNI result, sorted; it fails the
// test on any that is not a host address.
func ResultAddrs(t testing.TB, res *current.Result) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, ip := range res.IPs {
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			t.Fatalf("bad address in result: %v", ip)
		}
		ones, bits := ip.Address.Mask.Size()
		if ones != bits {
			t.Errorf("result address %v is not a host address", ip.Address)
		}
		out = append(out, a.Unmap())
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// TryDel runs CNI DEL for p inside the node.
func (n *Node) TryDel(p *Pod) error {
	list, cni := n.CNI()
	return n.NS.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return cni.DelNetworkList(ctx, list, p.RuntimeConf())
	})
}

// Del runs CNI DEL and fails the test on error.
func (n *Node) Del(p *Pod) {
	n.t.Helper()
	if err := n.TryDel(p); err != nil {
		n.t.Fatalf("DEL %s/%s: %v", p.Namespace, p.Name, err)
	}
}

// Check runs CNI CHECK for p inside the node.
func (n *Node) Check(p *Pod) error {
	list, cni := n.CNI()
	return n.NS.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return cni.CheckNetworkList(ctx, list, p.RuntimeConf())
	})
}

// CNIStatus runs CNI STATUS of the node's network inside the node.
func (n *Node) CNIStatus() error {
	list, cni := n.CNI()
	return n.NS.Do(func(ns.NetNS) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return cni.GetStatusNetworkList(ctx, list)
	})
}

// CNIError returns the CNI error in err, failing the test if there is none.
func CNIError(t testing.TB, err error) *types.Error {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return e
}

// CreatePod creates the Pod object of p on the node in the fake API
// server, as the scheduler would before kubelet runs ADD.
func (n *Node) CreatePod(p *Pod, labels, annotations map[string]string) {
	n.t.Helper()
	_, err := n.Kube.CoreV1().Pods(p.Namespace).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: labels, Annotations: annotations},
		Spec:       corev1.PodSpec{NodeName: n.Name},
		Status:     corev1.PodStatus{Phase: corev1.PodPending},
	}, metav1.CreateOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
}

// SetRunning reports p running with its addresses, as kubelet does after
// ADD.
func (n *Node) SetRunning(p *Pod, ips []netip.Addr) {
	n.t.Helper()
	ctx := context.Background()
	o, err := n.Kube.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	o.Status.Phase = corev1.PodRunning
	o.Status.PodIPs = nil
	for _, ip := range ips {
		o.Status.PodIPs = append(o.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	o.Status.PodIP = ips[0].String()
	if _, err := n.Kube.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, o, metav1.UpdateOptions{}); err != nil {
		n.t.Fatal(err)
	}
}

// StartPod creates the Pod object, runs ADD and reports the pod running,
// as scheduler and kubelet do; it returns the pod's addresses.
func (n *Node) StartPod(p *Pod, labels, annotations map[string]string) []netip.Addr {
	n.t.Helper()
	n.CreatePod(p, labels, annotations)
	ips := n.Add(p)
	n.SetRunning(p, ips)
	return ips
}
