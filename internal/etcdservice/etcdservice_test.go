package etcdservice_test

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/etcdservice"
	"github.com/coil-project/coil/internal/testenv"
	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	kubeapitest "github.com/coil-project/coil/internal/testenv/kubeapi"
	"github.com/coil-project/coil/model/etcdconfig"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in      []string
		ref     etcdservice.Ref
		ok, err bool
	}{
		{in: []string{"http://10.0.0.1:2379", "http://10.0.0.2:2379"}},
		{in: []string{"@kube-system/etcd"}, ref: etcdservice.Ref{Namespace: "kube-system", Name: "etcd"}, ok: true},
		{in: []string{"@kube-system/etcd", "http://10.0.0.1:2379"}, err: true},
		{in: []string{"@etcd"}, err: true},
		{in: []string{"@/etcd"}, err: true},
		{in: []string{"@kube-system/"}, err: true},
		{in: []string{"@Kube/etcd"}, err: true},
		{in: []string{"@ns/etcd/x"}, err: true},
	}
	for _, tc := range tests {
		ref, ok, err := etcdservice.Parse(tc.in)
		if ref != tc.ref || ok != tc.ok || (err != nil) != tc.err {
			t.Errorf("Parse(%q) = %v, %v, %v; want %v, %v, error %v", tc.in, ref, ok, err, tc.ref, tc.ok, tc.err)
		}
	}
}

func TestURLs(t *testing.T) {
	slice := func(ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{Ports: ports, Endpoints: eps}
	}
	ep := func(ready *bool, addrs ...string) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: addrs, Conditions: discoveryv1.EndpointConditions{Ready: ready}}
	}
	one := []discoveryv1.EndpointPort{{Port: ptr.To[int32](2379)}}
	named := []discoveryv1.EndpointPort{{Name: ptr.To("peer"), Port: ptr.To[int32](2380)}, {Name: ptr.To("client"), Port: ptr.To[int32](12379)}}
	ambiguous := []discoveryv1.EndpointPort{{Name: ptr.To("a"), Port: ptr.To[int32](1)}, {Name: ptr.To("b"), Port: ptr.To[int32](2)}}
	got := etcdservice.URLs([]*discoveryv1.EndpointSlice{
		slice(one, ep(nil, "10.0.0.2"), ep(ptr.To(true), "10.0.0.1"), ep(ptr.To(false), "10.0.0.9")),
		slice(named, ep(nil, "fd00::1")),
		slice(ambiguous, ep(nil, "10.0.0.7")),
		slice(one, ep(nil, "10.0.0.1")),
	}, "https")
	want := []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://[fd00::1]:12379"}
	if !slices.Equal(got, want) {
		t.Errorf("URLs = %q, want %q", got, want)
	}
}

// TestFollowAgainstKubeAPI resolves @NAMESPACE/NAME from the EndpointSlices
// of a real kube-apiserver and follows them from one real etcd to another:
// the client's writes land in the new etcd without a new client.
func TestFollowAgainstKubeAPI(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a kube-apiserver")
	}
	if !testenv.InOwnNetNS(t, etcdHost+"/32") {
		return
	}
	ctx := context.Background()
	etcdA, err := etcdtest.Start(etcdtest.Options{Host: etcdHost})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcdA.Close)
	etcdB, err := etcdtest.Start(etcdtest.Options{Host: etcdHost})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcdB.Close)
	api := kubeapitest.StartForTest(t, etcdA.Endpoint, kubeapitest.Options{})
	kube, err := kubernetes.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	const ns, name = "etcd-system", "coil-etcd"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// What the EndpointSlice controller would write for a Service of
	// etcd's pods (none runs here): an address and the client port.
	slice := func(endpoint string, ready bool) *discoveryv1.EndpointSlice {
		u, err := url.Parse(endpoint)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(u.Port())
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: name + "-abcde", Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{u.Hostname()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}}},
			Ports: []discoveryv1.EndpointPort{
				{Name: ptr.To("peer"), Port: ptr.To[int32](2380)},
				{Name: ptr.To("client"), Port: ptr.To(int32(port))},
			},
		}
	}
	// An unrelated slice in the namespace must not count.
	other := slice("http://"+etcdHost+":1", true)
	other.Name, other.Labels = "other", map[string]string{discoveryv1.LabelServiceName: "other"}
	for _, s := range []*discoveryv1.EndpointSlice{slice(etcdA.Endpoint, true), other} {
		if _, err := kube.DiscoveryV1().EndpointSlices(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := etcdconfig.Config{Endpoints: []string{"@" + ns + "/" + name}, Prefix: "/coil/", Timeout: 5 * time.Second}
	cli, stop, err := etcdservice.Connect(cctx, cfg, kube, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	defer stop()
	if got := cli.Endpoints(); !slices.Equal(got, []string{etcdA.Endpoint}) {
		t.Fatalf("endpoints %q, want etcd A %q", got, etcdA.Endpoint)
	}
	if _, err := cli.Put(ctx, "/follow/a", "1"); err != nil {
		t.Fatal(err)
	}

	// etcd moves to B: the same client follows.
	if _, err := kube.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice(etcdB.Endpoint, true), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the client to move to etcd B", func() bool {
		return slices.Equal(cli.Endpoints(), []string{etcdB.Endpoint})
	})
	bcli := etcdB.Client(t)
	waitFor(t, "a write through the client to land in etcd B", func() bool {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		defer rcancel()
		if _, err := cli.Put(rctx, "/follow/b", "1"); err != nil {
			return false
		}
		resp, err := bcli.Get(rctx, "/follow/b")
		return err == nil && len(resp.Kvs) == 1
	})

	// No ready endpoint: the last list stays (a client without endpoints
	// could not even retry).
	if _, err := kube.DiscoveryV1().EndpointSlices(ns).Update(ctx, slice(etcdA.Endpoint, false), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if got := cli.Endpoints(); !slices.Equal(got, []string{etcdB.Endpoint}) {
		t.Errorf("endpoints %q after the Service lost its ready endpoints, want etcd B's kept", got)
	}

	// A Service without endpoints at start is an error, not a hang.
	cfg.Endpoints, cfg.Timeout = []string{"@" + ns + "/missing"}, 250*time.Millisecond
	if _, _, err := etcdservice.Connect(cctx, cfg, kube, slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		t.Error("Connect to a Service without endpoints succeeded")
	}
}

// etcdHost is where the test's etcds listen, in the test's own network
// namespace (testenv.InOwnNetNS): the kube-apiserver refuses loopback
// addresses in EndpointSlices.
const etcdHost = "10.250.0.1"

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
