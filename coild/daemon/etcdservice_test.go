package daemon_test

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/internal/testenv"
	nodetest "github.com/coil-project/coil/internal/testenv/node"
	"github.com/coil-project/coil/model"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// TestEtcdService runs coild with --etcd-endpoints=@kube-system/etcd: it
// reaches etcd through the Service's EndpointSlice (first through a
// proxy), and follows the slice when it moves to etcd itself and the
// proxy goes away. The real API server's side of it is tested in
// internal/etcdservice and by coil-controller's TestRunEtcdService; here
// the API is coild's fake one.
func TestEtcdService(t *testing.T) {
	ctx := context.Background()
	proxy := testenv.NewTCPProxy(t, hostPort(t, env.Etcd.Endpoint))
	slice := func(endpoint string) *discoveryv1.EndpointSlice {
		u, err := url.Parse(endpoint)
		if err != nil {
			t.Fatal(err)
		}
		port, _ := strconv.Atoi(u.Port())
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: "etcd-x1", Namespace: "kube-system", Labels: map[string]string{discoveryv1.LabelServiceName: "etcd"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{u.Hostname()}}},
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("client"), Port: ptr.To(int32(port))}},
		}
	}
	sub, _ := model.ParseSubnet("10.78.0.0/24", "")
	n := env.NewNode(t, nodetest.Options{
		EtcdEndpoint:   "@kube-system/etcd",
		EndpointSlices: []*discoveryv1.EndpointSlice{slice(proxy.URL())},
		Pools:          []model.Pool{{Name: "default", BlockSizeBits: 4, Subnets: []model.Subnet{sub}}},
	})
	alloc := func(cid string) error {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		resp, err := n.Client.Allocate(actx, api.AllocRequest{PodNamespace: "default", PodName: cid, ContainerID: cid})
		if err != nil {
			return err
		}
		if !netip.MustParsePrefix("10.78.0.0/24").Contains(netip.MustParseAddr(resp.Address)) {
			return fmt.Errorf("got %s, want an address of 10.78.0.0/24", resp.Address)
		}
		return nil
	}
	if err := alloc("c-1"); err != nil {
		t.Fatalf("allocate through the Service's endpoint: %v", err)
	}

	if _, err := n.Kube.DiscoveryV1().EndpointSlices("kube-system").Update(ctx, slice(env.Etcd.Endpoint), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, "coild following the slice", func() bool {
		return strings.Contains(n.Log(), "etcd endpoints changed")
	})
	proxy.SetCut(true)
	testenv.Eventually(t, 20*time.Second, "an allocation through etcd's new endpoint", func() error {
		return alloc(fmt.Sprintf("c-2-%d", time.Now().UnixNano()))
	})
}

func hostPort(t *testing.T, endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// TestReleaseSigned: a release by coild is signed with its node, so that
// coilctl address history says the node's coild released the address.
func TestReleaseSigned(t *testing.T) {
	ctx := context.Background()
	sub, _ := model.ParseSubnet("10.79.0.0/24", "")
	n := env.NewNode(t, nodetest.Options{Pools: []model.Pool{{Name: "default", BlockSizeBits: 4, Subnets: []model.Subnet{sub}}}})
	resp, err := n.Client.Allocate(ctx, api.AllocRequest{PodNamespace: "default", PodName: "p", ContainerID: "c-signed"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Client.Release(ctx, "default", "p", api.Attachment{ContainerID: "c-signed"}); err != nil {
		t.Fatal(err)
	}
	h, err := n.Store.AddressHistory(ctx, netip.MustParseAddr(resp.Address))
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Events) != 2 {
		t.Fatalf("%d events, want the allocation and the release: %+v", len(h.Events), h.Events)
	}
	rel := h.Events[1]
	if rel.Kind != model.EventReleased || rel.By == nil || rel.By.Component != "coild" || rel.By.Host != n.Name || rel.Address.ContainerID != "c-signed" {
		t.Errorf("release event = %+v by %+v, want released by coild on %s", rel, rel.By, n.Name)
	}
}
