package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/coil-project/coil/coild/api"
	kubeapi "github.com/coil-project/coil/internal/testenv/kubeapi"
	"github.com/coil-project/coil/model"
)

// realPhase is one run of sequential ADDs and DELs through the coild
// binary talking to a real kube-apiserver.
type realPhase struct {
	name     string
	add, del phaseResult
	// ptpAdd and ptpDel are ptp+host-local's commands that took turns
	// with this phase's: its reference.
	ptpAdd, ptpDel phaseResult
	// cpu is what coild, kube-apiserver and etcd spent per coil pod (ADD
	// and DEL) during the phase, beyond their idle pace: the work a
	// case puts on the node's cores besides the commands' own.
	cpu serverCPU
}

// serverCPU is CPU time of the long-running processes behind coil's
// commands in part 2b.
type serverCPU struct {
	coild, apiserver, etcd time.Duration
}

func (c serverCPU) sub(o serverCPU) serverCPU {
	return serverCPU{coild: c.coild - o.coild, apiserver: c.apiserver - o.apiserver, etcd: c.etcd - o.etcd}
}

// scaled returns c times f, each term at least 0.
func (c serverCPU) scaled(f float64) serverCPU {
	s := func(d time.Duration) time.Duration { return max(0, time.Duration(float64(d)*f)) }
	return serverCPU{coild: s(c.coild), apiserver: s(c.apiserver), etcd: s(c.etcd)}
}

func (c serverCPU) String() string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }
	return ms(c.coild) + " / " + ms(c.apiserver) + " / " + ms(c.etcd) + " ms"
}

const (
	realNet    = "coil-real"
	realNode   = "bench-real"
	realPrefix = "/coil-real/"
	realPool   = "10.66.0.0/16"
)

// runRealCoild measures ADD and DEL with the coild binary, run as a
// process in the node namespace, and a real kube-apiserver, both on the
// CNI benchmark's etcd: for pods the API server already holds (coild's
// informer has them), for pods it does not hold (a static pod before its
// mirror exists, a lagging watch), and for such pods while an egress
// exists (coild must then ask the API server for the pod).
func runRealCoild(ctx context.Context, root, tmp, binDir, confDir, etcdEndpoint string, etcdPID int, cli *clientv3.Client, node ns.NetNS, pods, ptpPods []*benchPod, cl *cleanups, cr *cniResults) error {
	logf("  real coild and kube-apiserver: %d pods, sequential", len(pods))
	bin, err := kubeapi.Ensure(ctx)
	if err != nil {
		return fmt.Errorf("kube-apiserver binary: %w", err)
	}
	dir := filepath.Join(tmp, "kube-apiserver")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	apiserver, err := kubeapi.Start(ctx, kubeapi.Options{EtcdEndpoint: etcdEndpoint, Dir: dir, Binary: bin})
	if err != nil {
		return err
	}
	cl.add("stop kube-apiserver", func() error { apiserver.Stop(); return nil })
	kube, err := kubernetes.NewForConfig(apiserver.Config)
	if err != nil {
		return err
	}
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNS}}, metav1.CreateOptions{}); err != nil {
		return err
	}

	// coild reaches etcd and the API server on the node's loopback,
	// forwarded to the bench's.
	etcdHost, err := hostPort(etcdEndpoint)
	if err != nil {
		return err
	}
	etcdFwd, err := forwardInto(node, etcdHost, cl)
	if err != nil {
		return err
	}
	apiHost, err := hostPort(apiserver.URL)
	if err != nil {
		return err
	}
	apiFwd, err := forwardInto(node, apiHost, cl)
	if err != nil {
		return err
	}
	kcfg := *apiserver.Config
	kcfg.Host = "https://" + apiFwd
	kubeconfig := filepath.Join(tmp, "coild-real.kubeconfig")
	if err := kubeapi.WriteKubeconfig(kubeconfig, &kcfg); err != nil {
		return err
	}

	st := model.New(cli, realPrefix)
	if _, err := initPool(ctx, st, realPool, 5); err != nil {
		return err
	}

	logf("  building coild")
	coildBin := filepath.Join(binDir, "coild")
	if err := buildCommand(ctx, root, "./coild", coildBin); err != nil {
		return err
	}
	sock := filepath.Join(tmp, "coild-real.sock")
	logPath := filepath.Join(tmp, "coild-real.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(coildBin,
		"--node-name", realNode,
		"--node-address", netip.MustParsePrefix(nodeAddr).Addr().String(),
		"--etcd-endpoints", "http://"+etcdFwd,
		"--etcd-prefix", realPrefix,
		"--kubeconfig", kubeconfig,
		"--socket", sock,
		"--http", "",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Started from a thread inside the node namespace, the process runs
	// in it.
	if err := node.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		return fmt.Errorf("start coild: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	cl.add("stop coild process", func() error {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		return nil
	})
	client, err := api.NewClient("unix://"+sock, api.WithTimeout(5*time.Second))
	if err != nil {
		return err
	}
	if err := waitReady(ctx, client, exited, logPath); err != nil {
		return err
	}
	conf := map[string]any{
		"cniVersion": "1.1.0", "name": realNet,
		"plugins": []any{map[string]any{"type": "coil", "coild": "unix://" + sock,
			"capabilities": map[string]bool{api.PodAnnotationsCapability: true}}},
	}
	b, _ := json.MarshalIndent(conf, "", "  ")
	if err := os.WriteFile(filepath.Join(confDir, realNet+".conflist"), b, 0o644); err != nil {
		return err
	}
	r := &cniRunner{binDir: binDir, confDir: confDir, node: node}

	createPods := func() error {
		for _, p := range pods {
			pod := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: p.name},
				Spec:       corev1.PodSpec{NodeName: realNode, Containers: []corev1.Container{{Name: "c", Image: "bench.invalid/pause"}}},
			}
			if _, err := kube.CoreV1().Pods(benchNS).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
		// Let coild's informer catch up: this case is the pods it holds.
		return waitInformer(ctx, client, 3*time.Second)
	}
	deletePods := func() error {
		return kube.CoreV1().Pods(benchNS).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}, metav1.ListOptions{})
	}
	coildPID, apiPID := cmd.Process.Pid, apiserver.PID()
	serversCPU := func() serverCPU {
		return serverCPU{coild: cpuTime(coildPID), apiserver: cpuTime(apiPID), etcd: cpuTime(etcdPID)}
	}
	// What the three use with no command running (kube-apiserver's own
	// loops, leases, etcd's heartbeats), per second, to take off each
	// phase's figure.
	var idlePace serverCPU
	measureIdle := func() error {
		const idle = 2 * time.Second
		c0 := serversCPU()
		select {
		case <-time.After(idle):
		case <-ctx.Done():
			return ctx.Err()
		}
		idlePace = serversCPU().sub(c0).scaled(float64(time.Second) / float64(idle))
		return nil
	}
	phase := func(name string) error {
		// ptp+host-local's commands take turns with coil's: the
		// reference of each case is measured at the same moments.
		c0, t0 := serversCPU(), time.Now()
		coil, ptp, err := r.interleave(ctx, realNet, client, node, 0, pods, ptpPods)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		used := serversCPU().sub(c0).sub(idlePace.scaled(time.Since(t0).Seconds()))
		perPod := used.scaled(1 / float64(len(pods)))
		cr.real = append(cr.real, realPhase{name: name, add: coil[0], del: coil[1], ptpAdd: ptp[0], ptpDel: ptp[1], cpu: perPod})
		logf("  real coild, %s: ADD p50 %s p99 %s; DEL p50 %s p99 %s (ptp+host-local, interleaved: ADD p50 %s, DEL p50 %s); CPU per pod coild / kube-apiserver / etcd %s", name,
			fmtDur(coil[0].p50), fmtDur(coil[0].p99), fmtDur(coil[1].p50), fmtDur(coil[1].p99), fmtDur(ptp[0].p50), fmtDur(ptp[1].p50), perPod)
		return nil
	}
	// Warm up the binaries and coild's first block.
	if err := r.run(ctx, "add", realNet, pods[0]); err != nil {
		return err
	}
	if err := r.run(ctx, "del", realNet, pods[0]); err != nil {
		return err
	}
	if err := waitVethsGone(ctx, node); err != nil {
		return err
	}
	if err := createPods(); err != nil {
		return err
	}
	if err := measureIdle(); err != nil {
		return err
	}
	if err := phase("pod in the API (informer holds it)"); err != nil {
		return err
	}
	if err := deletePods(); err != nil {
		return err
	}
	if err := waitInformer(ctx, client, 3*time.Second); err != nil {
		return err
	}
	if err := phase("pod not in the API yet, no egress"); err != nil {
		return err
	}
	if _, err := st.CreateEgress(ctx, model.Egress{Namespace: "internet", Name: "nat", Destinations: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}); err != nil {
		return err
	}
	// coild learns of the egress through its watch of etcd.
	if err := waitInformer(ctx, client, 3*time.Second); err != nil {
		return err
	}
	if err := phase("pod not in the API yet, an egress exists, runtime passes no annotations"); err != nil {
		return err
	}
	// What containerd passes for a static pod (the plugin declares the
	// capability): its annotations, none of them egress ones.
	capArgs, err := json.Marshal(map[string]any{api.PodAnnotationsCapability: map[string]string{
		"kubernetes.io/config.source": "file",
		"kubernetes.io/config.seen":   "2026-12-01T00:00:00.000000000Z",
		"kubernetes.io/config.hash":   "0123456789abcdef0123456789abcdef",
	}})
	if err != nil {
		return err
	}
	r.capArgs = string(capArgs)
	defer func() { r.capArgs = "" }()
	return phase("pod not in the API yet, an egress exists, runtime passes annotations (containerd)")
}

// waitInformer gives coild's watches time to deliver, checking it stays up.
func waitInformer(ctx context.Context, client *api.Client, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
	}
	return client.Ready(ctx)
}

func hostPort(u string) (string, error) {
	for _, p := range []string{"https://", "http://"} {
		if len(u) > len(p) && u[:len(p)] == p {
			return u[len(p):], nil
		}
	}
	return "", fmt.Errorf("not an http(s) URL: %s", u)
}

// forwardInto listens on 127.0.0.1 inside node and forwards every
// connection to target, dialled from the bench's own namespace. It
// returns the listening address; the cleanup stack stops it.
func forwardInto(node ns.NetNS, target string, cl *cleanups) (string, error) {
	var ln net.Listener
	err := node.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		return "", err
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	track := func(c net.Conn, on bool) {
		mu.Lock()
		defer mu.Unlock()
		if on {
			conns[c] = true
		} else {
			delete(conns, c)
		}
	}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				track(c, true)
				track(up, true)
				defer track(c, false)
				defer track(up, false)
				done := make(chan struct{}, 2)
				go func() { io.Copy(up, c); done <- struct{}{} }()
				go func() { io.Copy(c, up); done <- struct{}{} }()
				<-done
			})
		}
	})
	cl.add("stop forwarder to "+target, func() error {
		err := ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		return err
	})
	return ln.Addr().String(), nil
}
