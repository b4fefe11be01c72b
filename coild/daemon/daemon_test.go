package daemon_test

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	nodetest "github.com/coil-project/coil/internal/testenv/node"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/coil-project/coil/coil/plugin"
	"github.com/coil-project/coil/coild/api"
	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/nodenet"
)

// pool returns a pool of subnets given as "v4" or "v4,v6".
func pool(t testing.TB, name string, blockSizeBits int, subnets ...string) model.Pool {
	t.Helper()
	p := model.Pool{Name: name, BlockSizeBits: blockSizeBits}
	for _, s := range subnets {
		first, second, _ := strings.Cut(s, ",")
		sub, err := model.ParseSubnet(first, second)
		if err != nil {
			t.Fatal(err)
		}
		p.Subnets = append(p.Subnets, sub)
	}
	return p
}

func prefixesContain(ps []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
}

// TestAddFromPool checks that ADD gives each pod an address of the pool its
// namespace selects, wires it so that it reaches the node and other pods,
// runs the chained plugins, and that the node exports exactly its blocks.
func TestAddFromPool(t *testing.T) {
	n := env.NewNode(t, nodetest.Options{
		Pools: []model.Pool{
			pool(t, "default", 4, "10.10.0.0/24"),
			pool(t, "tenant-a", 4, "10.11.0.0/24"),
			pool(t, "tenant-b", 4, "10.12.0.0/24"),
		},
		Namespaces: []*corev1.Namespace{
			nodetest.Namespace("plain", ""),
			nodetest.Namespace("team-a", "tenant-a"),
			nodetest.Namespace("tenant-b", ""), // v1 compatibility: pool named like the namespace
		},
	})
	nodeListener := netnstest.Listen(t, n.NS, nodetest.IPv4, 0)

	tests := []struct {
		namespace string
		subnet    netip.Prefix
	}{
		{"default", netip.MustParsePrefix("10.10.0.0/24")},
		{"plain", netip.MustParsePrefix("10.10.0.0/24")},
		{"team-a", netip.MustParsePrefix("10.11.0.0/24")},
		{"tenant-b", netip.MustParsePrefix("10.12.0.0/24")},
	}
	var all []netip.Addr
	byContainer := map[string]string{}
	for _, tt := range tests {
		t.Run(tt.namespace, func(t *testing.T) {
			var addrs []netip.Addr
			var pods []*nodetest.Pod
			for i := range 2 {
				p := nodetest.NewPod(t, tt.namespace, fmt.Sprintf("web-%d", i))
				got := n.Add(p)
				if len(got) != 1 || !tt.subnet.Contains(got[0]) {
					t.Fatalf("pod %s/%s got %v, want one address of %s", p.Namespace, p.Name, got, tt.subnet)
				}
				if on := p.Addrs(t); !slices.Equal(on, got) {
					t.Errorf("eth0 of the pod holds %v, the result says %v", on, got)
				}
				if gws := p.DefaultGateways(t); !slices.Equal(gws, []netip.Addr{nodenet.GatewayIPv4}) {
					t.Errorf("default gateways of the pod: %v, want %v", gws, nodenet.GatewayIPv4)
				}
				if want := []netip.Prefix{netip.PrefixFrom(got[0], 32)}; !slices.Equal(n.HostRoutes(p.HostVeth()), want) {
					t.Errorf("node routes through %s: %v, want %v", p.HostVeth(), n.HostRoutes(p.HostVeth()), want)
				}
				if v := p.Sysctl(t, "net.core.somaxconn"); v != nodetest.TuningSomaxconn {
					t.Errorf("somaxconn in pod = %s, want %s set by the chained tuning plugin", v, nodetest.TuningSomaxconn)
				}
				if err := n.Check(p); err != nil {
					t.Errorf("CHECK: %v", err)
				}
				addrs = append(addrs, got[0])
				pods = append(pods, p)
				byContainer[p.ContainerID] = got[0].String()
			}
			if addrs[0] == addrs[1] {
				t.Fatalf("two pods got the same address %s", addrs[0])
			}
			if err := netnstest.Dial(pods[0].NS, nodeListener); err != nil {
				t.Errorf("pod cannot reach the node: %v", err)
			}
			peer := netnstest.Listen(t, pods[1].NS, addrs[1], 0)
			if err := netnstest.Dial(pods[0].NS, peer); err != nil {
				t.Errorf("pod cannot reach a second pod on the node: %v", err)
			}
			all = append(all, addrs...)
		})
	}

	st := n.Status()
	poolSubnets := map[string]netip.Prefix{
		"default":  netip.MustParsePrefix("10.10.0.0/24"),
		"tenant-a": netip.MustParsePrefix("10.11.0.0/24"),
		"tenant-b": netip.MustParsePrefix("10.12.0.0/24"),
	}
	if len(st.AddressBlocks) != len(poolSubnets) {
		t.Errorf("/status blocks %v, want one block in each of the 3 pools", st.AddressBlocks)
	}
	for name, blocks := range st.AddressBlocks {
		for _, b := range blocks {
			if p := netip.MustParsePrefix(b); len(blocks) != 1 || !poolSubnets[name].Overlaps(p) || p.Bits() != 28 {
				t.Errorf("pool %s has blocks %v, want one /28 of %s", name, blocks, poolSubnets[name])
			}
		}
	}
	if !maps.Equal(st.Pods, byContainer) {
		t.Errorf("/status pods %v, want %v (by container id)", st.Pods, byContainer)
	}
	slices.SortFunc(all, netip.Addr.Compare)
	if got, want := n.StatusAddresses(), all; !slices.Equal(got, want) {
		t.Errorf("/status lists %v, pods hold %v", got, want)
	}
	blocks := n.WaitExportMatchesStatus()
	for _, a := range all {
		if !prefixesContain(blocks, a) {
			t.Errorf("no exported block holds pod address %s (blocks %v)", a, blocks)
		}
	}
	if recs := n.AddressRecords(); len(recs) != len(all) {
		t.Errorf("etcd holds %d address records, want %d", len(recs), len(all))
	}

	t.Run("across pools", func(t *testing.T) {
		a, b := nodetest.NewPod(t, "team-a", "client"), nodetest.NewPod(t, "tenant-b", "server")
		n.Add(a)
		addr := n.Add(b)
		if err := netnstest.Dial(a.NS, netnstest.Listen(t, b.NS, addr[0], 0)); err != nil {
			t.Errorf("pods of two pools on one node cannot talk: %v", err)
		}
	})

	t.Run("portmap", func(t *testing.T) {
		server := nodetest.NewPod(t, "default", "hostport")
		server.PortMappings = []nodetest.PortMapping{{HostPort: 18080, ContainerPort: 80, Protocol: "tcp"}}
		addr := n.Add(server)
		netnstest.Listen(t, server.NS, addr[0], 80)
		client := nodetest.NewPod(t, "default", "hostport-client")
		n.Add(client)
		if err := netnstest.Dial(client.NS, netip.AddrPortFrom(nodetest.IPv4, 18080)); err != nil {
			t.Errorf("host port of a pod unreachable through the chained portmap plugin: %v", err)
		}
		n.Del(server)
		if err := netnstest.Dial(client.NS, netip.AddrPortFrom(nodetest.IPv4, 18080)); err == nil {
			t.Errorf("host port still forwarded after DEL")
		}
	})
}

// TestDel checks that DEL removes the pod's veth and host routes and frees
// its address, that ADD is idempotent per container and DEL may repeat, and
// that an emptied block is returned and withdrawn from the export table.
func TestDel(t *testing.T) {
	n := env.NewNode(t, nodetest.Options{
		Pools:      []model.Pool{pool(t, "default", 4, "10.10.0.0/24")},
		BlockGrace: time.Nanosecond,
	})
	p := nodetest.NewPod(t, "default", "db-0")
	first := n.Add(p)
	second := n.Add(p)
	if !slices.Equal(first, second) {
		t.Errorf("ADD twice for container %s: %v then %v", p.ContainerID, first, second)
	}
	if err := n.Check(p); err != nil {
		t.Errorf("CHECK after the repeated ADD: %v", err)
	}
	if err := netnstest.Dial(p.NS, netnstest.Listen(t, n.NS, nodetest.IPv4, 0)); err != nil {
		t.Errorf("pod cannot reach the node after the repeated ADD: %v", err)
	}
	if recs := n.AddressRecords(); len(recs) != 1 {
		t.Errorf("etcd holds %d address records after ADD twice, want 1", len(recs))
	}
	if len(n.WaitExportMatchesStatus()) != 1 {
		t.Errorf("want one exported block")
	}

	n.Del(p)
	// DEL removes the routes at once and the veth right after it answers.
	if left := n.RoutesTo(first); len(left) > 0 {
		t.Errorf("node still routes %v after DEL", left)
	}
	testenv.Eventually(t, 10*time.Second, "the host veth to go after DEL", func() bool { return !n.LinkExists(p.HostVeth()) })
	if left := n.RoutesTo(first); len(left) > 0 {
		t.Errorf("node still routes %v after DEL", left)
	}
	if got := n.StatusAddresses(); slices.Contains(got, first[0]) {
		t.Errorf("/status still lists %s after DEL: %v", first[0], got)
	}
	if recs := n.AddressRecords(); len(recs) != 0 {
		t.Errorf("etcd still holds address records after DEL: %+v", recs)
	}
	_, err := n.Client.Get(context.Background(), p.Namespace, p.Name, api.Attachment{ContainerID: p.ContainerID, Interface: "eth0"})
	if !errors.Is(err, api.ErrNotFound) {
		t.Errorf("GET after DEL = %v, want not found", err)
	}
	if err := n.TryDel(p); err != nil {
		t.Errorf("second DEL: %v", err)
	}

	// With no grace, the empty block goes back to the pool and its route
	// leaves the export table.
	testenv.Eventually(t, 10*time.Second, "release of the empty block", func() error {
		if blocks, exported := n.StatusBlocks(), n.Exported(); len(blocks) > 0 || len(exported) > 0 {
			return fmt.Errorf("/status %v, export table %v", blocks, exported)
		}
		return nil
	})

	// DEL of a pod whose netns is gone (the runtime removed it first).
	q := nodetest.NewPod(t, "default", "db-1")
	n.Add(q)
	q.NS.Close()
	if err := testutils.UnmountNS(q.NS); err != nil {
		t.Fatal(err)
	}
	if err := n.TryDel(q); err != nil {
		t.Errorf("DEL after the pod netns is gone: %v", err)
	}
	if recs := n.AddressRecords(); len(recs) != 0 {
		t.Errorf("etcd still holds address records after DEL: %+v", recs)
	}
}

// TestRestart checks that a restarted coild serves the state it had, keeps
// live pods' veths and removes a leftover veth of a pod without address.
func TestRestart(t *testing.T) {
	n := env.NewNode(t, nodetest.Options{Pools: []model.Pool{pool(t, "default", 4, "10.10.0.0/24")}})
	var old []*nodetest.Pod
	var oldAddrs []netip.Addr
	for i := range 3 {
		p := nodetest.NewPod(t, "default", fmt.Sprintf("old-%d", i))
		oldAddrs = append(oldAddrs, n.Add(p)...)
		old = append(old, p)
	}
	before := n.Status()
	exportedBefore := n.WaitExportMatchesStatus()

	n.Stop()

	// While coild is down, the plugin tells the runtime to try again later
	// and STATUS says the plugin is not available.
	_, err := n.TryAdd(nodetest.NewPod(t, "default", "while-down"))
	if e := nodetest.CNIError(t, err); e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "unreachable") {
		t.Errorf("ADD while coild is down: %v (code %d), want code %d saying coild is unreachable", err, e.Code, types.ErrTryAgainLater)
	}
	if e := nodetest.CNIError(t, n.CNIStatus()); e.Code != types.ErrPluginNotAvailable {
		t.Errorf("STATUS while coild is down: %v, want code %d", e, types.ErrPluginNotAvailable)
	}

	// What a crash or an operator may leave behind: a host veth of a pod
	// that holds no address, a link of another plugin, a flushed host
	// route, a stale exported block and a route of another daemon in the
	// export table.
	gone := nodenet.HostVethName("ns", "gone")
	stale := netip.MustParsePrefix("10.99.0.0/28")
	foreign := netip.MustParsePrefix("10.98.0.0/28")
	netnstest.Do(t, n.NS, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: gone}, PeerName: "gone-peer"}); err != nil {
			return err
		}
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vethother0"}, PeerName: "other-peer"}); err != nil {
			return err
		}
		link, err := netlink.LinkByName(old[1].HostVeth())
		if err != nil {
			return err
		}
		if err := netlink.RouteDel(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: nodetest.HostNet(oldAddrs[1]), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("flush host route: %w", err)
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, r := range []struct {
			dst   netip.Prefix
			proto netlink.RouteProtocol
		}{{stale, nodetest.ExportProtocol}, {foreign, nodetest.ExportProtocol + 1}} {
			route := &netlink.Route{Table: nodetest.ExportTable, Protocol: r.proto, LinkIndex: lo.Attrs().Index, Dst: nodetest.PrefixNet(r.dst), Scope: netlink.SCOPE_LINK}
			if err := netlink.RouteAdd(route); err != nil {
				return fmt.Errorf("add %v: %w", route, err)
			}
		}
		return nil
	})

	n.Start()
	if err := n.CNIStatus(); err != nil {
		t.Errorf("STATUS after restart: %v", err)
	}

	if after := n.Status(); !statusEqual(before, after) {
		t.Errorf("/status changed over the restart:\nbefore %+v\nafter  %+v", before, after)
	}
	if got := n.WaitExportMatchesStatus(); !slices.Equal(got, exportedBefore) {
		t.Errorf("export table after restart %v, before %v", got, exportedBefore)
	}
	if n.LinkExists(gone) || n.LinkExists("gone-peer") {
		t.Errorf("leftover veth %s of a pod without address survived the restart", gone)
	}
	if !n.LinkExists("vethother0") {
		t.Errorf("coild removed vethother0, which is not named like a Coil veth")
	}
	if routes := n.HostRoutes(old[1].HostVeth()); !slices.Equal(routes, []netip.Prefix{netip.PrefixFrom(oldAddrs[1], 32)}) {
		t.Errorf("flushed host route of %s not restored at start-up: routes %v", old[1].Name, routes)
	}
	var others []netlink.Route
	netnstest.Do(t, n.NS, func() error {
		var err error
		others, err = netlink.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{Table: nodetest.ExportTable, Protocol: nodetest.ExportProtocol + 1},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		return err
	})
	if len(others) != 1 {
		t.Errorf("another daemon's route %s in the export table was touched: %v", foreign, others)
	}
	for i, p := range old {
		if !n.LinkExists(p.HostVeth()) {
			t.Errorf("veth %s of live pod %s was removed", p.HostVeth(), p.Name)
		}
		resp, err := n.Client.Get(context.Background(), p.Namespace, p.Name, api.Attachment{ContainerID: p.ContainerID, Interface: "eth0"})
		if err != nil || resp.Address != oldAddrs[i].String() {
			t.Errorf("GET %s after restart = %+v, %v; want %s", p.Name, resp, err, oldAddrs[i])
		}
		if err := n.Check(p); err != nil {
			t.Errorf("CHECK %s after restart: %v", p.Name, err)
		}
	}
	nodeListener := netnstest.Listen(t, n.NS, nodetest.IPv4, 0)
	for i := range 3 {
		p := nodetest.NewPod(t, "default", fmt.Sprintf("new-%d", i))
		got := n.Add(p)
		if slices.Contains(oldAddrs, got[0]) {
			t.Errorf("new pod got %s, which old pod holds (old: %v)", got[0], oldAddrs)
		}
		oldAddrs = append(oldAddrs, got[0])
		if err := netnstest.Dial(p.NS, nodeListener); err != nil {
			t.Errorf("new pod cannot reach the node: %v", err)
		}
	}
	if err := netnstest.Dial(old[0].NS, nodeListener); err != nil {
		t.Errorf("old pod cannot reach the node after restart: %v", err)
	}
}

func statusEqual(a, b api.StatusResponse) bool {
	norm := func(s api.StatusResponse) string {
		for _, v := range s.AddressBlocks {
			slices.Sort(v)
		}
		out, _ := json.Marshal(s)
		return string(out)
	}
	return norm(a) == norm(b)
}

// TestConcurrentAdds runs 100 ADDs at once, then 100 DELs at once.
func TestConcurrentAdds(t *testing.T) {
	const pods = 100
	subnet := netip.MustParsePrefix("10.20.0.0/22")
	n := env.NewNode(t, nodetest.Options{Pools: []model.Pool{pool(t, "default", 5, subnet.String())}})
	ps := make([]*nodetest.Pod, pods)
	for i := range ps {
		ps[i] = nodetest.NewPod(t, "default", fmt.Sprintf("burst-%d", i))
	}
	addrs := make([]netip.Addr, pods)
	errs := make([]error, pods)
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Go(func() {
			res, err := n.TryAdd(p)
			if err != nil {
				errs[i] = err
				return
			}
			if len(res.IPs) != 1 {
				errs[i] = fmt.Errorf("result has %d addresses", len(res.IPs))
				return
			}
			addrs[i], _ = netip.AddrFromSlice(res.IPs[0].Address.IP)
			addrs[i] = addrs[i].Unmap()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent ADDs failed: %v", err)
	}
	seen := map[netip.Addr]int{}
	for i, a := range addrs {
		if j, dup := seen[a]; dup {
			t.Errorf("pods %d and %d both got %s", j, i, a)
		}
		seen[a] = i
		if !subnet.Contains(a) {
			t.Errorf("pod %d got %s outside %s", i, a, subnet)
		}
	}
	if got := len(n.StatusAddresses()); got != pods {
		t.Errorf("/status lists %d addresses, want %d", got, pods)
	}
	if recs := n.AddressRecords(); len(recs) != pods {
		t.Errorf("etcd holds %d address records, want %d", len(recs), pods)
	}
	// Blocks are acquired one at a time per pool: 100 addresses fit in 4
	// blocks of 32, and a burst must not grab more.
	if blocks := n.WaitExportMatchesStatus(); len(blocks) != 4 {
		t.Errorf("100 pods took %d blocks of 32 (%v), want 4", len(blocks), blocks)
	}
	if veths := n.HostVeths(); len(veths) != pods {
		t.Errorf("node has %d host veths, want %d", len(veths), pods)
	}

	for i, p := range ps {
		wg.Go(func() { errs[i] = n.TryDel(p) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent DELs failed: %v", err)
	}
	if recs := n.AddressRecords(); len(recs) != 0 {
		t.Errorf("etcd still holds %d address records after DEL of every pod", len(recs))
	}
	if got := n.StatusAddresses(); len(got) != 0 {
		t.Errorf("/status still lists %v", got)
	}
	testenv.Eventually(t, 20*time.Second, "the host veths to go after DEL of every pod", func() bool { return len(n.HostVeths()) == 0 })
	if left := n.RoutesTo(addrs); len(left) > 0 {
		t.Errorf("node still routes %v", left)
	}
}

// TestExportNeverWithdrawsOwnedBlock checks that the export table never
// loses, even for a moment, the route of a block the node owns: a routing
// daemon would withdraw it from the network and cut the block's pods off.
// Every ADD takes a new block here while house-keeping re-syncs the table
// all the time.
func TestExportNeverWithdrawsOwnedBlock(t *testing.T) {
	const pods = 40
	n := env.NewNode(t, nodetest.Options{
		Pools:        []model.Pool{pool(t, "default", 0, "10.50.0.0/24")},
		ScanInterval: time.Millisecond,
	})
	var deleted []netip.Prefix
	var mu sync.Mutex
	updates := make(chan netlink.RouteUpdate, 1024)
	done := make(chan struct{})
	watching := make(chan struct{})
	netnstest.Do(t, n.NS, func() error {
		return netlink.RouteSubscribeWithOptions(updates, done, netlink.RouteSubscribeOptions{
			ReceiveBufferSize: 1 << 20,
			ErrorCallback: func(err error) {
				select {
				case <-done: // the monitor's socket is closed at the end
				default:
					t.Errorf("route monitor: %v", err)
				}
			},
		})
	})
	go func() {
		defer close(watching)
		for u := range updates {
			if u.Table != nodetest.ExportTable || u.Protocol != nodetest.ExportProtocol || u.Type != unix.RTM_DELROUTE || u.Dst == nil {
				continue
			}
			a, _ := netip.AddrFromSlice(u.Dst.IP)
			ones, _ := u.Dst.Mask.Size()
			mu.Lock()
			deleted = append(deleted, netip.PrefixFrom(a.Unmap(), ones))
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { close(done); <-watching })

	var wg sync.WaitGroup
	errs := make([]error, pods)
	for i := range pods {
		p := nodetest.NewPod(t, "default", fmt.Sprintf("flap-%d", i))
		wg.Go(func() { _, errs[i] = n.TryAdd(p) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if blocks := n.WaitExportMatchesStatus(); len(blocks) != pods {
		t.Errorf("%d pods in blocks of one address own %d blocks", pods, len(blocks))
	}
	time.Sleep(50 * time.Millisecond) // let the monitor drain
	mu.Lock()
	defer mu.Unlock()
	if len(deleted) > 0 {
		t.Errorf("house-keeping withdrew routes of owned blocks from the export table: %v", deleted)
	}
}

// TestCnitool drives ADD and DEL through the reference CNI client, the way
// an operator debugging a node would.
func TestCnitool(t *testing.T) {
	n := env.NewNode(t, nodetest.Options{Pools: []model.Pool{pool(t, "default", 4, "10.10.0.0/24")}})
	confDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(confDir, "10-coil.conflist"), n.Conflist(), 0o644); err != nil {
		t.Fatal(err)
	}
	p := nodetest.NewPod(t, "default", "cnitool-pod")
	// cnitool names the container after the netns path.
	sum := sha512.Sum512([]byte(p.NS.Path()))
	p.ContainerID = fmt.Sprintf("cnitool-%x", sum[:10])

	run := func(cmd string) []byte {
		t.Helper()
		var out []byte
		netnstest.Do(t, n.NS, func() error {
			c := exec.Command(filepath.Join(env.BinDir, "cnitool"), cmd, nodetest.NetworkName, p.NS.Path())
			c.Env = append(os.Environ(),
				"NETCONFPATH="+confDir,
				"CNI_PATH="+env.BinDir,
				"CNI_IFNAME=eth0",
				"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE="+p.Namespace+";K8S_POD_NAME="+p.Name,
			)
			var stderr strings.Builder
			c.Stderr = &stderr
			var err error
			if out, err = c.Output(); err != nil {
				return fmt.Errorf("cnitool %s: %w: %s%s", cmd, err, stderr.String(), out)
			}
			return nil
		})
		return out
	}

	out := run("add")
	res, err := current.NewResult(out)
	if err != nil {
		t.Fatalf("cnitool printed no CNI result: %v\n%s", err, out)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		t.Fatal(err)
	}
	got := nodetest.ResultAddrs(t, r)
	if len(got) != 1 || !netip.MustParsePrefix("10.10.0.0/24").Contains(got[0]) {
		t.Fatalf("cnitool add gave %v", got)
	}
	if on := p.Addrs(t); !slices.Equal(on, got) {
		t.Errorf("eth0 holds %v, result says %v", on, got)
	}
	if routes := n.HostRoutes(p.HostVeth()); !slices.Equal(routes, []netip.Prefix{netip.PrefixFrom(got[0], 32)}) {
		t.Errorf("node routes through %s: %v", p.HostVeth(), routes)
	}
	resp, err := n.Client.Get(context.Background(), p.Namespace, p.Name, api.Attachment{ContainerID: p.ContainerID, Interface: "eth0"})
	if err != nil || resp.Address != got[0].String() {
		t.Errorf("coild holds %+v, %v for container %s; want %s", resp, err, p.ContainerID, got[0])
	}
	if err := netnstest.Dial(p.NS, netnstest.Listen(t, n.NS, nodetest.IPv4, 0)); err != nil {
		t.Errorf("pod set up by cnitool cannot reach the node: %v", err)
	}

	run("del")
	testenv.Eventually(t, 10*time.Second, "the host veth to go after cnitool del", func() bool { return !n.LinkExists(p.HostVeth()) })
	if left := n.RoutesTo(got); len(left) > 0 {
		t.Errorf("node still routes %v after cnitool del", left)
	}
	if recs := n.AddressRecords(); len(recs) != 0 {
		t.Errorf("etcd holds address records after cnitool del: %+v", recs)
	}
}

// TestDualStack checks that a pod of a dual-stack pool gets both families
// and reaches the node over both.
func TestDualStack(t *testing.T) {
	v4net, v6net := netip.MustParsePrefix("10.30.0.0/24"), netip.MustParsePrefix("fd00:30::/120")
	n := env.NewNode(t, nodetest.Options{Pools: []model.Pool{pool(t, "default", 4, v4net.String()+","+v6net.String())}})
	a, b := nodetest.NewPod(t, "default", "dual-a"), nodetest.NewPod(t, "default", "dual-b")
	got := n.Add(a)
	if len(got) != 2 || !v4net.Contains(got[0]) || !v6net.Contains(got[1]) {
		t.Fatalf("dual-stack pod got %v, want one address of %s and one of %s", got, v4net, v6net)
	}
	if on := a.Addrs(t); !slices.Equal(on, got) {
		t.Errorf("eth0 holds %v, result says %v", on, got)
	}
	if gws := a.DefaultGateways(t); !slices.Equal(gws, []netip.Addr{nodenet.GatewayIPv4, nodenet.GatewayIPv6}) {
		t.Errorf("default gateways %v, want %v and %v", gws, nodenet.GatewayIPv4, nodenet.GatewayIPv6)
	}
	wantRoutes := []netip.Prefix{netip.PrefixFrom(got[0], 32), netip.PrefixFrom(got[1], 128)}
	if routes := n.HostRoutes(a.HostVeth()); !slices.Equal(routes, wantRoutes) {
		t.Errorf("node routes through %s: %v, want %v", a.HostVeth(), routes, wantRoutes)
	}
	for _, target := range []netip.Addr{nodetest.IPv4, nodetest.IPv6} {
		if err := netnstest.Dial(a.NS, netnstest.Listen(t, n.NS, target, 0)); err != nil {
			t.Errorf("pod cannot reach the node at %s: %v", target, err)
		}
	}
	other := n.Add(b)
	for _, target := range other {
		if err := netnstest.Dial(a.NS, netnstest.Listen(t, b.NS, target, 0)); err != nil {
			t.Errorf("pod cannot reach a second pod at %s: %v", target, err)
		}
	}
	blocks := n.WaitExportMatchesStatus()
	if len(blocks) != 2 || !v4net.Contains(blocks[0].Addr()) || !v6net.Contains(blocks[1].Addr()) {
		t.Errorf("exported blocks %v, want one IPv4 and one IPv6 prefix of the block", blocks)
	}
	if err := n.Check(a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	n.Del(a)
	if left := n.RoutesTo(got); len(left) > 0 {
		t.Errorf("node still routes %v after DEL", left)
	}
}

// TestAddErrors checks what the runtime (and the user reading kubelet's
// events) gets when an ADD cannot succeed, and that a failed ADD leaves
// nothing behind.
func TestAddErrors(t *testing.T) {
	t.Run("pool exhausted", func(t *testing.T) {
		n := env.NewNode(t, nodetest.Options{
			Pools:      []model.Pool{pool(t, "default", 4, "10.10.0.0/24"), pool(t, "tiny", 1, "10.40.0.0/31")},
			Namespaces: []*corev1.Namespace{nodetest.Namespace("small", "tiny")},
		})
		for i := range 2 {
			n.Add(nodetest.NewPod(t, "small", fmt.Sprintf("fits-%d", i)))
		}
		p := nodetest.NewPod(t, "small", "one-too-many")
		_, err := n.TryAdd(p)
		e := nodetest.CNIError(t, err)
		if e.Code != plugin.ErrCodePoolExhausted {
			t.Errorf("ADD in a full pool: code %d (%v), want %d", e.Code, err, plugin.ErrCodePoolExhausted)
		}
		if !strings.Contains(e.Msg, "exhausted") || !strings.Contains(e.Error(), "tiny") {
			t.Errorf("error %q should say pool tiny is exhausted", e.Error())
		}
		assertNothingLeft(t, n, p, 2)
		// Other pools are not affected.
		n.Add(nodetest.NewPod(t, "default", "elsewhere"))
	})

	t.Run("missing pool", func(t *testing.T) {
		n := env.NewNode(t, nodetest.Options{
			Pools:      []model.Pool{pool(t, "default", 4, "10.10.0.0/24")},
			Namespaces: []*corev1.Namespace{nodetest.Namespace("typo", "no-such-pool")},
		})
		p := nodetest.NewPod(t, "typo", "web")
		_, err := n.TryAdd(p)
		e := nodetest.CNIError(t, err)
		if e.Code != types.ErrTryAgainLater {
			t.Errorf("ADD with a missing pool: code %d, want %d (an admin may create the pool)", e.Code, types.ErrTryAgainLater)
		}
		if !strings.Contains(e.Error(), `"no-such-pool"`) && !strings.Contains(e.Error(), "=no-such-pool") {
			t.Errorf("error %q does not name the missing pool", e.Error())
		}
		if !strings.Contains(e.Error(), "does not exist") {
			t.Errorf("error %q does not say the pool does not exist", e.Error())
		}
		assertNothingLeft(t, n, p, 0)
	})

	t.Run("etcd unreachable", func(t *testing.T) {
		srv, err := etcdtest.Start(etcdtest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		closed := false
		t.Cleanup(func() {
			if !closed {
				srv.Close()
			}
		})
		n := env.NewNode(t, nodetest.Options{Etcd: srv, Pools: []model.Pool{pool(t, "default", 4, "10.10.0.0/24")}})
		srv.Close() // takes etcd's request timeout: coild's watch stream holds it
		closed = true

		p := nodetest.NewPod(t, "default", "web")
		start := time.Now()
		_, err = n.TryAdd(p)
		e := nodetest.CNIError(t, err)
		if e.Code != types.ErrTryAgainLater {
			t.Errorf("ADD with etcd down: code %d (%v), want %d", e.Code, err, types.ErrTryAgainLater)
		}
		if !strings.Contains(e.Error(), "try again later") || !strings.Contains(e.Error(), "etcd") {
			t.Errorf("error %q should say etcd is unavailable and to try again later", e.Error())
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("ADD took %v to fail", d)
		}
		if n.LinkExists(p.HostVeth()) {
			t.Errorf("failed ADD left host veth %s", p.HostVeth())
		}
	})
}

// TestEtcdOutage checks that while etcd is unreachable ADD and DEL fail with
// "try again later", and that coild serves again, without a restart, once
// etcd is back.
func TestEtcdOutage(t *testing.T) {
	proxy := testenv.NewTCPProxy(t, strings.TrimPrefix(env.Etcd.Endpoint, "http://"))
	n := env.NewNode(t, nodetest.Options{
		EtcdEndpoint: proxy.URL(),
		Pools:        []model.Pool{pool(t, "default", 4, "10.10.0.0/24")},
	})
	before := nodetest.NewPod(t, "default", "before")
	n.Add(before)

	proxy.SetCut(true)
	during := nodetest.NewPod(t, "default", "during")
	_, err := n.TryAdd(during)
	if e := nodetest.CNIError(t, err); e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "etcd") {
		t.Errorf("ADD during the outage: %v (code %d), want code %d naming etcd", err, e.Code, types.ErrTryAgainLater)
	}
	assertNothingLeft(t, n, during, 1)
	err = n.TryDel(before)
	if e := nodetest.CNIError(t, err); e.Code != types.ErrTryAgainLater {
		t.Errorf("DEL during the outage: %v (code %d), want code %d", err, e.Code, types.ErrTryAgainLater)
	}
	if recs := n.AddressRecords(); len(recs) != 1 {
		t.Errorf("etcd holds %d records after a failed DEL, want 1", len(recs))
	}

	proxy.SetCut(false)
	// The etcd client reconnects with back-off; kubelet retries likewise.
	testenv.Eventually(t, 30*time.Second, "ADD to succeed after etcd came back", func() error {
		_, err := n.TryAdd(during)
		return err
	})
	n.Del(before) // kubelet's retry of the failed DEL
	recs := n.AddressRecords()
	if len(recs) != 1 || recs[0].ContainerID != during.ContainerID {
		t.Errorf("etcd records after the outage: %+v, want only pod %s", recs, during.Name)
	}
	if err := netnstest.Dial(during.NS, netnstest.Listen(t, n.NS, nodetest.IPv4, 0)); err != nil {
		t.Errorf("pod added after the outage cannot reach the node: %v", err)
	}
}

// assertNothingLeft checks that a failed ADD of p left no veth, no record
// and no listing, with want records remaining from other pods.
func assertNothingLeft(t *testing.T, n *nodetest.Node, p *nodetest.Pod, want int) {
	t.Helper()
	if n.LinkExists(p.HostVeth()) {
		t.Errorf("failed ADD left host veth %s", p.HostVeth())
	}
	if recs := n.AddressRecords(); len(recs) != want {
		t.Errorf("etcd holds %d address records, want %d", len(recs), want)
	}
	if _, err := n.Client.Get(context.Background(), p.Namespace, p.Name, api.Attachment{ContainerID: p.ContainerID, Interface: "eth0"}); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("coild holds an address for the failed pod: %v", err)
	}
	var links []string
	netnstest.Do(t, p.NS, func() error {
		all, err := netlink.LinkList()
		for _, l := range all {
			if l.Attrs().Name != "lo" {
				links = append(links, l.Attrs().Name)
			}
		}
		return err
	})
	if len(links) > 0 {
		t.Errorf("failed ADD left links %v in the pod", links)
	}
}

// coild reaches an etcd that demands TLS client certificates.
func TestEtcdTLS(t *testing.T) {
	secure, err := etcdtest.Start(etcdtest.Options{TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(secure.Close)
	sub, _ := model.ParseSubnet("10.77.0.0/24", "")
	n := env.NewNode(t, nodetest.Options{Etcd: secure, Pools: []model.Pool{{Name: "default", BlockSizeBits: 4, Subnets: []model.Subnet{sub}}}})
	resp, err := n.Client.Allocate(context.Background(), api.AllocRequest{PodNamespace: "default", PodName: "p", ContainerID: "c-tls"})
	if err != nil {
		t.Fatalf("allocate through coild over TLS Etcd: %v", err)
	}
	if !netip.MustParsePrefix("10.77.0.0/24").Contains(netip.MustParseAddr(resp.Address)) {
		t.Fatalf("got %s, want an address of 10.77.0.0/24", resp.Address)
	}
	// The record is really in the TLS etcd.
	info, err := n.Store.FindAddress(context.Background(), netip.MustParseAddr(resp.Address))
	if err != nil || info.Address == nil || info.Address.ContainerID != "c-tls" {
		t.Fatalf("record in Etcd: %+v, %v", info, err)
	}
}
