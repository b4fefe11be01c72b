package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/coild/ipam"
	"github.com/coil-project/coil/coild/server"
)

// The cluster's private network: a bridge in a fabric namespace and one
// address per member. It exists only inside namespaces this program
// creates, so it cannot collide with the host's or another run's.
const (
	fabricAddr       = "10.199.0.1/24"
	memberAddrFormat = "10.199.0.%d" // 11, 12, 13
	clusterMembers   = 3
	clusterPrefix    = "/coil-bench-cluster/"
)

// etcdCluster is a 3-member etcd cluster, each member a process in its own
// network namespace with a veth to a bridge in a fabric namespace. The
// bench creates its client sockets inside the fabric namespace, so
// nothing of the cluster touches the host's network.
type etcdCluster struct {
	fabric    ns.NetNS
	members   []*clusterMember
	endpoints []string
	// delay is the latency netem adds to what each member sends, 0 if
	// none was asked for or the machine cannot add it.
	delay time.Duration
}

// clusterMember is one etcd process of the cluster.
type clusterMember struct {
	name      string
	netns     ns.NetNS
	clientURL string
	logFile   string
	cmd       *exec.Cmd
	exited    chan struct{}
}

// startEtcdCluster builds the namespaces and starts the members, fsync on
// (etcd's default), data under tmp. With delay > 0 and tc installed, each
// member's interface delays what it sends by delay (netem), so a round
// trip between two members costs 2*delay. Everything is registered with
// the cleanup stack.
func startEtcdCluster(ctx context.Context, bin, tmp string, delay time.Duration, cl *cleanups) (*etcdCluster, error) {
	pid := strconv.Itoa(os.Getpid())
	c := &etcdCluster{}
	var err error
	if c.fabric, err = newNetns(ctx, netnsPrefix+pid+"-fabric", cl); err != nil {
		return nil, err
	}
	fabric := filepath.Base(c.fabric.Path())
	if err := ipCmds(ctx,
		[]string{"-n", fabric, "link", "set", "lo", "up"},
		[]string{"-n", fabric, "link", "add", "br0", "type", "bridge"},
		[]string{"-n", fabric, "addr", "add", fabricAddr, "dev", "br0"},
		[]string{"-n", fabric, "link", "set", "br0", "up"},
	); err != nil {
		return nil, fmt.Errorf("fabric namespace: %w", err)
	}
	if delay > 0 {
		if _, err := exec.LookPath("tc"); err != nil {
			logf("  -etcd-cluster-delay %v ignored: tc is not installed", delay)
			delay = 0
		}
	}

	var initial []string
	addrs := make([]string, clusterMembers)
	for i := range clusterMembers {
		addrs[i] = fmt.Sprintf(memberAddrFormat, 11+i)
		initial = append(initial, fmt.Sprintf("m%d=http://%s:2380", i+1, addrs[i]))
	}
	for i := range clusterMembers {
		m := &clusterMember{name: fmt.Sprintf("m%d", i+1), clientURL: "http://" + addrs[i] + ":2379", exited: make(chan struct{})}
		if m.netns, err = newNetns(ctx, netnsPrefix+pid+"-etcd-"+m.name, cl); err != nil {
			return nil, err
		}
		name := filepath.Base(m.netns.Path())
		// The veth is created in the fabric with its far end moved into
		// the member; deleting either namespace deletes the pair.
		port := "v" + m.name
		if err := ipCmds(ctx,
			[]string{"-n", name, "link", "set", "lo", "up"},
			[]string{"-n", fabric, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name},
			[]string{"-n", fabric, "link", "set", port, "master", "br0", "up"},
			[]string{"-n", name, "addr", "add", addrs[i] + "/24", "dev", "eth0"},
			[]string{"-n", name, "link", "set", "eth0", "up"},
		); err != nil {
			return nil, fmt.Errorf("member %s network: %w", m.name, err)
		}
		if delay > 0 {
			netem := []string{"-n", name, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", fmt.Sprintf("%dus", delay.Microseconds())}
			out, err := exec.CommandContext(ctx, "tc", netem...).CombinedOutput()
			switch {
			case err != nil && i == 0:
				// A kernel without sch_netem: measure without, and say so.
				logf("  -etcd-cluster-delay %v ignored: tc %s: %v: %s", delay, strings.Join(netem, " "), err, strings.TrimSpace(string(out)))
				delay = 0
			case err != nil:
				return nil, fmt.Errorf("tc %s: %v: %s", strings.Join(netem, " "), err, out)
			}
		}
		dir := filepath.Join(tmp, "etcd-cluster", m.name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		m.logFile = filepath.Join(dir, "etcd.log")
		if err := m.start(bin, name, dir, addrs[i], strings.Join(initial, ","), pid); err != nil {
			return nil, err
		}
		cl.add("stop etcd member "+m.name, m.stop)
		c.members = append(c.members, m)
		c.endpoints = append(c.endpoints, m.clientURL)
	}
	if err := c.waitReady(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	c.delay = delay
	return c, nil
}

// ipCmds runs `ip` with each argument list in turn.
func ipCmds(ctx context.Context, cmds ...[]string) error {
	for _, args := range cmds {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// start runs the member through `ip netns exec`, which execs etcd in
// place: the process id is etcd's, for CPU accounting and for the kill.
func (m *clusterMember) start(bin, netnsName, dir, addr, initial, token string) error {
	log, err := os.Create(m.logFile)
	if err != nil {
		return err
	}
	defer log.Close() // the child holds its own descriptor
	peer := "http://" + addr + ":2380"
	m.cmd = exec.Command("ip", "netns", "exec", netnsName, bin,
		"--name", m.name,
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", m.clientURL,
		"--advertise-client-urls", m.clientURL,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", initial,
		"--initial-cluster-token", "coil-bench-"+token,
		"--initial-cluster-state", "new",
		"--log-level", "warn",
	)
	m.cmd.Stdout, m.cmd.Stderr = log, log
	// Killed with the bench should it die without cleaning up.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		return fmt.Errorf("start etcd member %s: %w", m.name, err)
	}
	go func() {
		m.cmd.Wait()
		close(m.exited)
	}()
	return nil
}

// stop kills the member and waits for it; safe to call twice.
func (m *clusterMember) stop() error {
	select {
	case <-m.exited:
	default:
		m.cmd.Process.Kill()
		<-m.exited
	}
	return nil
}

func (m *clusterMember) pid() int { return m.cmd.Process.Pid }

func (m *clusterMember) logTail() string {
	data, _ := os.ReadFile(m.logFile)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return strings.Join(lines, "\n")
}

// dial opens a TCP connection from inside the fabric namespace: a socket
// belongs for good to the namespace of the thread that created it.
func (c *etcdCluster) dial(ctx context.Context, addr string) (net.Conn, error) {
	var conn net.Conn
	err := c.fabric.Do(func(ns.NetNS) error {
		var err error
		conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		return err
	})
	return conn, err
}

// client returns an etcd client of all three members, as coild is
// configured in a real cluster: its balancer spreads requests over them.
func (c *etcdCluster) client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   c.endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(c.dial)},
	})
}

// waitReady waits until every member answers and they agree on a leader.
func (c *etcdCluster) waitReady(ctx context.Context, timeout time.Duration) error {
	cli, err := c.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(timeout)
	for {
		_, err := c.leader(ctx, cli)
		if err == nil {
			return nil
		}
		for _, m := range c.members {
			select {
			case <-m.exited:
				return fmt.Errorf("etcd member %s exited at start-up:\n%s", m.name, m.logTail())
			default:
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd cluster not ready within %s: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// leader asks every member for its status and returns the member all of
// them name leader.
func (c *etcdCluster) leader(ctx context.Context, cli *clientv3.Client) (*clusterMember, error) {
	byID := map[uint64]*clusterMember{}
	var leader uint64
	for _, m := range c.members {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cli.Status(sctx, m.clientURL)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("status of %s: %w", m.name, err)
		}
		if st.Leader == 0 || (leader != 0 && st.Leader != leader) {
			return nil, fmt.Errorf("no agreed leader yet (%s sees %x)", m.name, st.Leader)
		}
		leader = st.Leader
		byID[st.Header.MemberId] = m
	}
	if m := byID[leader]; m != nil {
		return m, nil
	}
	return nil, fmt.Errorf("leader %x is not a member", leader)
}

// txnCounts returns how many Txn requests each member has answered, from
// its /metrics (the grpc_server_handled_total counter, all codes).
func (c *etcdCluster) txnCounts(ctx context.Context) ([]int64, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return c.dial(ctx, addr)
	}}, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	counts := make([]int64, len(c.members))
	for i, m := range c.members {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.clientURL+"/metrics", nil)
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("metrics of %s: %w", m.name, err)
		}
		counts[i], err = handledTxns(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("metrics of %s: %w", m.name, err)
		}
	}
	return counts, nil
}

// handledTxns sums grpc_server_handled_total over the codes of the KV
// service's Txn method in a Prometheus text exposition.
func handledTxns(r io.Reader) (int64, error) {
	var total int64
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "grpc_server_handled_total{") ||
			!strings.Contains(line, `grpc_method="Txn"`) || !strings.Contains(line, `grpc_service="etcdserverpb.KV"`) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("bad sample %q: %w", line, err)
		}
		total += int64(v)
	}
	return total, sc.Err()
}

// clusterCPU measures the CPU time of all members (summed) and of this
// process during a phase, in the cpuMeter the tables already format.
type clusterCPU struct {
	pids         []int
	etcd0, self0 time.Duration
}

func (c *etcdCluster) startCPU() *clusterCPU {
	m := &clusterCPU{self0: cpuTime(os.Getpid())}
	for _, mem := range c.members {
		m.pids = append(m.pids, mem.pid())
	}
	m.etcd0 = m.etcdTime()
	return m
}

func (m *clusterCPU) etcdTime() time.Duration {
	var t time.Duration
	for _, pid := range m.pids {
		t += cpuTime(pid)
	}
	return t
}

func (m *clusterCPU) stop() *cpuMeter {
	return &cpuMeter{etcdCPU: m.etcdTime() - m.etcd0, selfCPU: cpuTime(os.Getpid()) - m.self0}
}

// clusterResults is part 1d: the allocation phases against the cluster.
type clusterResults struct {
	clients                 []int
	rawCreate, coildAlloc   []phaseResult
	rawDelete, coildRelease []phaseResult
	allocKV                 []kvCounts
	leader                  string
	txnShare                []float64 // of each member, over the whole run
	memberCPU               []time.Duration
	delay                   time.Duration
	version                 string
	members                 []string
}

// runAllocClusterBench runs part 1's raw etcd and coild phases against a
// 3-member cluster, at the levels given, in alternating rounds.
func runAllocClusterBench(ctx context.Context, o *options, tmp string, cl *cleanups, res *results) error {
	logf("part 1d: allocation on a 3-member etcd cluster (phases of %v, clients %v, %d rounds)", o.clusterPhase, o.clusterClients, o.rounds)
	c, err := startEtcdCluster(ctx, o.etcdBin, tmp, o.clusterDelay, cl)
	if err != nil {
		return fmt.Errorf("start etcd cluster: %w", err)
	}
	cli, err := c.client()
	if err != nil {
		return err
	}
	defer cli.Close()
	cr := &clusterResults{clients: o.clusterClients, delay: c.delay}
	res.allocCluster = cr
	for _, m := range c.members {
		cr.members = append(cr.members, m.name)
	}

	var value string
	if res.alloc != nil {
		value = strings.Repeat("x", res.alloc.valueLength)
	} else {
		value = strings.Repeat("x", 229)
	}

	kv := newCountingKV(cli.KV, clusterPrefix)
	alloc, err := benchAllocator(ctx, kv, clusterPrefix, poolSubnetFor(int(2*refRaw16*o.clusterPhase.Seconds())*o.rounds+1<<16, "10.64.0.0"), o.blockBits)
	if err != nil {
		return err
	}
	sock := filepath.Join(tmp, "coild-cluster.sock")
	if err := serveREST(alloc, sock, cl); err != nil {
		return err
	}
	// ensureBlocks keeps its fill statistics here; part 1c reports the
	// single member's.
	fills := &allocResults{blockSize: 1 << o.blockBits}

	txn0, err := c.txnCounts(ctx)
	if err != nil {
		return err
	}
	cpu0 := make([]time.Duration, len(c.members))
	for i, m := range c.members {
		cpu0[i] = cpuTime(m.pid())
	}
	phase := 0
	for _, n := range o.clusterClients {
		clients := make([]*api.Client, n)
		for i := range clients {
			if clients[i], err = api.NewClient("unix://"+sock, api.WithTimeout(30*time.Second)); err != nil {
				return err
			}
		}
		var rawC, rawD, coC, coD []phaseResult
		var allocKV kvCounts
		maxOps := 0
		for round := range o.rounds {
			for side := range 2 {
				if err := compact(ctx, cli); err != nil {
					return err
				}
				if (side+round)%2 == 0 {
					m := c.startCPU()
					created, create, err := rawCreatePhase(ctx, cli, n, phase, o.clusterPhase, value, nil)
					if err != nil {
						return fmt.Errorf("cluster raw create, %d clients: %w", n, err)
					}
					create.cpu = m.stop()
					m = c.startCPU()
					del, err := rawDeletePhase(ctx, cli, created)
					if err != nil {
						return fmt.Errorf("cluster raw delete, %d clients: %w", n, err)
					}
					del.cpu = m.stop()
					rawC, rawD = append(rawC, create), append(rawD, del)
					maxOps = max(maxOps, create.ops)
				} else {
					// The node owns its blocks before the phase, as in
					// part 1: twice what either side did at this level
					// so far (blocks are cheap; a block taken during the
					// phase would cost 3 requests), or half part 1's
					// reference rate before anything ran here.
					need := 2 * maxOps
					if need == 0 {
						need = int(refRaw16*o.clusterPhase.Seconds()) / 2
					}
					if err := ensureBlocks(ctx, alloc, kv, need, fills); err != nil {
						return err
					}
					before := kv.snapshot()
					m := c.startCPU()
					owned, a, err := coildAllocPhase(ctx, clients, phase, o.clusterPhase)
					if err != nil {
						return fmt.Errorf("cluster coild POST /ip, %d clients: %w", n, err)
					}
					a.cpu = m.stop()
					allocKV = allocKV.add(kv.snapshot().sub(before))
					m = c.startCPU()
					r, err := coildReleasePhase(ctx, clients, owned)
					if err != nil {
						return fmt.Errorf("cluster coild DELETE /ip, %d clients: %w", n, err)
					}
					r.cpu = m.stop()
					coC, coD = append(coC, a), append(coD, r)
					maxOps = max(maxOps, a.ops)
				}
				phase++
			}
		}
		create, del, a, r := mergePhases(rawC), mergePhases(rawD), mergePhases(coC), mergePhases(coD)
		cr.rawCreate = append(cr.rawCreate, create)
		cr.rawDelete = append(cr.rawDelete, del)
		cr.coildAlloc = append(cr.coildAlloc, a)
		cr.coildRelease = append(cr.coildRelease, r)
		cr.allocKV = append(cr.allocKV, allocKV)
		logf("  %2d clients: raw create %s p50 %s p99 %s | coild POST %s p50 %s p99 %s (%.3f etcd req/alloc) | delete raw %s coild %s | etcd CPU/op raw %s coild %s",
			n, fmtRate(create.rate()), fmtDur(create.p50), fmtDur(create.p99),
			fmtRate(a.rate()), fmtDur(a.p50), fmtDur(a.p99), float64(allocKV.requests)/float64(max(a.ops, 1)),
			fmtRate(del.rate()), fmtRate(r.rate()), create.cpu.perOp(create.ops), a.cpu.perOp(a.ops))
	}

	txn1, err := c.txnCounts(ctx)
	if err != nil {
		return err
	}
	var total int64
	for i := range txn1 {
		total += txn1[i] - txn0[i]
	}
	for i, m := range c.members {
		cr.txnShare = append(cr.txnShare, float64(txn1[i]-txn0[i])/float64(max(total, 1)))
		cr.memberCPU = append(cr.memberCPU, cpuTime(m.pid())-cpu0[i])
	}
	leader, err := c.leader(ctx, cli)
	if err != nil {
		return err
	}
	cr.leader = leader.name
	st0, err := cli.Status(ctx, leader.clientURL)
	if err != nil {
		return err
	}
	cr.version = st0.Version
	return nil
}

// serveREST serves coild's REST handler over alloc on a unix socket,
// configured as in part 1; the cleanup stack closes it.
func serveREST(alloc *ipam.Allocator, sock string, cl *cleanups) error {
	srv := server.New(server.Config{
		Allocator:      alloc,
		Selector:       fixedPool{},
		RequestTimeout: 10 * time.Second,
		Registry:       prometheus.NewRegistry(),
		Logger:         slog.New(slog.DiscardHandler),
	})
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	cl.add("stop REST server "+filepath.Base(sock), func() error {
		if err := hs.Close(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	return nil
}

// clusterTable is table 1d, beside part 1's single member when it ran.
func (r *results) clusterTable() (table, bool) {
	cr := r.allocCluster
	if cr == nil || len(cr.rawCreate) == 0 {
		return table{}, false
	}
	single := func(ps []phaseResult, clients int) (phaseResult, bool) {
		for _, p := range ps {
			if p.clients == clients {
				return p, true
			}
		}
		return phaseResult{}, false
	}
	vs := func(got phaseResult, ps []phaseResult) string {
		ref, ok := single(ps, got.clients)
		if !ok {
			return "n/a"
		}
		return fmtRatio(got.rate() / ref.rate())
	}
	etcdPerOp := func(p phaseResult) string {
		if p.cpu == nil || p.ops == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%d µs", p.cpu.etcdCPU.Microseconds()/int64(p.ops))
	}
	t := table{id: "alloc-cluster", title: "1d. Allocation on a 3-member etcd cluster",
		header: []string{"clients", "raw etcd ops/s", "raw p50", "raw p99", "coild ops/s", "coild p50", "coild p99", "coild/raw",
			"raw vs 1 member", "coild vs 1 member", "etcd req/alloc", "raw etcd CPU/op (3 members)", "coild etcd CPU/op (3 members)", "raw etcd CPU/op (1 member)"}}
	for i, raw := range cr.rawCreate {
		c := cr.coildAlloc[i]
		one := "n/a"
		if p, ok := single(r.alloc.rawCreateOrNil(), raw.clients); ok {
			one = etcdPerOp(p)
		}
		t.rows = append(t.rows, []string{fmt.Sprint(raw.clients), fmtRate(raw.rate()), fmtDur(raw.p50), fmtDur(raw.p99),
			fmtRate(c.rate()), fmtDur(c.p50), fmtDur(c.p99), fmtRatio(c.rate() / raw.rate()),
			vs(raw, r.alloc.rawCreateOrNil()), vs(c, r.alloc.coildAllocOrNil()),
			fmt.Sprintf("%.3f", float64(cr.allocKV[i].requests)/float64(max(c.ops, 1))), etcdPerOp(raw), etcdPerOp(c), one})
	}
	var shares, cpus []string
	for i, name := range cr.members {
		mark := ""
		if name == cr.leader {
			mark = " (leader)"
		}
		shares = append(shares, fmt.Sprintf("%s%s %.0f%%", name, mark, cr.txnShare[i]*100))
		cpus = append(cpus, fmt.Sprintf("%s %s", name, fmtSeconds(cr.memberCPU[i])))
	}
	delay := "no added latency between members (the veths' own, some µs)"
	if cr.delay > 0 {
		delay = fmt.Sprintf("tc netem delaying every packet a member sends by %v (a round trip between members or to a client costs %v more)", cr.delay, 2*cr.delay)
	}
	t.note = fmt.Sprintf("The same etcd binary (%s) as 3 members, each a process in its own network namespace, joined by veths to a bridge in "+
		"a fabric namespace, peer and client URLs on 10.199.0.0/24, fsync on (each member syncs its own WAL, all on this machine's one disk), %s. "+
		"Both sides use one etcd client of all three endpoints, as coild is configured in a real cluster; its balancer sends each request "+
		"to the next member round robin, and a follower forwards a write to the leader. Leader: %s. Share of the Txn requests each member "+
		"answered: %s. Each level runs %d rounds of %v per side, raw (If CreateRevision(key)==0 Then Put) and coild (POST /ip, the node owning "+
		"its blocks) alternating; \"vs 1 member\" divides by part 1's figure at the same level in this run (measured in the minutes before, so the machine's load may differ between the two). etcd CPU/op: CPU time of the "+
		"three members summed, per operation (the Raft cost: the leader's and the followers' appends, fsyncs and applies), beside part 1's "+
		"single member; member CPU over the whole part: %s. All members and the clients share the machine's %d cores.",
		cr.version, delay, cr.leader, strings.Join(shares, ", "), r.opts.rounds, r.opts.clusterPhase, strings.Join(cpus, ", "), r.machine.cpus)
	return t, true
}

// rawCreateOrNil and coildAllocOrNil let table 1d read part 1's figures
// whether or not part 1 ran.
func (a *allocResults) rawCreateOrNil() []phaseResult {
	if a == nil {
		return nil
	}
	return a.rawCreate
}

func (a *allocResults) coildAllocOrNil() []phaseResult {
	if a == nil {
		return nil
	}
	return a.coildAlloc
}
