package mtest

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// networkName is the name of the conflist the suite's "kubelet" uses.
const networkName = "k8s-pod-network"

// Pod is a pod the suite started like kubelet: an API object, a network
// namespace, and a CNI ADD through cnitool on its node.
type Pod struct {
	Namespace, Name string
	Node            *Node
	NetNS           string
	// ContainerID is the one cnitool derives from the netns path.
	ContainerID string
	// UID is the Pod object's UID, passed as K8S_POD_UID like kubelet does.
	UID string
	IPs []netip.Addr
}

var podSeq atomic.Int64

// netconfDir writes the conflist kubelet would read from /etc/cni/net.d.
func (n *Node) netconfDir() (string, error) {
	dir := filepath.Join(n.c.Dir, n.Name, "net.d")
	if _, err := os.Stat(filepath.Join(dir, "10-coil.conflist")); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	conf := fmt.Sprintf(`{
  "cniVersion": "1.1.0",
  "name": %q,
  "plugins": [
    {"type": "coil", "coild": "unix://%s"},
    {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_local": "0"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`, networkName, n.Socket)
	return dir, os.WriteFile(filepath.Join(dir, "10-coil.conflist"), []byte(conf), 0o644)
}

// CreateNamespace creates a Kubernetes namespace with annotations.
func (c *Cluster) CreateNamespace(ctx context.Context, name string, annotations map[string]string) error {
	_, err := c.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// NewPod creates the Pod object and the pod's network namespace, but does
// not run CNI ADD yet.
func (n *Node) NewPod(ctx context.Context, namespace, name string) (*Pod, error) {
	return n.NewPodWith(ctx, namespace, name, PodMeta{})
}

// PodMeta are the labels and annotations of a Pod object.
type PodMeta struct {
	Labels, Annotations map[string]string
}

// NewPodWith is NewPod for a Pod object with labels and annotations.
func (n *Node) NewPodWith(ctx context.Context, namespace, name string, meta PodMeta) (*Pod, error) {
	c := n.c
	if err := c.CreateNamespace(ctx, namespace, nil); err != nil {
		return nil, err
	}
	created, err := c.Kube.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: meta.Labels, Annotations: meta.Annotations},
		Spec: corev1.PodSpec{
			NodeName:   n.Name,
			Containers: []corev1.Container{{Name: "main", Image: "pause"}},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create Pod %s/%s: %w", namespace, name, err)
	}
	p := &Pod{Namespace: namespace, Name: name, Node: n, NetNS: fmt.Sprintf("%s-p%d", c.id, podSeq.Add(1))}
	if err == nil {
		p.UID = string(created.UID)
	} else if existing, gerr := c.Kube.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{}); gerr == nil {
		p.UID = string(existing.UID)
	}
	if _, err := run("ip", "netns", "add", p.NetNS); err != nil {
		return nil, err
	}
	path := "/var/run/netns/" + p.NetNS
	sum := sha512.Sum512([]byte(path))
	p.ContainerID = fmt.Sprintf("cnitool-%x", sum[:10])
	c.mu.Lock()
	c.pods[p.NetNS] = p
	c.mu.Unlock()
	return p, nil
}

// CNIError is a failed CNI command with the plugin's error object.
type CNIError struct {
	Code    int    `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details"`
	Raw     string `json:"-"`
}

func (e *CNIError) Error() string {
	return fmt.Sprintf("CNI error %d: %s %s (%s)", e.Code, e.Msg, e.Details, e.Raw)
}

// cnitool runs the reference CNI client in the pod's node namespace.
func (p *Pod) cnitool(cmd string) (string, error) {
	n := p.Node
	dir, err := n.netconfDir()
	if err != nil {
		return "", err
	}
	env := []string{
		"CNI_PATH=" + n.c.CNIBin,
		"NETCONFPATH=" + dir,
		"CNI_ARGS=" + p.cniArgs(),
		"CNI_IFNAME=eth0",
	}
	out, err := runIn(n.NetNS, env, filepath.Join(n.c.CNIBin, "cnitool"), cmd, networkName, "/var/run/netns/"+p.NetNS)
	if err != nil {
		var ce *cmdError
		if errors.As(err, &ce) {
			// cnitool prints the plugin's error object on stderr.
			raw := ce.stderr + ce.stdout
			var obj CNIError
			for i := 0; i < len(raw); i++ {
				if raw[i] == '{' && json.Unmarshal([]byte(raw[i:]), &obj) == nil && obj.Code != 0 {
					obj.Raw = raw
					return out, &obj
				}
			}
		}
		return out, err
	}
	return out, nil
}

// cniArgs is what kubelet passes in CNI_ARGS.
func (p *Pod) cniArgs() string {
	args := "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + p.Namespace + ";K8S_POD_NAME=" + p.Name
	if p.UID != "" {
		args += ";K8S_POD_UID=" + p.UID
	}
	return args
}

// AddPlugin runs the coil plugin alone, the way a runtime executes a
// plugin (CNI_* variables, configuration on stdin), and returns the CNI
// error object it printed when it fails: cnitool shows only the message,
// and the tests check the code.
func (p *Pod) AddPlugin() error {
	n := p.Node
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"type":"coil","coild":"unix://%s"}`, networkName, n.Socket)
	cmd := exec.Command("ip", "netns", "exec", n.NetNS, filepath.Join(n.c.CNIBin, "coil"))
	cmd.Env = append(os.Environ(),
		"CNI_COMMAND=ADD",
		"CNI_CONTAINERID="+p.ContainerID,
		"CNI_NETNS=/var/run/netns/"+p.NetNS,
		"CNI_IFNAME=eth0",
		"CNI_PATH="+n.c.CNIBin,
		"CNI_ARGS="+p.cniArgs(),
	)
	cmd.Stdin = strings.NewReader(conf)
	out, err := cmd.Output()
	if err == nil {
		return nil
	}
	var obj CNIError
	if jerr := json.Unmarshal(out, &obj); jerr == nil && obj.Code != 0 {
		obj.Raw = string(out)
		return &obj
	}
	return fmt.Errorf("coil plugin ADD: %w: %s", err, out)
}

// Add runs CNI ADD, records the pod's addresses and, like kubelet, reports
// the pod running with them in its status.
func (p *Pod) Add() error {
	out, err := p.cnitool("add")
	if err != nil {
		return err
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return fmt.Errorf("parse CNI result %q: %w", out, err)
	}
	p.IPs = nil
	for _, ip := range res.IPs {
		pf, err := netip.ParsePrefix(ip.Address)
		if err != nil {
			return fmt.Errorf("CNI result address %q: %w", ip.Address, err)
		}
		p.IPs = append(p.IPs, pf.Addr())
	}
	return p.reportRunning()
}

// reportRunning sets the Pod's status to running with its addresses.
func (p *Pod) reportRunning() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pods := p.Node.c.Kube.CoreV1().Pods(p.Namespace)
	o, err := pods.Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("report pod %s/%s running: %w", p.Namespace, p.Name, err)
	}
	o.Status.Phase = corev1.PodRunning
	o.Status.PodIPs = nil
	for _, a := range p.IPs {
		o.Status.PodIPs = append(o.Status.PodIPs, corev1.PodIP{IP: a.String()})
	}
	if len(p.IPs) > 0 {
		o.Status.PodIP = p.IPs[0].String()
	}
	if _, err := pods.UpdateStatus(ctx, o, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("report pod %s/%s running: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// Del runs CNI DEL (the pod's netns stays).
func (p *Pod) Del() error {
	_, err := p.cnitool("del")
	return err
}

// Remove runs CNI DEL, deletes the netns and the Pod object.
func (p *Pod) Remove(ctx context.Context) error {
	if err := p.Del(); err != nil {
		return err
	}
	return p.Forget(ctx)
}

// Forget deletes the netns and the Pod object without CNI DEL, like a node
// that lost track of a pod.
func (p *Pod) Forget(ctx context.Context) error {
	run("ip", "netns", "del", p.NetNS)
	c := p.Node.c
	c.mu.Lock()
	delete(c.pods, p.NetNS)
	c.mu.Unlock()
	err := c.Kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// StartPod creates a pod and runs CNI ADD for it.
func (n *Node) StartPod(ctx context.Context, namespace, name string) (*Pod, error) {
	return n.StartPodWith(ctx, namespace, name, PodMeta{})
}

// StartPodWith is StartPod for a Pod object with labels and annotations.
func (n *Node) StartPodWith(ctx context.Context, namespace, name string, meta PodMeta) (*Pod, error) {
	p, err := n.NewPodWith(ctx, namespace, name, meta)
	if err != nil {
		return nil, err
	}
	if err := p.Add(); err != nil {
		return p, fmt.Errorf("ADD pod %s/%s on %s: %w", namespace, name, n.Name, err)
	}
	return p, nil
}

// IPv4 returns the pod's IPv4 address (invalid if none).
func (p *Pod) IPv4() netip.Addr {
	for _, a := range p.IPs {
		if a.Is4() {
			return a
		}
	}
	return netip.Addr{}
}

// IPv6 returns the pod's IPv6 address (invalid if none).
func (p *Pod) IPv6() netip.Addr {
	for _, a := range p.IPs {
		if a.Is6() {
			return a
		}
	}
	return netip.Addr{}
}

// Ping sends one echo request from the pod to dst.
func (p *Pod) Ping(dst netip.Addr) error {
	_, err := runIn(p.NetNS, nil, "ping", "-c", "1", "-W", "2", dst.String())
	return err
}

// dialIn opens a connection from inside the network namespace at path.
func dialIn(path string, ctx context.Context, network, addr string) (net.Conn, error) {
	return netnstest.DialIn(ctx, path, network, addr)
}
