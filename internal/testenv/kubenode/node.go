package kubenodetest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// KubeletSysctls are the machine-wide sysctls the kubelet sets at start
// (and it has no mode that only warns). Each node's mount namespace
// bind-mounts a private file over each of them, holding the host's value,
// so the kubelet's writes stay inside the node.
var KubeletSysctls = []string{
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
	"vm/overcommit_memory",
	"vm/panic_on_oom",
}

// overlaidDirs are the host directories each node sees through an overlay
// whose upper layer is in the node's directory: the kubelet, containerd
// and the CNI installer write fixed paths under them (/etc/cni/net.d,
// /opt/cni/bin, /var/lib/kubelet, /var/lib/cni, /var/log/pods, ...), which
// several nodes on one machine must not share and the host must not get.
var overlaidDirs = []string{"/etc", "/opt", "/var/lib", "/var/log"}

// Config describes one node.
type Config struct {
	// Name is the node's name (the kubelet's --hostname-override).
	Name string
	// NetNS is the path of the network namespace the node runs in.
	NetNS string
	// Dir is the node's own directory: overlays, containerd's root, logs.
	// It is created if missing.
	Dir string
	// NodeIPs are the kubelet's --node-ip (one per family).
	NodeIPs []netip.Addr
	// Kubeconfig is the kubelet's client configuration (a user in group
	// system:nodes named system:node:<Name>).
	Kubeconfig string
	// Kubelet is the kubelet binary; RuntimeDir holds containerd, its
	// shim, ctr and runc (EnsureRuntime).
	Kubelet, RuntimeDir string
	// SandboxImage is the pause image containerd runs for every pod; it
	// must be one of Images, since the node reaches no registry.
	SandboxImage string
	// Images are image tarballs (docker or OCI) imported into containerd
	// before the kubelet starts.
	Images []string
	// CgroupRoot is the node's own cgroup (for example /coil-mtest.x.node1),
	// created in every cgroup v1 hierarchy and removed by Stop, under which
	// the kubelet puts all its pods.
	CgroupRoot string
	// RegisterTaints are the taints the kubelet registers the Node with,
	// as key=value:Effect or key:Effect.
	RegisterTaints []string
	// KubernetesService, when valid, stands in for kube-proxy for the one
	// Service pods need: connections to it (the `kubernetes` Service's
	// ClusterIP and port) are sent to APIServer, from the node and from
	// pods routed through it.
	KubernetesService, APIServer netip.AddrPort
	// MasqueradeTo, when valid, is a network that has no route back to
	// the pods (the test bed's control plane): the node masquerades what
	// its pods send there, as ip-masq-agent would.
	MasqueradeTo netip.Prefix
	// Detached nodes outlive the process that started them (the demo);
	// Cleanup with the node's State removes them.
	Detached bool
}

// State is what Cleanup needs to remove a node: it can be saved and used
// by another process.
type State struct {
	Dir        string `json:"dir"`
	CgroupRoot string `json:"cgroupRoot"`
	// MountNS is the node's mount namespace as /proc/PID/ns/mnt reads
	// ("mnt:[4026532..]").
	MountNS string `json:"mountNS"`
	PIDs    []int  `json:"pids"`
}

// Node is a running node.
type Node struct {
	cfg     Config
	mountNS string

	mu         sync.Mutex
	holder     *proc
	containerd *proc
	kubelet    *proc
	pids       []int
}

// ErrNodeFailed means a daemon of the node exited or did not come up; the
// error carries the end of its log.
var ErrNodeFailed = errors.New("node daemon failed")

// Start prepares the node's mount namespace and starts containerd (with
// the images imported) and the kubelet. On error everything started is
// removed again.
func Start(ctx context.Context, cfg Config) (n *Node, err error) {
	if cfg.Name == "" || cfg.NetNS == "" || cfg.Dir == "" || cfg.Kubelet == "" || cfg.RuntimeDir == "" || cfg.CgroupRoot == "" {
		return nil, fmt.Errorf("kubenodetest.Start: Name, NetNS, Dir, Kubelet, RuntimeDir and CgroupRoot are required")
	}
	if !strings.HasPrefix(cfg.CgroupRoot, "/") || strings.Contains(cfg.CgroupRoot, "..") {
		return nil, fmt.Errorf("cgroup root %q: want an absolute path without ..", cfg.CgroupRoot)
	}
	n = &Node{cfg: cfg}
	defer func() {
		if err != nil {
			n.Stop()
			n = nil
		}
	}()
	if err := n.writeFiles(); err != nil {
		return nil, err
	}
	if err := createCgroup(cfg.CgroupRoot); err != nil {
		return nil, err
	}
	if err := n.startHolder(ctx); err != nil {
		return nil, err
	}
	if err := n.programNetwork(ctx); err != nil {
		return nil, err
	}
	if err := n.StartContainerd(ctx); err != nil {
		return nil, err
	}
	for _, img := range cfg.Images {
		if _, err := n.Ctr(ctx, "images", "import", img); err != nil {
			return nil, fmt.Errorf("import %s into %s: %w", img, cfg.Name, err)
		}
	}
	if err := n.StartKubelet(); err != nil {
		return nil, err
	}
	return n, nil
}

// HolderPID is a process in the node's mount and network namespaces for
// as long as the node runs: /proc/PID/root shows the node's files.
func (n *Node) HolderPID() int { return n.holder.cmd.Process.Pid }

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// Dir is the node's directory.
func (n *Node) Dir() string { return n.cfg.Dir }

// State returns what Cleanup needs.
func (n *Node) State() State {
	n.mu.Lock()
	defer n.mu.Unlock()
	return State{Dir: n.cfg.Dir, CgroupRoot: n.cfg.CgroupRoot, MountNS: n.mountNS, PIDs: append([]int(nil), n.pids...)}
}

func (n *Node) writeFiles() error {
	d := n.cfg.Dir
	for _, sub := range []string{"sysctl", "containerd", "log"} {
		if err := os.MkdirAll(filepath.Join(d, sub), 0o755); err != nil {
			return fmt.Errorf("create node directory: %w", err)
		}
	}
	for _, o := range overlaidDirs {
		for _, l := range []string{"upper", "work"} {
			if err := os.MkdirAll(filepath.Join(d, "overlay", o, l), 0o755); err != nil {
				return fmt.Errorf("create overlay directory: %w", err)
			}
		}
	}
	files := map[string]string{
		"containerd.toml": n.containerdConfig(),
		"kubelet.yaml":    n.kubeletConfig(),
		"holder.sh":       holderScript,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(d, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// holderScript runs in a new mount namespace (private propagation, so
// nothing done in it reaches the host) and keeps it alive. $1 is the node
// directory, the rest the sysctl files to shadow.
const holderScript = `set -e
d=$1; shift
for dir in /etc /opt /var/lib /var/log; do
	mount -t overlay overlay -o "lowerdir=$dir,upperdir=$d/overlay$dir/upper,workdir=$d/overlay$dir/work" "$dir"
done
# containerd's state, pod network namespaces, sockets: nothing of the host's /run.
mount -t tmpfs -o mode=0755 tmpfs /run
for f in "$@"; do
	copy="$d/sysctl/$(echo "$f" | tr / _)"
	cat "/proc/sys/$f" > "$copy"
	mount --bind "$copy" "/proc/sys/$f"
done
# Shared inside the node only (the namespace was made private first):
# the kubelet's mount propagation (HostToContainer, Bidirectional) needs it.
mount --make-rshared /
touch "$d/holder.ready"
exec sleep infinity
`

func (n *Node) startHolder(ctx context.Context) error {
	ready := filepath.Join(n.cfg.Dir, "holder.ready")
	os.Remove(ready)
	args := append([]string{"--net=" + n.cfg.NetNS, "--", "unshare", "--mount", "--propagation", "private", "--",
		"sh", filepath.Join(n.cfg.Dir, "holder.sh"), n.cfg.Dir}, KubeletSysctls...)
	p, err := n.spawn("holder", nil, "nsenter", args...)
	if err != nil {
		return err
	}
	n.holder = p
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if !p.running() {
			return fmt.Errorf("%w: mount namespace of %s: %v\n%s", ErrNodeFailed, n.cfg.Name, p.err, p.logTail())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%w: mount namespace of %s not ready\n%s", ErrNodeFailed, n.cfg.Name, p.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p.cmd.Process.Pid))
	if err != nil {
		return fmt.Errorf("read mount namespace of %s: %w", n.cfg.Name, err)
	}
	host, _ := os.Readlink("/proc/self/ns/mnt")
	if link == host {
		return fmt.Errorf("%w: node %s runs in the host's mount namespace", ErrNodeFailed, n.cfg.Name)
	}
	n.mountNS = link
	return nil
}

// enter returns the nsenter arguments that run a command in the node's
// mount and network namespaces.
func (n *Node) enter() []string {
	return []string{"-t", fmt.Sprint(n.holder.cmd.Process.Pid), "--mount", "--net", "--"}
}

// Command returns a command that runs inside the node (its mount and
// network namespaces), with the runtime binaries on PATH.
func (n *Node) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append(append(n.enter(), name), args...)...)
	cmd.Env = n.env()
	return cmd
}

// Exec runs a command inside the node and returns its standard output;
// standard error goes into the error.
func (n *Node) Exec(ctx context.Context, name string, args ...string) (string, error) {
	cmd := n.Command(ctx, name, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s on %s: %w: %s", name, strings.Join(args, " "), n.cfg.Name, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Ctr runs containerd's ctr in the k8s.io namespace (the kubelet's).
func (n *Node) Ctr(ctx context.Context, args ...string) (string, error) {
	return n.Exec(ctx, filepath.Join(n.cfg.RuntimeDir, "ctr"), append([]string{"--address", containerdSocket, "--namespace", "k8s.io"}, args...)...)
}

func (n *Node) env() []string {
	return append(os.Environ(), "PATH="+n.cfg.RuntimeDir+":"+os.Getenv("PATH"))
}

const containerdSocket = "/run/containerd/containerd.sock"

func (n *Node) containerdConfig() string {
	return fmt.Sprintf(`version = 3
root = %q
state = "/run/containerd"

[grpc]
  address = %q

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = %q

[plugins.'io.containerd.cri.v1.runtime']
  # No CAP_SYS_RESOURCE here: never lower a score below the runtime's own.
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  disable_apparmor = true

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = %q

[plugins.'io.containerd.nri.v1.nri']
  disable = true
`, filepath.Join(n.cfg.Dir, "containerd"), containerdSocket, n.cfg.SandboxImage, filepath.Join(n.cfg.RuntimeDir, "runc"))
}

func (n *Node) kubeletConfig() string {
	var taints strings.Builder
	for _, t := range n.cfg.RegisterTaints {
		keyValue, effect, _ := strings.Cut(t, ":")
		key, value, _ := strings.Cut(keyValue, "=")
		fmt.Fprintf(&taints, "  - key: %q\n    value: %q\n    effect: %q\n", key, value, effect)
	}
	reg := "registerWithTaints: []\n"
	if taints.Len() > 0 {
		reg = "registerWithTaints:\n" + taints.String()
	}
	// cgroup v1 with the cgroupfs driver (no systemd here); no swap check;
	// the API server reaches the kubelet only from inside the test bed,
	// so anonymous access suffices; eviction and image GC thresholds low,
	// so a full shared disk does not evict the suite's pods.
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: %q
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
makeIPTablesUtilChains: false
serializeImagePulls: false
resolvConf: /etc/resolv.conf
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 4s
%s`, n.cfg.CgroupRoot, containerdSocket, reg)
}

// StartContainerd starts containerd and waits until it answers.
func (n *Node) StartContainerd(ctx context.Context) error {
	p, err := n.spawn("containerd", n.env(), "nsenter", append(n.enter(),
		filepath.Join(n.cfg.RuntimeDir, "containerd"), "--config", filepath.Join(n.cfg.Dir, "containerd.toml"))...)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.containerd = p
	n.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := n.Ctr(ctx, "version"); err == nil {
			return nil
		}
		if !p.running() {
			return fmt.Errorf("%w: containerd on %s exited: %v\n%s", ErrNodeFailed, n.cfg.Name, p.err, p.logTail())
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%w: containerd on %s does not answer\n%s", ErrNodeFailed, n.cfg.Name, p.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// KillContainerd crashes containerd (SIGKILL); its shims and containers
// keep running, as on a real node.
func (n *Node) KillContainerd() {
	n.mu.Lock()
	p := n.containerd
	n.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

// StartKubelet starts the kubelet.
func (n *Node) StartKubelet() error {
	var ips []string
	for _, a := range n.cfg.NodeIPs {
		ips = append(ips, a.String())
	}
	args := append(n.enter(), n.cfg.Kubelet,
		"--config", filepath.Join(n.cfg.Dir, "kubelet.yaml"),
		"--kubeconfig", n.cfg.Kubeconfig,
		"--hostname-override", n.cfg.Name,
		"--v", "1",
	)
	if len(ips) > 0 {
		// Without it the kubelet looks its own name up in DNS, which
		// stalls every pod start here.
		args = append(args, "--node-ip", strings.Join(ips, ","))
	}
	p, err := n.spawn("kubelet", n.env(), "nsenter", args...)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.kubelet = p
	n.mu.Unlock()
	return nil
}

// Signal sends sig to every process of the node (its daemons, shims and
// containers) but the one holding its mount namespace: SIGSTOP freezes the
// node as a power loss would, SIGCONT thaws it.
func (n *Node) Signal(sig syscall.Signal) {
	holder := n.HolderPID()
	for _, pid := range nodePIDs(n.State()) {
		if pid != holder {
			syscall.Kill(pid, sig)
		}
	}
}

// StopKubelet kills the kubelet; its pods keep running.
func (n *Node) StopKubelet() {
	n.mu.Lock()
	p := n.kubelet
	n.mu.Unlock()
	if p != nil {
		p.kill()
	}
}

// KubeletRunning reports whether the kubelet process is alive; with
// ContainerdRunning, tests use it to tell a daemon crash in a failure.
func (n *Node) KubeletRunning() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.kubelet != nil && n.kubelet.running()
}

// Logs returns the ends of the kubelet's and containerd's logs.
func (n *Node) Logs() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	var b strings.Builder
	for _, p := range []*proc{n.kubelet, n.containerd} {
		if p != nil {
			fmt.Fprintf(&b, "--- %s on %s (running %v)\n%s\n", p.name, n.cfg.Name, p.running(), p.logTail())
		}
	}
	return b.String()
}

// programNetwork installs the kube-proxy stand-in (DNAT of the
// `kubernetes` Service to the API server, for connections from the node
// and from its pods) and the masquerading towards MasqueradeTo.
func (n *Node) programNetwork(ctx context.Context) error {
	var rules strings.Builder
	if svc, api := n.cfg.KubernetesService, n.cfg.APIServer; svc.IsValid() {
		rule := fmt.Sprintf("%s daddr %s tcp dport %d dnat to %s", family(svc.Addr()), svc.Addr(), svc.Port(), api)
		fmt.Fprintf(&rules, "\tchain output { type nat hook output priority -100; %s; }\n", rule)
		fmt.Fprintf(&rules, "\tchain prerouting { type nat hook prerouting priority -100; %s; }\n", rule)
	}
	if m := n.cfg.MasqueradeTo; m.IsValid() {
		f := family(m.Addr())
		// The node's own traffic keeps its address.
		fmt.Fprintf(&rules, "\tchain postrouting { type nat hook postrouting priority 100; %s daddr %s %s saddr != %s masquerade; }\n", f, m, f, m)
	}
	if rules.Len() == 0 {
		return nil
	}
	cmd := n.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader("table inet coil-mtest-node {\n" + rules.String() + "}\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("program the network of %s: %w: %s", n.cfg.Name, err, out)
	}
	return nil
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "ip"
	}
	return "ip6"
}

// Stop kills every process of the node (kubelet, containerd, shims, the
// pods' containers), removes its cgroups and lets its mount namespace go.
// The node's directory stays; it is the caller's.
func (n *Node) Stop() {
	if n == nil {
		return
	}
	n.mu.Lock()
	procs := []*proc{n.kubelet, n.containerd}
	n.mu.Unlock()
	for _, p := range procs {
		if p != nil {
			p.kill()
		}
	}
	st := n.State()
	// The holder goes last: its namespace identifies the shims.
	Cleanup(st)
	if n.holder != nil {
		n.holder.kill()
	}
	removeCgroup(n.cfg.CgroupRoot)
}

// Leftovers lists what of the node is still on the machine after Stop:
// processes in its mount namespace or cgroups, cgroup directories, mounts
// of its directory in the host's mount table. Empty means clean.
func Leftovers(st State) []string {
	var left []string
	for _, pid := range nodePIDs(st) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		left = append(left, fmt.Sprintf("process %d (%s)", pid, strings.TrimSpace(string(comm))))
	}
	for _, d := range cgroupDirs(st.CgroupRoot) {
		if _, err := os.Stat(d); err == nil {
			left = append(left, "cgroup "+d)
		}
	}
	if mounts, err := os.ReadFile("/proc/self/mountinfo"); err == nil && st.Dir != "" {
		for _, line := range strings.Split(string(mounts), "\n") {
			if strings.Contains(line, st.Dir) {
				left = append(left, "mount "+line)
			}
		}
	}
	return left
}

// Cleanup kills every process of a node described by st, waits for them
// to go and removes its cgroups. It works from a saved State, in a process
// other than the one that started the node.
func Cleanup(st State) {
	for _, pid := range st.PIDs {
		// Each daemon leads its own process group; a PID of a saved State
		// may have been reused since, so only groups of processes still in
		// the node's mount namespace are killed.
		if link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && st.MountNS != "" && link == st.MountNS {
			syscall.Kill(-pid, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		pids := nodePIDs(st)
		if len(pids) == 0 || time.Now().After(deadline) {
			break
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	removeCgroup(st.CgroupRoot)
}

// nodePIDs returns the processes in the node's mount namespace (its
// daemons and shims) or in its cgroups (its containers, which have mount
// namespaces of their own).
func nodePIDs(st State) []int {
	seen := map[int]bool{}
	self := os.Getpid()
	if st.MountNS != "" {
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			var pid int
			if _, err := fmt.Sscan(e.Name(), &pid); err != nil || pid == self {
				continue
			}
			if link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && link == st.MountNS {
				seen[pid] = true
			}
		}
	}
	for _, d := range cgroupDirs(st.CgroupRoot) {
		filepath.WalkDir(d, func(path string, e os.DirEntry, err error) error {
			if err != nil || e.IsDir() || e.Name() != "cgroup.procs" {
				return nil
			}
			data, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(data)) {
				var pid int
				if _, err := fmt.Sscan(f, &pid); err == nil && pid != self {
					seen[pid] = true
				}
			}
			return nil
		})
	}
	pids := make([]int, 0, len(seen))
	for pid := range seen {
		pids = append(pids, pid)
	}
	return pids
}

const cgroupMount = "/sys/fs/cgroup"

// cgroupDirs returns root's directory in every cgroup hierarchy mounted
// under /sys/fs/cgroup.
func cgroupDirs(root string) []string {
	if root == "" || root == "/" {
		return nil
	}
	entries, err := os.ReadDir(cgroupMount)
	if err != nil {
		return nil
	}
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(cgroupMount, e.Name(), root))
		}
	}
	return dirs
}

// createCgroup makes root in every hierarchy; in cpuset, a new cgroup
// starts with no CPUs and memory nodes, so it inherits its parent's.
func createCgroup(root string) error {
	for _, d := range cgroupDirs(root) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create cgroup %s: %w", d, err)
		}
		if strings.HasPrefix(d, filepath.Join(cgroupMount, "cpuset")+"/") {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join(filepath.Dir(d), f))
				if err != nil {
					continue
				}
				if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
					return fmt.Errorf("set %s of %s: %w", f, d, err)
				}
			}
		}
	}
	return nil
}

// removeCgroup removes root and everything below it, deepest first, in
// every hierarchy. Cgroups still holding processes stay (Leftovers tells).
func removeCgroup(root string) {
	for _, d := range cgroupDirs(root) {
		var dirs []string
		filepath.WalkDir(d, func(path string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			for attempt := 0; attempt < 50; attempt++ {
				err := syscall.Rmdir(dirs[i])
				if err == nil || errors.Is(err, syscall.ENOENT) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}
