package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/coil-controller/controller"
	"github.com/coil-project/coil/internal/testenv"
	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	kubeapitest "github.com/coil-project/coil/internal/testenv/kubeapi"
	"github.com/coil-project/coil/model"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(*controller.Config) bool
		wantErr bool
	}{
		{
			name: "defaults",
			check: func(c *controller.Config) bool {
				return c.LeaderElect && c.LeaderNamespace == "kube-system" && c.ScanInterval == 5*time.Minute &&
					c.LeakGrace == 10*time.Minute && c.Reclaim && c.MaxReclaimRatio == 0.5 && c.Kubeconfig == "" &&
					c.Etcd.Prefix == "/coil/"
			},
		},
		{
			name: "flags",
			args: []string{"--reclaim=false", "--scan-interval=30s", "--leak-grace=1m", "--max-reclaim-ratio=0.2",
				"--leader-elect=false", "--etcd-endpoints=http://10.0.0.1:2379,http://10.0.0.2:2379"},
			check: func(c *controller.Config) bool {
				return !c.Reclaim && c.ScanInterval == 30*time.Second && c.LeakGrace == time.Minute &&
					c.MaxReclaimRatio == 0.2 && !c.LeaderElect && len(c.Etcd.Endpoints) == 2
			},
		},
		{
			name: "environment fills what flags leave",
			args: []string{"--leak-grace=1m"},
			env:  map[string]string{"COIL_CONTROLLER_ETCD_PREFIX": "/other/", "COIL_CONTROLLER_LEAK_GRACE": "1h", "COIL_CONTROLLER_RECLAIM": "false"},
			check: func(c *controller.Config) bool {
				return c.Etcd.Prefix == "/other/" && c.LeakGrace == time.Minute && !c.Reclaim
			},
		},
		{name: "ratio above one", args: []string{"--max-reclaim-ratio=1.5"}, wantErr: true},
		{name: "zero ratio", args: []string{"--max-reclaim-ratio=0"}, wantErr: true},
		{name: "zero interval", args: []string{"--scan-interval=0s"}, wantErr: true},
		{name: "bad prefix", args: []string{"--etcd-prefix=coil"}, wantErr: true},
		{name: "bad environment", env: map[string]string{"COIL_CONTROLLER_SCAN_INTERVAL": "soon"}, wantErr: true},
		{name: "stray argument", args: []string{"run"}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := controller.ParseFlags(tc.args)
			if (err != nil) != tc.wantErr {
				t.Fatalf("controller.ParseFlags(%v) error = %v, want error %v", tc.args, err, tc.wantErr)
			}
			if err == nil && !tc.check(c) {
				t.Errorf("controller.ParseFlags(%v) = %+v", tc.args, *c)
			}
		})
	}
}

// TestRun wires the real command together against a real etcd and API
// server: kubeconfig loading, the schema check, leader election in
// kube-system, metrics serving and the clean-up of a deleted node.
func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver; skipped in -short mode")
	}
	testRun(t, etcdtest.Options{}, func(etcd *etcdtest.Server, _ kubernetes.Interface) string { return etcd.Endpoint })
}

// TestRunEtcdService runs coil-controller with --etcd-endpoints naming
// etcd's Service, resolved from its EndpointSlice in the real API server.
func TestRunEtcdService(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver; skipped in -short mode")
	}
	const host = "10.250.0.2"
	if !testenv.InOwnNetNS(t, host+"/32") {
		return
	}
	testRun(t, etcdtest.Options{Host: host}, func(etcd *etcdtest.Server, admin kubernetes.Interface) string {
		u, err := url.Parse(etcd.Endpoint)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(u.Port())
		slice := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "etcd-x1", Namespace: "kube-system", Labels: map[string]string{discoveryv1.LabelServiceName: "etcd"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{host}}},
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("client"), Port: ptr.To(int32(port))}},
		}
		if _, err := admin.DiscoveryV1().EndpointSlices("kube-system").Create(context.Background(), slice, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		return "@kube-system/etcd"
	})
}

// testRun runs coil-controller (Run) against a real etcd and API server,
// with --etcd-endpoints as endpoints says, and checks that it releases a
// missing node's block, serves metrics and leads.
func testRun(t *testing.T, etcdOpts etcdtest.Options, endpoints func(*etcdtest.Server, kubernetes.Interface) string) {
	etcd, err := etcdtest.Start(etcdOpts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	api := kubeapitest.StartForTest(t, etcd.Endpoint, kubeapitest.Options{})
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := api.WriteKubeconfig(kubeconfig, kubeapitest.AdminUser); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	admin, err := kubernetes.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	prefix := "/coil-run/"
	st := model.New(etcd.Client(t), prefix)
	if err := st.Init(ctx); err != nil {
		t.Fatal(err)
	}
	pool := model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{{IPv4: netip.MustParsePrefix("10.1.0.0/24")}}}
	if err := st.CreatePool(ctx, pool); err != nil {
		t.Fatal(err)
	}
	_, goneAddr, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "gone", Namespace: "ns", Pod: "p"})
	if err != nil {
		t.Fatal(err)
	}
	// n1 owns a block too: with "gone" the only node etcd knew, every
	// node known to etcd would be missing and --max-node-release-ratio
	// would refuse the release.
	if _, _, err := st.AcquireBlock(ctx, "default", model.Owner{Node: "n1", Namespace: "ns", Pod: "q"}); err != nil {
		t.Fatal(err)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := l.Addr().String()
	l.Close()
	cfg, err := controller.ParseFlags([]string{"--etcd-endpoints=" + endpoints(etcd, admin), "--etcd-prefix=" + prefix,
		"--kubeconfig=" + kubeconfig, "--metrics-addr=" + metricsAddr})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() { done <- controller.Run(runCtx, *cfg) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})

	testenv.Eventually(t, 15*time.Second, "release of the missing node's block", func() error {
		bs, err := st.NodeBlocks(ctx, "gone")
		if err == nil && len(bs) > 0 {
			err = fmt.Errorf("node gone still owns %d blocks", len(bs))
		}
		return err
	})
	// The reclaim is signed: address history names the controller.
	h, err := st.AddressHistory(ctx, goneAddr.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(h.Events); n == 0 || h.Events[n-1].Kind != model.EventReclaimed || h.Events[n-1].By == nil ||
		h.Events[n-1].By.Component != "coil-controller" || h.Events[n-1].Block == "" {
		t.Errorf("history of the gone node's address: %+v", h.Events)
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"coil_controller_leader 1", "coil_controller_reclaimed_blocks_total 1", "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	lease, err := admin.CoordinationV1().Leases("kube-system").Get(ctx, "coil-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("leader lease: %v", err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
		t.Error("leader lease has no holder")
	}
}
