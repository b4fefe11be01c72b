package main

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/coild/daemon"
	"github.com/coil-project/coil/internal/image"
	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/model/etcdconfig"
	"github.com/coil-project/coil/nodenet"
)

// cniResults is part 2: CNI ADD and DEL of coil against ptp + host-local.
type cniResults struct {
	pods     int
	parallel []int
	// By plugin ("coil", "ptp"), then by index into parallel.
	add, del map[string][]phaseResult
	// traces are per-process timelines of single ADDs and DELs (-cni-trace).
	traces []string
	// real are the runs with the coild binary and a real kube-apiserver.
	real []realPhase
	// routes are coil's sequential runs without and with clusterRoutes
	// routes in the node's main table (-cni-cluster-routes).
	clusterRoutes int
	routes        []routesPhase
}

// routesPhase is coil's sequential ADD and DEL with routes cluster routes
// in the node's main table.
type routesPhase struct {
	routes   int
	add, del phaseResult
}

const (
	coilNet = "coil-bench"
	ptpNet  = "ptp-bench"
	// netnsPrefix names every namespace this program creates; the PID
	// follows, so a later run can remove what a killed run left.
	netnsPrefix = "coilbench-"
	netnsDir    = "/run/netns"
	// Node addresses inside the node namespace (never routed anywhere).
	nodeAddr  = "10.250.0.2/24"
	nodeGW    = "10.250.0.1"
	coilPool  = "10.64.0.0/16"
	ptpSubnet = "10.128.0.0/16"
)

func runCNIBench(ctx context.Context, o *options, root, tmp string, cl *cleanups, res *results) error {
	logf("part 2: CNI ADD/DEL of %d pods through cnitool, coil against ptp+host-local, sequential and %d concurrent", o.pods, o.cniPar)
	for _, tool := range []string{"cnitool", "ptp", "host-local"} {
		if _, err := os.Stat(filepath.Join(o.cniBin, tool)); err != nil {
			return fmt.Errorf("reference CNI tool %s missing in %s: run `make deps` or set CNI_BIN_DIR", tool, o.cniBin)
		}
	}
	binDir := filepath.Join(tmp, "cni-bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return err
	}
	logf("  building the coil plugin as the image does (static)")
	if err := buildCommand(ctx, root, "./coil", filepath.Join(binDir, "coil")); err != nil {
		return err
	}
	for _, tool := range []string{"cnitool", "ptp", "host-local"} {
		if err := os.Symlink(filepath.Join(o.cniBin, tool), filepath.Join(binDir, tool)); err != nil {
			return err
		}
	}

	etcd, err := startEtcd(ctx, o.etcdBin, tmp, "cni", cl)
	if err != nil {
		return err
	}
	defer etcd.Stop()
	cli, err := etcd.Client()
	if err != nil {
		return err
	}
	defer cli.Close()
	st := model.New(cli, etcdconfig.DefaultPrefix)
	if _, err := initPool(ctx, st, coilPool, o.blockBits); err != nil {
		return err
	}

	// The node: a namespace with an uplink and a default route, as a real
	// node has (coil reads the uplink MTU on every ADD).
	pid := strconv.Itoa(os.Getpid())
	nodeNS, err := newNetns(ctx, netnsPrefix+pid+"-node", cl)
	if err != nil {
		return err
	}
	if err := nodeNS.Do(func(ns.NetNS) error { return setupNode() }); err != nil {
		return fmt.Errorf("set up node namespace: %w", err)
	}

	// coild in-process for the node, with a fake API server holding the
	// pods' namespace.
	sock := filepath.Join(tmp, "coild.sock")
	kube := fake.NewClientset()
	for _, name := range []string{"default", "kube-system", benchNS} {
		// coild stamps etcd with kube-system's UID; the fake assigns none.
		o := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("bench-" + name)}}
		if _, err := kube.CoreV1().Namespaces().Create(ctx, o, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	logPath := filepath.Join(tmp, "coild.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	dctx, stopCoild := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- daemon.Run(dctx, daemon.Config{
			NodeName:      "bench-node",
			NodeAddresses: []netip.Addr{netip.MustParsePrefix(nodeAddr).Addr()},
			Etcd: etcdconfig.Config{
				Endpoints: []string{etcd.Endpoint},
				Prefix:    etcdconfig.DefaultPrefix,
				Timeout:   5 * time.Second,
			},
			SocketPath:        sock,
			TableID:           119,
			ProtocolID:        30,
			ScanInterval:      time.Minute,
			BlockReleaseGrace: time.Hour,
			LivenessTTL:       daemon.DefaultLivenessTTL,
			KubeClient:        kube,
			HostNS:            nodeNS,
			Logger:            slog.New(slog.NewTextHandler(logFile, nil)),
		})
	}()
	cl.add("stop coild", func() error {
		stopCoild()
		select {
		case err := <-done:
			return err
		case <-time.After(30 * time.Second):
			return errors.New("coild did not stop within 30s")
		}
	})
	client, err := api.NewClient("unix://"+sock, api.WithTimeout(5*time.Second))
	if err != nil {
		return err
	}
	if err := waitReady(ctx, client, done, logPath); err != nil {
		return err
	}

	// Network configurations as kubelet would find them.
	confDir := filepath.Join(tmp, "net.d")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return err
	}
	confs := map[string]any{
		coilNet: map[string]any{
			"cniVersion": "1.1.0", "name": coilNet,
			"plugins": []any{map[string]any{"type": "coil", "coild": "unix://" + sock}},
		},
		ptpNet: map[string]any{
			"cniVersion": "1.1.0", "name": ptpNet,
			"plugins": []any{map[string]any{
				"type": "ptp", "ipMasq": false,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": ptpSubnet}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": filepath.Join(tmp, "host-local"),
				},
			}},
		},
	}
	for name, conf := range confs {
		b, _ := json.MarshalIndent(conf, "", "  ")
		if err := os.WriteFile(filepath.Join(confDir, name+".conflist"), b, 0o644); err != nil {
			return err
		}
	}
	// cnitool keeps results in libcni's default cache; remove what an
	// interrupted run leaves there for these two networks.
	cl.add("remove cached CNI results", func() error {
		var errs []error
		for _, net := range []string{coilNet, ptpNet, realNet} {
			files, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", net+"-*"))
			for _, f := range files {
				errs = append(errs, os.Remove(f))
			}
		}
		return errors.Join(errs...)
	})

	// Pods: o.pods for coil (and for ptp in the concurrent runs), o.pods
	// more for ptp in the sequential run, which interleaves the two, and
	// one that warms up.
	logf("  creating %d pod namespaces", 2*o.pods+1)
	pods := make([]*benchPod, 2*o.pods+1)
	var mu sync.Mutex
	_, err = countedPhase(ctx, 4, func(w int) int { return (len(pods) - w + 3) / 4 }, func(w, i int) error {
		idx := w + 4*i
		n, err := newNetns(ctx, fmt.Sprintf("%s%s-p%d", netnsPrefix, pid, idx), nil)
		if err != nil {
			return err
		}
		mu.Lock()
		pods[idx] = &benchPod{name: fmt.Sprintf("pod-%d", idx), ns: n}
		mu.Unlock()
		return nil
	})
	for _, p := range pods {
		if p != nil {
			cl.add("delete netns "+p.ns.Path(), func() error { return deleteNetns(p.ns) })
		}
	}
	if err != nil {
		return fmt.Errorf("create pod namespaces: %w", err)
	}

	r := &cniRunner{binDir: binDir, confDir: confDir, node: nodeNS}
	warm := pods[len(pods)-1]
	ptpSeqPods := pods[o.pods : 2*o.pods]
	pods = pods[:o.pods]
	for _, net := range []string{coilNet, ptpNet} {
		if err := r.run(ctx, "add", net, warm); err != nil {
			return err
		}
		if err := r.run(ctx, "del", net, warm); err != nil {
			return err
		}
		// coild deletes the veth after DEL answered; the next plugin
		// uses the same namespace.
		if err := waitVethsGone(ctx, nodeNS); err != nil {
			return err
		}
	}

	cr := &cniResults{pods: o.pods, parallel: []int{1, o.cniPar}, add: map[string][]phaseResult{}, del: map[string][]phaseResult{}}
	res.cni = cr
	for mode, par := range cr.parallel {
		if par == 1 {
			if err := r.sequentialInterleaved(ctx, client, nodeNS, etcd.PID(), pods, ptpSeqPods, cr); err != nil {
				return err
			}
			continue
		}
		// Alternate which plugin goes first, so neither always runs on
		// the machine the other has just warmed (or loaded).
		order := []string{coilNet, ptpNet}
		if mode%2 == 1 {
			order = []string{ptpNet, coilNet}
		}
		for _, net := range order {
			cpu0 := readCNICPU(etcd.PID())
			add, err := countedPhase(ctx, par, func(w int) int { return (len(pods) - w + par - 1) / par }, func(w, i int) error {
				return r.run(ctx, "add", net, pods[w+par*i])
			})
			if err != nil {
				return fmt.Errorf("%s ADD, %d concurrent: %w", net, par, err)
			}
			add.cpu = readCNICPU(etcd.PID()).since(cpu0)
			if net == coilNet {
				if err := expectPods(ctx, client, len(pods)); err != nil {
					return err
				}
			}
			cpu0 = readCNICPU(etcd.PID())
			del, err := countedPhase(ctx, par, func(w int) int { return (len(pods) - w + par - 1) / par }, func(w, i int) error {
				return r.run(ctx, "del", net, pods[w+par*i])
			})
			if err != nil {
				return fmt.Errorf("%s DEL, %d concurrent: %w", net, par, err)
			}
			if net == coilNet {
				// coild deletes the veths after DEL answered; the pod
				// namespaces are used again by the next phase. The
				// deletions are part of DEL's CPU, as ptp's are of its.
				if err := waitVethsGone(ctx, nodeNS); err != nil {
					return err
				}
			}
			del.cpu = readCNICPU(etcd.PID()).since(cpu0)
			if net == coilNet {
				if err := expectPods(ctx, client, 0); err != nil {
					return err
				}
			}
			key := pluginKey(net)
			cr.add[key] = append(cr.add[key], add)
			cr.del[key] = append(cr.del[key], del)
			logf("  %-14s %d concurrent: ADD p50 %s p99 %s (%s); DEL p50 %s p99 %s (%s)", key, par,
				fmtDur(add.p50), fmtDur(add.p99), fmtRate(add.rate()), fmtDur(del.p50), fmtDur(del.p99), fmtRate(del.rate()))
		}
	}
	if o.cniRoutes > 0 {
		if err := runWithClusterRoutes(ctx, r, nodeNS, pods, o.cniRoutes, cr); err != nil {
			return fmt.Errorf("cluster routes: %w", err)
		}
	}
	if o.realCoild {
		if err := runRealCoild(ctx, root, tmp, binDir, confDir, etcd.Endpoint, etcd.PID(), cli, nodeNS, pods, ptpSeqPods, cl, cr); err != nil {
			return fmt.Errorf("real coild: %w", err)
		}
	}
	if _, err := exec.LookPath("strace"); o.cniTrace && err != nil {
		logf("  strace is not installed: no process timelines of single commands")
	} else if o.cniTrace {
		// Where one ADD and one DEL spend their time, per process.
		for _, net := range []string{coilNet, ptpNet} {
			for range 2 {
				for _, cmd := range []string{"add", "del"} {
					tl, err := r.trace(ctx, tmp, cmd, net, warm)
					if err != nil {
						return err
					}
					cr.traces = append(cr.traces, fmt.Sprintf("%s %s: %s", pluginKey(net), strings.ToUpper(cmd), tl))
				}
			}
		}
	}
	return nil
}

// sequentialInterleaved is the sequential run: every pod ADDed one at a
// time, then DELeted one at a time, coil's pods (a) and ptp's (b) taking
// turns command by command (see interleave).
func (r *cniRunner) sequentialInterleaved(ctx context.Context, client *api.Client, node ns.NetNS, etcdPID int, a, b []*benchPod, cr *cniResults) error {
	coil, ptp, err := r.interleave(ctx, coilNet, client, node, etcdPID, a, b)
	if err != nil {
		return err
	}
	for _, side := range []struct {
		key string
		res [2]phaseResult
	}{{"coil", coil}, {"ptp", ptp}} {
		cr.add[side.key] = append(cr.add[side.key], side.res[0])
		cr.del[side.key] = append(cr.del[side.key], side.res[1])
		logf("  %-14s 1 concurrent, interleaved: ADD p50 %s p99 %s (%s); DEL p50 %s p99 %s (%s)", side.key,
			fmtDur(side.res[0].p50), fmtDur(side.res[0].p99), fmtRate(side.res[0].rate()),
			fmtDur(side.res[1].p50), fmtDur(side.res[1].p99), fmtRate(side.res[1].rate()))
	}
	return nil
}

// interleave ADDs every pod one at a time, then DELetes them one at a
// time, for the coil network coilNetwork on pods a and for ptp on pods b,
// the two taking turns command by command (which goes first alternates),
// so that both plugins see the same moments of the machine: the ratio
// does not depend on what the machine did in one plugin's seconds and not
// in the other's. It returns the ADD and the DEL phase of each. CPU per
// command: each cnitool run's own (with its plugins); for coil, all of
// this process's and etcd's during the run too (coild serving coil, and
// the little it takes to start ptp's commands). client is the coild that
// holds coil's pods, checked after each phase.
func (r *cniRunner) interleave(ctx context.Context, coilNetwork string, client *api.Client, node ns.NetNS, etcdPID int, a, b []*benchPod) (coil, ptp [2]phaseResult, err error) {
	for k, cmd := range []string{"add", "del"} {
		var lat [2]latencies
		var child, busy [2]time.Duration
		cpu0 := readCNICPU(etcdPID)
		for i := range a {
			for j := range 2 {
				side := (i + j) % 2 // 0: coil, 1: ptp
				net, pod := coilNetwork, a[i]
				if side == 1 {
					net, pod = ptpNet, b[i]
				}
				_, c0 := ourTimes()
				t0 := time.Now()
				if err := r.run(ctx, cmd, net, pod); err != nil {
					return coil, ptp, fmt.Errorf("%s %s, sequential: %w", net, strings.ToUpper(cmd), err)
				}
				d := time.Since(t0)
				_, c1 := ourTimes()
				lat[side] = append(lat[side], d)
				busy[side] += d
				child[side] += c1 - c0
			}
		}
		if cmd == "del" {
			// coild deletes the veths after DEL answered: part of its
			// DEL's CPU, as ptp's deletions are of ptp's.
			if err := waitVethsGone(ctx, node); err != nil {
				return coil, ptp, err
			}
		}
		rest := readCNICPU(etcdPID).since(cpu0)
		coil[k] = newPhaseResult(1, busy[0], lat[0], 0)
		coil[k].cpu = &cpuMeter{childCPU: child[0], selfCPU: rest.selfCPU, etcdCPU: rest.etcdCPU}
		ptp[k] = newPhaseResult(1, busy[1], lat[1], 0)
		ptp[k].cpu = &cpuMeter{childCPU: child[1]}
		want := len(a)
		if cmd == "del" {
			want = 0
		}
		if err := expectPods(ctx, client, want); err != nil {
			return coil, ptp, err
		}
	}
	return coil, ptp, nil
}

// runWithClusterRoutes runs coil's sequential ADD and DEL of the pods twice
// in a row, first as before, then with n block routes in the node's main
// table, as flat-L2 or BGP routing installs one per block of the rest of
// the cluster: a per-node cost that grew with the cluster (a listing of
// the table on every ADD or DEL) shows here.
func runWithClusterRoutes(ctx context.Context, r *cniRunner, node ns.NetNS, pods []*benchPod, n int, cr *cniResults) error {
	cr.clusterRoutes = n
	for _, routes := range []int{0, n} {
		if routes > 0 {
			logf("  adding %d cluster routes to the node's main table", routes)
			if err := node.Do(func(ns.NetNS) error { return addClusterRoutes(routes) }); err != nil {
				return err
			}
		}
		seq := func(int) int { return len(pods) }
		add, err := countedPhase(ctx, 1, seq, func(_, i int) error { return r.run(ctx, "add", coilNet, pods[i]) })
		if err != nil {
			return fmt.Errorf("ADD with %d routes: %w", routes, err)
		}
		del, err := countedPhase(ctx, 1, seq, func(_, i int) error { return r.run(ctx, "del", coilNet, pods[i]) })
		if err != nil {
			return fmt.Errorf("DEL with %d routes: %w", routes, err)
		}
		if err := waitVethsGone(ctx, node); err != nil {
			return err
		}
		cr.routes = append(cr.routes, routesPhase{routes: routes, add: add, del: del})
		logf("  coil sequential, %d cluster routes: ADD p50 %s p99 %s; DEL p50 %s p99 %s", routes,
			fmtDur(add.p50), fmtDur(add.p99), fmtDur(del.p50), fmtDur(del.p99))
	}
	// The routes go with their link.
	return node.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(clusterLink)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	})
}

// clusterLink carries the cluster routes of runWithClusterRoutes.
const clusterLink = "cluster0"

// addClusterRoutes adds n /27 routes (blocks of 32 addresses of other
// nodes) through a link of their own, in the current namespace.
func addClusterRoutes(n int) error {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: clusterLink}, PeerName: clusterLink + "p"}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add %s: %w", clusterLink, err)
	}
	l, err := netlink.LinkByName(clusterLink)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return err
	}
	base := netip.MustParseAddr("10.160.0.0").As4()
	for i := range n {
		v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(i)*32
		dst := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), 27)
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(27, 32)}, Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("add route %s: %w", dst, err)
		}
	}
	return nil
}

func pluginKey(net string) string {
	if net == coilNet {
		return "coil"
	}
	return "ptp"
}

type benchPod struct {
	name string
	ns   ns.NetNS
}

// cniRunner runs cnitool inside the node namespace, as kubelet's runtime
// would run the plugins.
type cniRunner struct {
	binDir, confDir string
	node            ns.NetNS
	// capArgs, when set, is passed as cnitool's CAP_ARGS: the
	// capability arguments a runtime passes (containerd's pod
	// annotations), given to plugins that declare them.
	capArgs string
}

func (r *cniRunner) run(ctx context.Context, cmd, net string, p *benchPod) error {
	return r.node.Do(func(ns.NetNS) error {
		c := exec.CommandContext(ctx, filepath.Join(r.binDir, "cnitool"), cmd, net, p.ns.Path())
		c.Env = append(os.Environ(),
			"CNI_PATH="+r.binDir,
			"NETCONFPATH="+r.confDir,
			"CNI_IFNAME=eth0",
			"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE="+benchNS+";K8S_POD_NAME="+p.name,
		)
		if r.capArgs != "" {
			c.Env = append(c.Env, "CAP_ARGS="+r.capArgs)
		}
		var stderr strings.Builder
		c.Stderr = &stderr
		out, err := c.Output()
		if err != nil {
			sum := sha512.Sum512([]byte(p.ns.Path()))
			return fmt.Errorf("cnitool %s %s %s (container cnitool-%x): %w: %s%s", cmd, net, p.ns.Path(), sum[:10], err, stderr.String(), out)
		}
		return nil
	})
}

// waitVethsGone waits until the node has no Coil host veth left.
func waitVethsGone(ctx context.Context, node ns.NetNS) error {
	deadline := time.Now().Add(time.Minute)
	for {
		var left int
		err := node.Do(func(ns.NetNS) error {
			links, err := netlink.LinkList()
			for _, l := range links {
				if nodenet.IsCoilVeth(l.Attrs().Name) {
					left++
				}
			}
			return err
		})
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			// Links changed during the dump (coild deleting them): ask again.
			continue
		}
		if err != nil || left == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d coil veths still on the node a minute after DEL", left)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func expectPods(ctx context.Context, client *api.Client, n int) error {
	st, err := client.Status(ctx)
	if err != nil {
		return err
	}
	if len(st.Pods) != n {
		return fmt.Errorf("coild holds %d pods, want %d", len(st.Pods), n)
	}
	return nil
}

func waitReady(ctx context.Context, client *api.Client, done chan error, logPath string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := client.Ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case runErr := <-done:
			done <- runErr
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("coild exited before it was ready: %v\n%s", runErr, log)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("coild not ready after 30s: %v\n%s", err, log)
		}
	}
}

// setupNode brings lo up and gives the node an uplink (a veth whose peer
// stays in the same namespace) with an address and a default route.
func setupNode() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return err
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return err
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500}, PeerName: "uplink0"}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("add uplink: %w", err)
	}
	for _, name := range []string{"eth0", "uplink0"} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
	}
	eth0, err := netlink.LinkByName("eth0")
	if err != nil {
		return err
	}
	addr, err := netlink.ParseAddr(nodeAddr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(eth0, addr); err != nil {
		return fmt.Errorf("address uplink: %w", err)
	}
	_, all, _ := net.ParseCIDR("0.0.0.0/0")
	return netlink.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: all, Gw: net.ParseIP(nodeGW)})
}

// newNetns creates a named network namespace with `ip netns add`. When cl
// is not nil its deletion is registered there.
func newNetns(ctx context.Context, name string, cl *cleanups) (ns.NetNS, error) {
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %v: %s", name, err, out)
	}
	n, err := ns.GetNS(filepath.Join(netnsDir, name))
	if err != nil {
		exec.Command("ip", "netns", "del", name).Run()
		return nil, err
	}
	if cl != nil {
		cl.add("delete netns "+name, func() error { return deleteNetns(n) })
	}
	return n, nil
}

func deleteNetns(n ns.NetNS) error {
	name := filepath.Base(n.Path())
	n.Close()
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %v: %s", name, err, out)
	}
	return nil
}

// sweepStaleNetns deletes the namespaces of earlier runs whose process is
// gone (killed before it could clean up).
func sweepStaleNetns() {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), netnsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == nil {
			continue // still running
		}
		logf("removing namespace %s left by an earlier run", e.Name())
		exec.Command("ip", "netns", "del", e.Name()).Run()
	}
}

// buildCommand builds a command of this module the way the image's
// binaries are built (static, no cgo): a cgo binary pays the dynamic
// loader and libc's start on every exec, ~2 ms of CPU a CNI command that
// no node pays.
func buildCommand(ctx context.Context, root, pkg, out string) error {
	c := image.Compiler{Go: goTool(), Root: root, Arch: runtime.GOARCH}
	if err := c.Command(ctx, pkg, out); err != nil {
		return fmt.Errorf("build %s: %w", pkg, err)
	}
	return nil
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}
