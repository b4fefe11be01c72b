package soak

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coil-project/coil/mtest"
	"github.com/coil-project/coil/nodenet"
)

func TestMain(m *testing.M) {
	if os.Getuid() != 0 {
		fmt.Fprintln(os.Stderr, "the soak needs root: it builds the cluster out of network namespaces")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestSoak is the short soak of `make mtest`: a few hundred lifecycles,
// every fault kind at least once, a fixed seed. COIL_SOAK_LIFECYCLES and
// COIL_SOAK_SEED change them.
func TestSoak(t *testing.T) {
	cfg := Config{
		Seed:          18,
		Lifecycles:    300,
		Workers:       8,
		SmallWorkers:  3,
		FaultGapMin:   2 * time.Second,
		FaultGapMax:   6 * time.Second,
		CheckInterval: 3 * time.Second,
		Log:           testLog{t},
	}
	if v, err := strconv.Atoi(os.Getenv("COIL_SOAK_LIFECYCLES")); err == nil {
		cfg.Lifecycles = v
	}
	if v, err := strconv.ParseUint(os.Getenv("COIL_SOAK_SEED"), 10, 64); err == nil {
		cfg.Seed = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if res != nil {
		t.Logf("report:\n%s", res.Markdown(fmt.Sprintf("COIL_SOAK_SEED=%d COIL_SOAK_LIFECYCLES=%d go test -count=1 -run TestSoak -v ./mtest/soak/", cfg.Seed, cfg.Lifecycles)))
	}
	if err != nil {
		t.Fatalf("soak with seed %d: %v", cfg.Seed, err)
	}
	for _, k := range AllFaults {
		if res.Faults[k] == 0 {
			t.Errorf("fault %q was never injected", k)
		}
	}
	if res.Incomplete > 0 {
		t.Errorf("%d lifecycles did not complete", res.Incomplete)
	}
	if res.Lifecycles < cfg.Lifecycles {
		t.Errorf("%d lifecycles, want %d", res.Lifecycles, cfg.Lifecycles)
	}
}

// TestCheckersDetect plants each kind of violation in a small live cluster
// and checks that the checkers report it, and nothing before it.
func TestCheckersDetect(t *testing.T) {
	ctx := context.Background()
	c, err := mtest.NewCluster(ctx, mtest.Options{Nodes: 2, FlatL2: true})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("coild log of %s:\n%s", n.Name, n.CoildLog())
			}
		}
		c.Close()
	}()
	if out, err := c.Coilctl("pool", "create", "default", "10.170.0.0/16", "5", "--ipv6", "fd00:10:170::/112"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	ck := &Checker{C: c, Prefix: "/coil/"}
	reg := &registry{pods: map[string]*tracked{}}
	var live []*mtest.Pod
	for _, n := range c.Nodes {
		p, err := n.StartPod(ctx, "default", "p-"+n.Name)
		if err != nil {
			t.Fatal(err)
		}
		live = append(live, p)
		reg.add(p)
	}
	a, b := live[0], live[1]
	check := func(t *testing.T, want string) []Violation {
		t.Helper()
		vs, err := ck.CheckLive(reg.stable, reg.read)
		if err != nil {
			t.Fatal(err)
		}
		ovs, err := ck.CheckOrphans(live)
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, ovs...)
		if want == "" && len(vs) > 0 {
			t.Fatalf("violations in a clean cluster: %v", vs)
		}
		if want != "" && !slices.ContainsFunc(vs, func(v Violation) bool { return v.Kind == want }) {
			t.Fatalf("planted %q, the checkers found %v", want, vs)
		}
		for _, v := range vs {
			t.Logf("found %s", v)
		}
		return vs
	}
	// Freshly started pods: the node may still be exporting the block.
	if _, err := waitClean(timeout(t, 30*time.Second), func() ([]Violation, error) {
		vs, err := ck.CheckOrphans(live)
		return vs, err
	}); err != nil {
		t.Fatal(err)
	}
	check(t, "")

	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	t.Run("two pods with one address", func(t *testing.T) {
		sh("ip", "-n", b.NetNS, "addr", "add", a.IPv4().String()+"/32", "dev", "eth0")
		vs := check(t, VDuplicate)
		if !slices.ContainsFunc(vs, func(v Violation) bool { return v.Kind == VUnrecorded }) {
			t.Errorf("b's second address has a record of a: want %q too", VUnrecorded)
		}
		sh("ip", "-n", b.NetNS, "addr", "del", a.IPv4().String()+"/32", "dev", "eth0")
		check(t, "")
	})
	t.Run("a pod's address lost", func(t *testing.T) {
		sh("ip", "-n", b.NetNS, "addr", "del", b.IPv6().String()+"/128", "dev", "eth0")
		check(t, VLost)
		sh("ip", "-n", b.NetNS, "addr", "add", b.IPv6().String()+"/128", "dev", "eth0", "nodad")
	})
	t.Run("a record without a pod", func(t *testing.T) {
		key := "/coil/addresses/default/0/400/3"
		rec := `{"pool":"default","subnet":0,"block":400,"offset":3,"ipv4":"10.170.50.3","node":"node1","namespace":"default","pod":"gone","containerID":"cnitool-0000"}`
		if out, err := c.Etcdctl("put", key, rec); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		check(t, VOrphanRecord)
		if out, err := c.Etcdctl("del", key); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	})
	t.Run("a record naming another pod", func(t *testing.T) {
		// The record of a's address rewritten for a pod that is gone, as a
		// wrong reclaim and reuse would leave it.
		recs, err := ck.Records()
		if err != nil {
			t.Fatal(err)
		}
		var key, val string
		for _, r := range recs {
			if r.ContainerID == a.ContainerID {
				key = r.Key
			}
		}
		if val, err = c.Etcdctl("get", "--print-value-only", key); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Etcdctl("put", key, strings.Replace(strings.TrimSpace(val), a.ContainerID, "cnitool-other", 1)); err != nil {
			t.Fatal(err)
		}
		check(t, VUnrecorded)
		if _, err := c.Etcdctl("put", key, strings.TrimSpace(val)); err != nil {
			t.Fatal(err)
		}
	})

	// coild re-syncs its routes; stop it on node2 so that what is planted
	// there stays put. The checker notices that too.
	n := c.Nodes[1]
	n.KillCoild()
	t.Run("a coild exit", func(t *testing.T) {
		if n.CoildRunning() {
			t.Fatal("coild still runs after SIGKILL")
		}
		s := &soak{c: c, ck: ck, reg: reg, nodeMu: make([]sync.Mutex, 2), expected: make([]bool, 2), log: t.Logf}
		s.res.Faults = map[string]int{}
		s.checkOnce(ctx)
		if !slices.ContainsFunc(s.res.Violations, func(v Violation) bool { return v.Kind == VCoildExit }) {
			t.Fatalf("coild killed behind the soak's back, the check found %v", s.res.Violations)
		}
		// checkOnce restarted it, as a DaemonSet would: stop it again.
		n.KillCoild()
	})
	t.Run("a stale table-119 route", func(t *testing.T) {
		sh("ip", "-n", n.NetNS, "route", "add", "10.170.99.0/27", "dev", "lo", "table", "119", "proto", "30")
		check(t, VStaleExport)
		sh("ip", "-n", n.NetNS, "route", "del", "10.170.99.0/27", "dev", "lo", "table", "119", "proto", "30")
	})
	t.Run("a leftover veth and its host route", func(t *testing.T) {
		veth := nodenet.HostVethName("default", "gone")
		sh("ip", "-n", n.NetNS, "link", "add", veth, "type", "veth", "peer", "name", "gone-peer")
		sh("ip", "-n", n.NetNS, "link", "set", veth, "up")
		sh("ip", "-n", n.NetNS, "route", "add", "10.170.60.7/32", "dev", veth)
		check(t, VOrphanVeth)
		check(t, VOrphanHostRoute)
		sh("ip", "-n", n.NetNS, "link", "del", veth)
	})
	t.Run("an empty block", func(t *testing.T) {
		key := "/coil/blocks/default/0/401"
		blk := `{"pool":"default","subnet":0,"index":401,"ipv4":"10.170.50.32/27","ipv6":"fd00:10:170::3220/123","node":"node2"}`
		if _, err := c.Etcdctl("put", key, blk); err != nil {
			t.Fatal(err)
		}
		vs := check(t, VOrphanBlock)
		if !slices.ContainsFunc(vs, func(v Violation) bool { return v.Kind == VMissingExport }) {
			t.Errorf("block of node2 not in its table 119: want %q too", VMissingExport)
		}
		if _, err := c.Etcdctl("del", key); err != nil {
			t.Fatal(err)
		}
	})
	check(t, "")
}

func timeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		err       error
		cause     string
		retryable bool
	}{
		{&mtest.CNIError{Code: 11, Msg: "coil: allocate: coild is unreachable, try again later"}, "CNI 11: coild unreachable", true},
		{&mtest.CNIError{Code: 100, Msg: "pool exhausted: allocate: soak-small"}, "CNI 100: pool exhausted", true},
		{&mtest.CNIError{Code: 999, Msg: "coil: allocate: boom"}, "CNI 999: coil: allocate: boom", false},
		// cnitool's output, which has the message but not the code.
		{errors.New("cnitool add exited 1: Error: plugin type=\"coil\" failed (add): coil: allocate address for pod a/b from coild at unix:///x: try again later: coild is restoring its state and not ready yet\nUsage:"), "CNI 11: coild restoring its state", true},
		{errors.New("Error: plugin type=\"coil\" failed (add): coil: allocate ...: try again later: allocate ...: commit: outcome of the write unknown: etcd unavailable: rpc error"), "CNI 11: etcd write outcome unknown", true},
		{errors.New("Error: plugin type=\"coil\" failed (del): coil: release ...: try again later: etcd unavailable"), "CNI 11: etcd unavailable", true},
		{errors.New("Error: plugin type=\"coil\" failed (delete): coil: release ...: try again later: release address of container x: allocator state not restored from etcd yet"), "CNI 11: coild restoring its state", true},
		{errors.New("Error: plugin type=\"coil\" failed (add): pool exhausted: allocate address for pod a/b: all 4 blocks of pool \"s\" are owned"), "CNI 100: pool exhausted", true},
		{errors.New("Error: plugin type=\"tuning\" failed (add): sysctl: no such file"), "not retryable: sysctl: no such file", false},
		{errors.New("exit status 1"), "not retryable: exit status 1", false},
		// A long message: the cause is at its end.
		{errors.New("Error: plugin type=\"coil\" failed (add): coil: allocate address for pod soak-default/l00142 (container cnitool-2b855cfe943d1add961e, eth0) from coild at unix:///tmp/coil-mtest-4115861489/node1/coild.sock: coild is unreachable, try again later; coild unreachable: POST /ip"), "CNI 11: coild unreachable", true},
	} {
		cause, ok := classify(tc.err)
		if cause != tc.cause || ok != tc.retryable {
			t.Errorf("classify(%v) = %q, %v, want %q, %v", tc.err, cause, ok, tc.cause, tc.retryable)
		}
	}
}
