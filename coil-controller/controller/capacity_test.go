package controller

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	"github.com/coil-project/coil/model"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

// poolEvents returns the messages of the events of reason about pool on
// the kube-system Namespace (recorded in "default").
func (c *cluster) poolEvents(t *testing.T, reason, pool string) []string {
	t.Helper()
	l, err := c.admin.CoreV1().Events(metav1.NamespaceDefault).List(context.Background(), metav1.ListOptions{
		FieldSelector: fields.AndSelectors(
			fields.OneTermEqualSelector("involvedObject.kind", "Namespace"),
			fields.OneTermEqualSelector("involvedObject.name", "kube-system"),
			fields.OneTermEqualSelector("reason", reason)).String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, e := range l.Items {
		if strings.Contains(e.Message, fmt.Sprintf("Pool %q ", pool)) {
			msgs = append(msgs, fmt.Sprintf("%s x%d", e.Message, e.Count))
		}
	}
	return msgs
}

// TestPoolCapacity runs the controller against the real API server and
// etcd while a pool fills up: the capacity gauges follow, crossing
// --pool-usage-warning records one PoolUsageHigh event on the kube-system
// Namespace (not one per sweep), falling back records PoolUsageNormal, and
// draining the rest of the pool counts its free blocks out.
func TestPoolCapacity(t *testing.T) {
	c := newCluster(t)
	st := newStore(t)
	ctx := context.Background()
	// A pool of its own, unique in the shared API server's events:
	// 2 subnets of 4 blocks of 4 addresses.
	pool := fmt.Sprintf("cap-%s", strings.TrimSuffix(c.prefix, "-"))
	p := model.Pool{Name: pool, BlockSizeBits: 2, Subnets: []model.Subnet{
		{IPv4: mustPrefix("10.110.0.0/28")}, {IPv4: mustPrefix("10.110.1.0/28")}}}
	if err := st.CreatePool(ctx, p); err != nil {
		t.Fatal(err)
	}
	node := c.createNode(t, "n")
	var blocks []model.Block
	var addrs []model.Address
	take := func(n int) {
		t.Helper()
		for range n {
			o := model.Owner{Node: node, Namespace: c.ns, Pod: fmt.Sprintf("p%d", len(addrs)), ContainerID: fmt.Sprintf("c%d", len(addrs)), Interface: "eth0"}
			if len(addrs)%4 == 0 {
				b, a, err := st.AcquireBlock(ctx, pool, o)
				if err != nil {
					t.Fatal(err)
				}
				blocks, addrs = append(blocks, b), append(addrs, a)
				continue
			}
			a, err := st.AllocateAddress(ctx, blocks[len(blocks)-1], len(addrs)%4, o)
			if err != nil {
				t.Fatal(err)
			}
			addrs = append(addrs, a)
		}
	}
	take(12) // 3 of 8 blocks, 12 of 32 addresses: 0.375

	in := c.start(t, "solo", st, instanceOptions{user: controllerUser,
		opts: Options{ScanInterval: 100 * time.Millisecond, LeakGrace: time.Hour, PoolUsageWarning: 0.8}})
	in.waitLeading(t)
	gauge := func(name string) float64 {
		return in.metric(t, "coil_controller_pool_"+name, map[string]string{"pool": pool})
	}
	waitGauge := func(name string, want float64) {
		t.Helper()
		testenv.Eventually(t, 10*time.Second, fmt.Sprintf("%s = %v", name, want), func() bool { return gauge(name) == want })
	}
	waitGauge("addresses_in_use", 12)
	for name, want := range map[string]float64{"addresses": 32, "blocks": 8, "blocks_owned": 3, "blocks_free": 5, "usage_ratio": 0.375, "drained": 0} {
		if got := gauge(name); got != want {
			t.Errorf("coil_controller_pool_%s = %v, want %v", name, got, want)
		}
	}
	sub0 := blocks[0].Subnet
	subnetLabels := map[string]string{"pool": pool, "subnet": p.Subnets[sub0].String()}
	if got := in.metric(t, "coil_controller_subnet_blocks", subnetLabels); got != 4 {
		t.Errorf("coil_controller_subnet_blocks{%v} = %v, want 4", subnetLabels, got)
	}

	take(14) // 26 of 32: 0.8125, over the warning
	waitGauge("addresses_in_use", 26)
	testenv.Eventually(t, 10*time.Second, "a PoolUsageHigh event", func() bool {
		return len(c.poolEvents(t, EventPoolUsageHigh, pool)) > 0
	})
	// Sweeps go on every 100 ms; the crossing is announced once.
	time.Sleep(500 * time.Millisecond)
	high := c.poolEvents(t, EventPoolUsageHigh, pool)
	if len(high) != 1 || !strings.HasSuffix(high[0], " x1") || !strings.Contains(high[0], "81.2% used (warning at 80.0%): 26 of 32 usable") {
		t.Errorf("PoolUsageHigh events: %q, want one, recorded once", high)
	}

	// Pods go: back below.
	for _, a := range addrs[20:] {
		if err := st.ReleaseAddress(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 10*time.Second, "a PoolUsageNormal event", func() bool {
		return len(c.poolEvents(t, EventPoolUsageNormal, pool)) == 1
	})

	// Draining the subnet with the last free block takes it out of the
	// usable addresses: 20 in use of the 28 of the 7 owned blocks.
	owned := map[int]int{}
	for _, b := range blocks {
		owned[b.Subnet]++
	}
	withFree := 0
	if owned[0] == 4 {
		withFree = 1
	}
	if _, err := st.SetDrained(ctx, pool, p.Subnets[withFree].IPv4, true); err != nil {
		t.Fatal(err)
	}
	waitGauge("blocks_free", 0)
	drainedLabels := map[string]string{"pool": pool, "subnet": p.Subnets[withFree].String()}
	if got := in.metric(t, "coil_controller_subnet_drained", drainedLabels); got != 1 {
		t.Errorf("subnet drained gauge = %v, want 1", got)
	}
	if got := gauge("usage_ratio"); got != 20.0/28 {
		t.Errorf("usage ratio after the drain = %v, want 20/28", got)
	}
	// A pool drained as a whole is not warned about, however full.
	if _, err := st.SetDrained(ctx, pool, model.Subnet{}.IPv4, true); err != nil {
		t.Fatal(err)
	}
	waitGauge("drained", 1)
	time.Sleep(300 * time.Millisecond)
	if high := c.poolEvents(t, EventPoolUsageHigh, pool); len(high) != 1 {
		t.Errorf("PoolUsageHigh events after draining the pool: %q", high)
	}
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
