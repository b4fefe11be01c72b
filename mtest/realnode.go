package mtest

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	kubeapitest "github.com/coil-project/coil/internal/testenv/kubeapi"
	kubenodetest "github.com/coil-project/coil/internal/testenv/kubenode"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Names of the images on the real nodes. The runtime image is imported
// from `make image`'s tarball and tagged CoilImage (and CoilImageNext, the
// same files under another tag, for rolling updates).
const (
	CoilImageName = "coil.local/coil"
	CoilImageTag  = "mtest"
	CoilImage     = CoilImageName + ":" + CoilImageTag
	CoilImageNext = CoilImageName + ":mtest-next"
	// BootstrapTaint is the taint nodes register with until coild is ready.
	BootstrapTaint = "coil.cybozu.com/bootstrap"
)

// kubeNodeNetwork is where the nodes, etcd and the API server live: pods
// reach it through their node, which masquerades them (the test bed has
// no route back to the pools).
var kubeNodeNetwork = netip.MustParsePrefix("192.168.100.0/24")

// realNodeBinaries are the programs a real-node cluster runs besides
// Coil's, built once per machine into the cache.
type realNodeBinaries struct {
	kubelet, scheduler, controllerManager, kubectl string
	runtimeDir                                     string
}

func ensureRealNodeBinaries(ctx context.Context) (*realNodeBinaries, error) {
	var b realNodeBinaries
	for name, dst := range map[string]*string{
		"kubelet":                 &b.kubelet,
		"kube-scheduler":          &b.scheduler,
		"kube-controller-manager": &b.controllerManager,
		"kubectl":                 &b.kubectl,
	} {
		p, err := kubeapitest.EnsureComponent(ctx, name)
		if err != nil {
			return nil, err
		}
		*dst = p
	}
	dir, err := kubenodetest.EnsureRuntime(ctx)
	if err != nil {
		return nil, err
	}
	b.runtimeDir = dir
	return &b, nil
}

// imageTarballs returns `make image`'s tarballs and the name the runtime
// image was written with.
func (c *Cluster) imageTarballs() (coil, pause, coilName string, err error) {
	coil = filepath.Join(c.BinDir, "coil-image.tar")
	pause = filepath.Join(c.BinDir, "pause-image.tar")
	for _, f := range []string{coil, pause} {
		if _, err := os.Stat(f); err != nil {
			return "", "", "", fmt.Errorf("%s missing: run `make image` first", f)
		}
	}
	coilName, err = imageTag(coil)
	if err != nil {
		return "", "", "", err
	}
	return coil, pause, coilName, nil
}

// imageTag reads the first tag of a docker image tarball.
func imageTag(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return "", fmt.Errorf("%s has no manifest.json", path)
		}
		if err != nil {
			return "", fmt.Errorf("read %s: %w", path, err)
		}
		if h.Name != "manifest.json" {
			continue
		}
		var m []struct{ RepoTags []string }
		if err := json.NewDecoder(tr).Decode(&m); err != nil {
			return "", fmt.Errorf("parse manifest of %s: %w", path, err)
		}
		if len(m) == 0 || len(m[0].RepoTags) == 0 {
			return "", fmt.Errorf("%s: image without a tag", path)
		}
		return m[0].RepoTags[0], nil
	}
}

// PauseImage is the sandbox image `make image` writes (PAUSE_IMAGE).
const PauseImage = "coil.local/pause:3.10"

// startRealNodes runs the control plane's controllers and a kubelet with
// containerd in every node namespace.
func (c *Cluster) startRealNodes(ctx context.Context) error {
	bins, err := ensureRealNodeBinaries(ctx)
	if err != nil {
		return err
	}
	c.kubeBins = bins
	coilTar, pauseTar, coilName, err := c.imageTarballs()
	if err != nil {
		return err
	}
	if err := c.startKubeControllers(); err != nil {
		return err
	}
	api, err := netip.ParseAddrPort(strings.TrimPrefix(c.apiserver.URL, "https://"))
	if err != nil {
		return fmt.Errorf("API server address %s: %w", c.apiserver.URL, err)
	}
	svc := netip.AddrPortFrom(netip.MustParseAddr(kubeapitest.KubernetesServiceIP), 443)
	errs := make(chan error, len(c.Nodes))
	for _, n := range c.Nodes {
		kubeconfig := filepath.Join(c.Dir, n.Name, "kubelet.kubeconfig")
		os.MkdirAll(filepath.Dir(kubeconfig), 0o755)
		if err := c.apiserver.WriteKubeconfig(kubeconfig, "system:node:"+n.Name); err != nil {
			return err
		}
		cfg := kubenodetest.Config{
			Name:              n.Name,
			NetNS:             "/var/run/netns/" + n.NetNS,
			Dir:               filepath.Join(c.Dir, n.Name, "kube"),
			NodeIPs:           []netip.Addr{n.V4, n.V6},
			Kubeconfig:        kubeconfig,
			Kubelet:           bins.kubelet,
			RuntimeDir:        bins.runtimeDir,
			SandboxImage:      PauseImage,
			Images:            []string{coilTar, pauseTar},
			CgroupRoot:        fmt.Sprintf("/coil-mtest.%s.%s", c.id, n.Name),
			RegisterTaints:    []string{BootstrapTaint + ":NoSchedule"},
			KubernetesService: svc,
			APIServer:         api,
			MasqueradeTo:      kubeNodeNetwork,
			Detached:          c.opts.Detached,
		}
		go func() {
			kn, err := kubenodetest.Start(ctx, cfg)
			if err == nil {
				c.mu.Lock()
				n.kube = kn
				c.mu.Unlock()
				for _, tag := range []string{CoilImage, CoilImageNext} {
					if _, err = kn.Ctr(ctx, "images", "tag", "--force", coilName, tag); err != nil {
						break
					}
				}
			}
			errs <- err
		}()
	}
	for range c.Nodes {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	if err != nil {
		return err
	}
	// The kubelets register their Nodes.
	return Eventually(2*time.Minute, func() error {
		nodes, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(nodes.Items) != len(c.Nodes) {
			var logs strings.Builder
			for _, n := range c.Nodes {
				logs.WriteString(n.kube.Logs())
			}
			return fmt.Errorf("%d of %d nodes registered\n%s", len(nodes.Items), len(c.Nodes), logs.String())
		}
		return nil
	})
}

// startKubeControllers runs kube-scheduler and kube-controller-manager in
// the ctl namespace, as cluster admins.
func (c *Cluster) startKubeControllers() error {
	p, err := c.start(c.ctl, "kube-scheduler", nil, c.kubeBins.scheduler,
		"--kubeconfig", c.kubeconfig,
		"--authentication-kubeconfig", c.kubeconfig,
		"--authorization-kubeconfig", c.kubeconfig,
		"--leader-elect=false",
		"--bind-address", ctlV4,
		"--v", "1",
	)
	if err != nil {
		return err
	}
	c.kubeProcs = append(c.kubeProcs, p)
	p, err = c.start(c.ctl, "kube-controller-manager", nil, c.kubeBins.controllerManager,
		"--kubeconfig", c.kubeconfig,
		"--authentication-kubeconfig", c.kubeconfig,
		"--authorization-kubeconfig", c.kubeconfig,
		"--leader-elect=false",
		"--bind-address", ctlV4,
		"--root-ca-file", c.apiserver.CAFile,
		"--service-account-private-key-file", c.apiserver.ServiceAccountKeyFile(),
		"--use-service-account-credentials=false",
		// Quick reactions keep the scenarios short.
		"--node-monitor-grace-period", "20s",
		"--v", "1",
	)
	if err != nil {
		return err
	}
	c.kubeProcs = append(c.kubeProcs, p)
	return nil
}

// KubectlPath is the kubectl binary the cluster uses.
func (c *Cluster) KubectlPath() (string, error) {
	if c.kubeBins == nil {
		return "", fmt.Errorf("not a real-node cluster")
	}
	return c.kubeBins.kubectl, nil
}

// Kubectl runs kubectl (built from the Kubernetes module at the API
// server's version) as cluster admin in dir, and returns its output.
func (c *Cluster) Kubectl(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.ctl, c.kubeBins.kubectl}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.kubeconfig)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// KubeNode is the node's kubelet and containerd (real-node clusters).
func (n *Node) KubeNode() *kubenodetest.Node { return n.kube }

// NodeState is what a test needs to check that a node left nothing
// behind.
func (n *Node) NodeState() kubenodetest.State { return n.kube.State() }

// podNetNSes maps each pod address on a real node to the path of the
// pod's network namespace inside the node.
func (n *Node) podNetNSes(ctx context.Context) (map[netip.Addr]string, error) {
	out, err := n.kube.Exec(ctx, "sh", "-c", `for f in /run/netns/cni-*; do [ -e "$f" ] || continue; for a in $(nsenter --net="$f" ip -o addr show dev eth0 scope global | awk '{print $4}'); do echo "$f $a"; done; done`)
	if err != nil {
		return nil, err
	}
	m := map[netip.Addr]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			continue
		}
		p, err := netip.ParsePrefix(f[1])
		if err != nil {
			continue
		}
		m[p.Addr()] = f[0]
	}
	return m, nil
}

// PodNetNSPath returns a path, valid in the host's mount namespace, of the
// network namespace of the pod with address ip on real node n.
func (n *Node) PodNetNSPath(ctx context.Context, ip netip.Addr) (string, error) {
	nses, err := n.podNetNSes(ctx)
	if err != nil {
		return "", err
	}
	ns, ok := nses[ip]
	if !ok {
		return "", fmt.Errorf("no pod network namespace with %s on %s", ip, n.Name)
	}
	// The runtime mounted it inside the node's own mount namespace, which
	// /proc/PID/root of any process in it shows.
	return fmt.Sprintf("/proc/%d/root%s", n.kube.HolderPID(), ns), nil
}

// PodExec runs a command in the network namespace of the pod with the
// address ip on node n (real-node clusters).
func (n *Node) PodExec(ctx context.Context, ip netip.Addr, name string, args ...string) (string, error) {
	nses, err := n.podNetNSes(ctx)
	if err != nil {
		return "", err
	}
	ns, ok := nses[ip]
	if !ok {
		return "", fmt.Errorf("no pod network namespace with %s on %s", ip, n.Name)
	}
	return n.kube.Exec(ctx, "nsenter", append([]string{"--net=" + ns, "--", name}, args...)...)
}

// NodeOf returns the cluster's node named name.
func (c *Cluster) NodeOf(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// RunningPodIPs returns the running pods of a namespace with their
// addresses and nodes, keyed by pod name.
func (c *Cluster) RunningPodIPs(ctx context.Context, namespace, selector string) (map[string]corev1.Pod, error) {
	pods, err := c.Kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, err
	}
	m := map[string]corev1.Pod{}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			m[p.Name] = p
		}
	}
	return m, nil
}
