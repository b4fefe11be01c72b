package kubeapitest

import (
	"context"
	"fmt"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestVersion(t *testing.T) {
	tests := []struct {
		name, gomod, want string
		wantErr           bool
	}{
		{name: "single line", gomod: "module x\n\nrequire k8s.io/kubernetes v1.37.2\n", want: "v1.37.2"},
		{name: "block", gomod: "module x\n\nrequire (\n\tfoo v1.0.0\n\tk8s.io/kubernetes v1.36.0 // pinned\n)\n", want: "v1.36.0"},
		{name: "replace is not a require", gomod: "module x\n\nreplace k8s.io/api => k8s.io/api v0.37.2\n", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(tc.gomod), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := Version(dir)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("Version = %q, %v; want %q (error %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
	// The real module must pin a version, or Ensure cannot name the binary.
	src, err := SourceDir()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Version(src); err != nil {
		t.Error(err)
	}
}

// TestServer starts a real kube-apiserver and checks what tests rely on:
// the admin config works and verifies the serving certificate, RBAC
// restricts other users, the kubeconfig file loads, and Stop ends the
// process.
func TestServer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs kube-apiserver; skipped in -short mode")
	}
	etcd, err := etcdtest.Start(etcdtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	s := StartForTest(t, etcd.Endpoint, Options{Users: []User{{Name: "nobody"}}})
	ctx := context.Background()

	admin, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "smoke"}}
	if _, err := admin.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("admin cannot create a namespace: %v", err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "smoke"},
		Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "pause"}}},
	}
	if _, err := admin.CoreV1().Pods("smoke").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("admin cannot create a pod without service accounts: %v", err)
	}

	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := s.WriteKubeconfig(kubeconfig, "nobody"); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	nobody, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = nobody.CoreV1().Pods("smoke").List(ctx, metav1.ListOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("unprivileged user listing pods: got %v, want Forbidden (authenticated, not authorised)", err)
	}

	pid := s.proc.cmd.Process.Pid
	s.Stop()
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("kube-apiserver (pid %d) still running after Stop", pid)
	}
	s.Stop() // a second Stop is harmless
}

// TestServerInNetNS runs the server inside a network namespace of its own,
// reached only through a dialer that enters it, as mtest's clusters do.
func TestServerInNetNS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs kube-apiserver; skipped in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	name := fmt.Sprintf("coil-apitest-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("set lo up: %v: %s", err, out)
	}
	path := "/var/run/netns/" + name
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		return netnstest.DialIn(ctx, path, network, addr)
	}

	// The namespace cannot reach the host's loopback, so etcd must listen
	// inside it too: sockets belong to the namespace of the thread that
	// created them, and the embedded etcd creates its listeners during
	// Start.
	target, err := ns.GetNS(path)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	var etcd *etcdtest.Server
	if err := target.Do(func(ns.NetNS) error {
		var err error
		etcd, err = etcdtest.Start(etcdtest.Options{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)

	s := StartForTest(t, etcd.Endpoint, Options{NetNS: path, BindAddress: "127.0.0.1", Dial: dial})
	admin, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Namespaces().Get(context.Background(), "default", metav1.GetOptions{}); err != nil {
		t.Fatalf("reach the server through the namespace: %v", err)
	}
	if s.PID() <= 0 {
		t.Error("no PID")
	}
	// The same address from the host must not reach it: it really is inside.
	if conn, err := net.DialTimeout("tcp", s.URL[len("https://"):], time.Second); err == nil {
		conn.Close()
		t.Error("server reachable from the host namespace")
	}
}
