package mtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/promql"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

// TestPoolOperations runs a pool through its life with the real binaries:
// capacity figures from coilctl, coild and coil-controller, the usage
// warning event, a drain that moves new pods to the other subnet while the
// old ones keep their addresses, remove-subnet refused while a node owns a
// block of the subnet and done once its pods are gone. It also checks every
// query of docs/examples against what coild and coil-controller export.
func TestPoolOperations(t *testing.T) {
	c := newCluster(t, Options{Nodes: 2, Controller: true,
		ControllerArgs: []string{"--scan-interval", "1s", "--pool-usage-warning", "0.2"},
		CoildArgs:      []string{"--block-release-grace", "1s"}})
	ctx := context.Background()
	// Two subnets of 4 blocks of 4 addresses.
	mustCoilctl(t, c, "pool", "create", "default", "10.100.0.0/28", "2")
	mustCoilctl(t, c, "pool", "add-subnet", "default", "10.100.1.0/28")
	subnets := []netip.Prefix{netip.MustParsePrefix("10.100.0.0/28"), netip.MustParsePrefix("10.100.1.0/28")}
	subnetOf := func(p *Pod) netip.Prefix {
		for _, s := range subnets {
			if s.Contains(p.IPv4()) {
				return s
			}
		}
		t.Fatalf("pod %s got %v, outside the pool", p.Name, p.IPs)
		return netip.Prefix{}
	}
	n1, n2 := c.Nodes[0], c.Nodes[1]

	var before []*Pod
	var drained, other netip.Prefix
	step(t, "pods on both nodes", func(t *testing.T) {
		for i := range 3 {
			before = append(before, mustStartPod(t, n1, "default", fmt.Sprintf("old-%d", i)))
		}
		before = append(before, mustStartPod(t, n2, "default", "old-3"))
		drained = subnetOf(before[0])
		other = subnets[0]
		if other == drained {
			other = subnets[1]
		}
	})

	step(t, "drain the subnet of node 1's block", func(t *testing.T) {
		out := mustCoilctl(t, c, "pool", "drain", "default", "--subnet", drained.String())
		if !strings.Contains(out, "no node takes a new block of it") {
			t.Fatalf("drain printed %q", out)
		}
		// Node 1's block has a free address, yet new pods go to the
		// other subnet.
		var fresh *Pod
		for i := range 2 {
			fresh = mustStartPod(t, n1, "default", fmt.Sprintf("new-%d", i))
			if got := subnetOf(fresh); got != other {
				t.Fatalf("pod created after the drain got %s of the drained subnet %s", fresh.IPv4(), drained)
			}
		}
		// The old pods keep their addresses, and traffic.
		for _, p := range before[:3] {
			pingEventually(t, fresh, p.IPv4())
		}
		var show struct {
			SubnetUsage []struct {
				IPv4      string `json:"ipv4"`
				Drained   bool   `json:"drained"`
				Addresses struct {
					Used int `json:"used"`
				} `json:"addresses"`
			} `json:"subnetUsage"`
		}
		out = mustCoilctl(t, c, "pool", "show", "default", "-o", "json")
		if err := json.Unmarshal([]byte(out), &show); err != nil {
			t.Fatal(err)
		}
		inDrained := 0
		for _, p := range before {
			if subnetOf(p) == drained {
				inDrained++
			}
		}
		found := false
		for _, su := range show.SubnetUsage {
			if su.IPv4 == drained.String() {
				found = true
				if !su.Drained || su.Addresses.Used != inDrained {
					t.Errorf("pool show for the drained subnet: %+v, want drained with %d addresses in use", su, inDrained)
				}
			}
		}
		if !found {
			t.Fatalf("pool show lacks the drained subnet: %s", out)
		}
		t.Logf("coilctl pool show default:\n%s", mustCoilctl(t, c, "pool", "show", "default"))
	})

	step(t, "remove-subnet refused while a node owns a block of it", func(t *testing.T) {
		_, err := c.Coilctl("pool", "remove-subnet", "default", drained.String())
		if err == nil || !strings.Contains(err.Error(), n1.Name+" (") || !strings.Contains(err.Error(), "blocks in use") {
			t.Fatalf("remove-subnet of a subnet in use = %v, want a refusal naming %s", err, n1.Name)
		}
	})

	step(t, "capacity metrics and the usage warning", func(t *testing.T) {
		// 6 pods; the drain took the drained subnet's free blocks out of
		// the usable addresses, so the ratio is above 0.2.
		if err := Eventually(20*time.Second, func() error {
			m, err := c.ControllerMetrics(ctx)
			if err != nil {
				return err
			}
			for _, want := range []string{
				`coil_controller_pool_addresses{pool="default"} 32`,
				`coil_controller_pool_addresses_in_use{pool="default"} 6`,
				fmt.Sprintf(`coil_controller_subnet_drained{pool="default",subnet=%q} 1`, drained.String()),
			} {
				if !strings.Contains(m, want) {
					return fmt.Errorf("coil-controller metrics lack %s", want)
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		m, err := n1.Metrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(m, `coild_addresses_free{pool="default"}`) {
			t.Errorf("coild metrics lack coild_addresses_free:\n%s", m)
		}
		if err := Eventually(20*time.Second, func() error {
			l, err := c.Kube.CoreV1().Events(metav1.NamespaceDefault).List(ctx, metav1.ListOptions{
				FieldSelector: fields.OneTermEqualSelector("reason", "PoolUsageHigh").String()})
			if err != nil {
				return err
			}
			if len(l.Items) != 1 || l.Items[0].InvolvedObject.Name != "kube-system" || !strings.Contains(l.Items[0].Message, `Pool "default"`) {
				return fmt.Errorf("PoolUsageHigh events: %+v", l.Items)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})

	step(t, "docs/examples queries use exported metrics", func(t *testing.T) {
		fams := promql.Families{}
		scrapes := []func(context.Context) (string, error){c.ControllerMetrics, n1.Metrics, n2.Metrics}
		for _, s := range scrapes {
			m, err := s(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := fams.Read(strings.NewReader(m)); err != nil {
				t.Fatal(err)
			}
		}
		examples, err := promql.ReadExamples("../docs/examples")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range examples {
			if err := fams.Check(e.Query); err != nil {
				t.Errorf("%s: %v\n%s", e.Where, err, e.Expr)
			}
		}
		t.Logf("%d queries checked", len(examples))
	})

	step(t, "the pods of the drained subnet go: it is removed", func(t *testing.T) {
		for _, p := range before {
			if subnetOf(p) == drained {
				if err := p.Remove(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
		// The nodes return their emptied blocks after --block-release-grace.
		if err := Eventually(30*time.Second, func() error {
			_, err := c.Coilctl("pool", "remove-subnet", "default", drained.String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		out := mustCoilctl(t, c, "pool", "list")
		if strings.Contains(out, drained.String()) || !strings.Contains(out, other.String()) {
			t.Fatalf("pool list after remove-subnet:\n%s", out)
		}
		p := mustStartPod(t, n2, "default", "after")
		if subnetOf(p) != other {
			t.Fatalf("pod after the removal got %s", p.IPv4())
		}
	})
}
