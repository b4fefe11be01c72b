// Package soak is Coil's chaos soak: pod lifecycles from concurrent
// workers on a multi-node mtest cluster while faults are injected at times
// drawn from a printed seed, with invariants on addresses, records, blocks,
// routes and links checked the whole time and at the end. `make soak` runs
// the full soak (mtest/soak/run), `make mtest` a short one (TestSoak).
// docs/reliability.md describes it and holds the last full report.
package soak

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coil-project/coil/mtest"
	"github.com/coil-project/coil/nodenet"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Fault kinds.
const (
	FCoildKill        = "SIGKILL of a node's coild"
	FEtcdMember       = "restart of an etcd member (follower)"
	FEtcdLeader       = "restart of the etcd leader"
	FEtcdCut          = "node cut from etcd 10-30 s"
	FControllerLeader = "SIGKILL of the coil-controller leader"
	FNodeObject       = "Node object of a live node deleted and re-created"
	FSkipDel          = "pod's DEL skipped (left for the leak sweep)"
	FVethGone         = "coild restarted with a pod's veth gone"
)

// AllFaults lists every fault kind, in the report's order.
var AllFaults = []string{FCoildKill, FEtcdMember, FEtcdLeader, FEtcdCut, FControllerLeader, FNodeObject, FSkipDel, FVethGone}

// Config shapes a soak.
type Config struct {
	// Seed draws the fault schedule and the workers' choices.
	Seed uint64
	// Lifecycles is how many pod lifecycles to run (at least; the soak
	// goes on until every fault kind has been injected once).
	Lifecycles int
	// Workers run lifecycles concurrently; the first SmallWorkers use the
	// small pool.
	Workers, SmallWorkers int
	// FaultGapMin, FaultGapMax bound the quiet time between two faults.
	FaultGapMin, FaultGapMax time.Duration
	// CheckInterval is the period of the continuous checks.
	CheckInterval time.Duration
	// Log receives progress lines.
	Log io.Writer
}

// Result is what a soak measured.
type Result struct {
	Config   Config
	Started  time.Time
	Duration time.Duration
	// Lifecycles counts the completed lifecycles, Incomplete those that
	// failed (each also a violation, or an API error logged).
	Lifecycles, Incomplete int
	Faults                 map[string]int
	// FaultLog is one line per injected fault.
	FaultLog   []string
	Violations []Violation
	// AddFailures and DelFailures count failed attempts by cause.
	AddFailures, DelFailures map[string]int
	// FailureSamples holds one message of each cause.
	FailureSamples map[string]string
	// Add and Del are the durations of successful attempts, split by
	// whether a fault was in progress.
	Add, Del        Latencies
	TrafficFailures []string
	// EtcdRequests counts etcd's unary requests by method during the
	// lifecycles, the checker's own reads left out.
	EtcdRequests map[string]float64
	// ControllerExits counts coil-controller replicas that exited on their own.
	ControllerExits int
	ChecksRun       int
}

// Latencies are durations with and without faults in progress.
type Latencies struct {
	Clean, Faulted []time.Duration
}

// Pool names and the namespaces that use them.
const (
	nsDefault = "soak-default"
	nsSmall   = "soak-small"
	nsAnchor  = "soak-anchor"
	poolSmall = "soak-small"
)

// Grace periods of the cluster's components (short, so that leaks are
// reclaimed and empty blocks return within the soak).
var (
	controllerArgs = []string{"--scan-interval", "2s", "--leak-grace", "6s", "--node-recheck-interval", "1s"}
	coildArgs      = []string{"--block-release-grace", "2s"}
)

// retryFor bounds the kubelet-like retries of one ADD or DEL: the longest
// fault (a 30 s cut from etcd) plus the leak sweep and block release that
// refill the small pool.
const retryFor = 3 * time.Minute

type soak struct {
	cfg Config
	c   *mtest.Cluster
	ck  *Checker
	log func(format string, args ...any)

	anchors []*mtest.Pod

	mu     sync.Mutex
	res    Result
	faults []window // in progress: end is zero
	// mandatory is how many fault kinds have not been injected yet.
	mandatory atomic.Int32
	next      atomic.Int64
	done      atomic.Int64

	reg *registry

	// nodeMu guards a node's coild against being swapped while it is
	// looked at; expected says the soak stopped it on purpose.
	nodeMu   []sync.Mutex
	expected []bool

	// podFaults hands a fault that needs a live pod to the next worker
	// about to delete one.
	podFaults chan podFault

	etcd etcdCounter
	// gone holds when each deleted pod's container went, and reported
	// the containers whose records outlived them already reported.
	goneMu   sync.Mutex
	gone     map[string]time.Time
	reported map[string]bool
	// ctlMu is held while the soak kills and restarts a controller
	// replica, so that the watch on the replicas sees neither half.
	ctlMu sync.Mutex
}

type window struct{ start, end time.Time }

type podFault struct {
	kind string
	do   func(p *mtest.Pod) error
	done chan error
}

// registry holds the pods alive for the checker.
type registry struct {
	mu   sync.Mutex
	gen  uint64
	pods map[string]*tracked
}

type tracked struct {
	mu  sync.RWMutex // held for writing while the pod leaves the stable set
	s   Stable
	has bool
}

func (r *registry) add(p *mtest.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen++
	r.pods[p.NetNS] = &tracked{s: Stable{Pod: p, Gen: r.gen}, has: true}
}

// remove takes the pod out of the stable set, waiting for a read of its
// namespace in progress.
func (r *registry) remove(p *mtest.Pod) {
	r.mu.Lock()
	t := r.pods[p.NetNS]
	delete(r.pods, p.NetNS)
	r.mu.Unlock()
	if t != nil {
		t.mu.Lock()
		t.has = false
		t.mu.Unlock()
	}
}

func (r *registry) stable() map[string]Stable {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]Stable, len(r.pods))
	for k, t := range r.pods {
		out[k] = t.s
	}
	return out
}

func (r *registry) read(netns string, f func()) {
	r.mu.Lock()
	t := r.pods[netns]
	r.mu.Unlock()
	if t == nil {
		return
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.has {
		f()
	}
}

func (r *registry) live() []*mtest.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*mtest.Pod
	for _, t := range r.pods {
		out = append(out, t.s.Pod)
	}
	return out
}

// Options is the cluster a soak runs on.
func Options() mtest.Options {
	return mtest.Options{Nodes: 3, EtcdMembers: 3, FlatL2: true, Controller: true, ControllerReplicas: 2,
		ControllerArgs: controllerArgs, CoildArgs: coildArgs}
}

// Run starts a cluster of Options and soaks it.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	c, err := mtest.NewCluster(ctx, Options())
	if err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	defer c.Close()
	res, err := RunOn(ctx, c, cfg)
	if err != nil && res != nil && len(res.Violations) > 0 {
		for _, n := range c.Nodes {
			fmt.Fprintf(cfg.Log, "coild log of %s:\n%s\n", n.Name, n.CoildLog())
		}
	}
	return res, err
}

// RunOn soaks a cluster of Options.
func RunOn(ctx context.Context, c *mtest.Cluster, cfg Config) (*Result, error) {
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	s := &soak{
		cfg:       cfg,
		c:         c,
		ck:        &Checker{C: c, Prefix: "/coil/"},
		reg:       &registry{pods: map[string]*tracked{}},
		nodeMu:    make([]sync.Mutex, len(c.Nodes)),
		expected:  make([]bool, len(c.Nodes)),
		podFaults: make(chan podFault),
		gone:      map[string]time.Time{},
		reported:  map[string]bool{},
	}
	s.log = func(format string, args ...any) {
		fmt.Fprintf(cfg.Log, "%s "+format+"\n", append([]any{time.Now().UTC().Format("15:04:05")}, args...)...)
	}
	s.res = Result{Config: cfg, Faults: map[string]int{}, AddFailures: map[string]int{}, DelFailures: map[string]int{}, FailureSamples: map[string]string{}}
	s.mandatory.Store(int32(len(AllFaults)))
	s.log("soak seed %d: %d lifecycles, %d workers (%d on the small pool)", cfg.Seed, cfg.Lifecycles, cfg.Workers, cfg.SmallWorkers)
	if err := s.setup(ctx); err != nil {
		return nil, err
	}
	if err := s.etcd.sample(ctx, c); err != nil {
		return nil, fmt.Errorf("etcd metrics: %w", err)
	}
	s.etcd.reset()
	readsBefore := s.ck.EtcdReads()

	s.res.Started = time.Now()
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	var wg sync.WaitGroup
	injectorDone := make(chan struct{})
	go func() {
		defer close(injectorDone)
		s.inject(runCtx)
	}()
	checkerDone := make(chan struct{})
	checkCtx, stopCheck := context.WithCancel(ctx)
	go func() {
		defer close(checkerDone)
		s.checkLoop(checkCtx)
	}()
	for w := range cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.work(runCtx, w)
		}()
	}
	wg.Wait()
	stopRun()
	<-injectorDone
	s.res.Duration = time.Since(s.res.Started)
	s.res.Lifecycles = int(s.done.Load())
	s.log("%d lifecycles in %s; waiting for the grace periods", s.res.Lifecycles, s.res.Duration.Round(time.Second))
	// The last continuous check, then the counts of the run.
	stopCheck()
	<-checkerDone
	s.checkOnce(ctx)
	if err := s.etcd.sample(ctx, c); err == nil {
		s.res.EtcdRequests = s.etcd.unary(s.ck.EtcdReads() - readsBefore)
	}

	// At the end only the anchors live: wait out leak grace, block
	// release grace and house-keeping, then nothing may be left.
	endCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	vs, err := waitClean(endCtx, func() ([]Violation, error) { return s.ck.CheckOrphans(s.anchors) })
	if err != nil {
		return &s.res, fmt.Errorf("final check: %w", err)
	}
	s.violate(vs...)
	if vs, err := s.ck.CheckLive(s.reg.stable, s.reg.read); err == nil {
		s.violate(vs...)
	}
	if n := len(s.res.Violations); n > 0 {
		return &s.res, fmt.Errorf("%d invariant violations", n)
	}
	return &s.res, nil
}

// setup creates the pools, the namespaces and one anchor pod per node,
// the destination of every lifecycle's traffic.
func (s *soak) setup(ctx context.Context) error {
	for _, args := range [][]string{
		{"pool", "create", "default", "10.160.0.0/16", "5", "--ipv6", "fd00:10:160::/112"},
		// 8 addresses in blocks of 2 for three nodes and the small
		// pool's workers: exhausted, then refilled by releases.
		{"pool", "create", poolSmall, "10.161.0.0/29", "1"},
	} {
		if out, err := s.c.Coilctl(args...); err != nil {
			return fmt.Errorf("coilctl %v: %w: %s", args, err, out)
		}
	}
	if err := s.c.CreateNamespace(ctx, nsSmall, map[string]string{"coil.cybozu.com/pool": poolSmall}); err != nil {
		return err
	}
	for _, ns := range []string{nsDefault, nsAnchor} {
		if err := s.c.CreateNamespace(ctx, ns, nil); err != nil {
			return err
		}
	}
	for _, n := range s.c.Nodes {
		p, err := n.StartPod(ctx, nsAnchor, "anchor-"+n.Name)
		if err != nil {
			return fmt.Errorf("anchor pod: %w", err)
		}
		s.anchors = append(s.anchors, p)
		s.reg.add(p)
	}
	return nil
}

func (s *soak) violate(vs ...Violation) {
	if len(vs) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range vs {
		s.log("VIOLATION %s", v)
		s.res.Violations = append(s.res.Violations, v)
	}
}

// faulted reports whether a fault was in progress at any time in [from, to].
func (s *soak) faulted(from, to time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, w := range s.faults {
		end := w.end
		if end.IsZero() {
			// In progress.
			end = to
		}
		if !w.start.After(to) && !end.Before(from) {
			return true
		}
	}
	return false
}

func (s *soak) observe(op string, from time.Time, err error) {
	to := time.Now()
	f := s.faulted(from, to)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		cause, _ := classify(err)
		if _, ok := s.res.FailureSamples[op+" "+cause]; !ok {
			// The cause is at the end of the message.
			msg := pluginText(err.Error())
			if len(msg) > 240 {
				msg = "..." + msg[len(msg)-240:]
			}
			s.res.FailureSamples[op+" "+cause] = msg
		}
		if op == "ADD" {
			s.res.AddFailures[cause]++
		} else {
			s.res.DelFailures[cause]++
		}
		return
	}
	l := &s.res.Add
	if op == "DEL" {
		l = &s.res.Del
	}
	if f {
		l.Faulted = append(l.Faulted, to.Sub(from))
	} else {
		l.Clean = append(l.Clean, to.Sub(from))
	}
}

// work runs lifecycles until the target is met and every fault kind has
// been injected.
func (s *soak) work(ctx context.Context, w int) {
	rng := rand.New(rand.NewPCG(s.cfg.Seed, uint64(w)+1))
	for ctx.Err() == nil {
		i := s.next.Add(1) - 1
		if int(i) >= s.cfg.Lifecycles && s.mandatory.Load() <= 0 {
			return
		}
		ns := nsDefault
		if w < s.cfg.SmallWorkers {
			ns = nsSmall
		}
		node := rng.IntN(len(s.c.Nodes))
		if err := s.lifecycle(ctx, int(i), ns, node); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log("lifecycle %d: %v", i, err)
			s.mu.Lock()
			s.res.Incomplete++
			s.mu.Unlock()
			continue
		}
		if d := s.done.Add(1); d%500 == 0 {
			s.log("%d lifecycles", d)
		}
	}
}

// lifecycle is one pod's life, as a kubelet lives it: the Pod object, CNI
// ADD (retried with a DEL first, like a failed sandbox), traffic to a pod
// on another node, CNI DEL (retried), the Pod object deleted.
func (s *soak) lifecycle(ctx context.Context, i int, ns string, node int) error {
	n := s.c.Nodes[node]
	name := fmt.Sprintf("l%05d", i)
	var p *mtest.Pod
	if err := retry(ctx, 30*time.Second, func() (err error) {
		p, err = n.NewPod(ctx, ns, name)
		return err
	}); err != nil {
		return fmt.Errorf("create pod %s/%s: %w", ns, name, err)
	}
	added := false
	var nonRetryable error
	err := retry(ctx, retryFor, func() error {
		t0 := time.Now()
		err := p.Add()
		s.observe("ADD", t0, err)
		if err == nil {
			return nil
		}
		if cause, ok := classify(err); !ok && nonRetryable == nil {
			nonRetryable = errors.New(cause)
		}
		// A kubelet tears a failed sandbox down before the next try.
		_ = p.Del()
		return err
	})
	if nonRetryable != nil {
		s.violate(Violation{VAddFailure, fmt.Sprintf("%s/%s on %s: %v", ns, name, n.Name, nonRetryable)})
	}
	if err != nil {
		if ctx.Err() == nil {
			s.violate(Violation{VNeverAdded, fmt.Sprintf("%s/%s on %s: %s", ns, name, n.Name, pluginMessage(err.Error()))})
		}
		_ = p.Del()
		_ = s.forget(p)
		return err
	}
	added = true
	s.reg.add(p)

	anchor := s.anchors[(node+1)%len(s.anchors)]
	if err := retry(ctx, time.Minute, func() error { return p.Ping(anchor.IPv4()) }); err != nil && ctx.Err() == nil {
		s.mu.Lock()
		s.res.TrafficFailures = append(s.res.TrafficFailures, fmt.Sprintf("%s/%s on %s (%v) to %s: %v", ns, name, n.Name, p.IPs, anchor.IPv4(), err))
		s.mu.Unlock()
	}

	// A fault that needs a live pod takes this one.
	select {
	case f := <-s.podFaults:
		s.reg.remove(p)
		err := f.do(p)
		f.done <- err
		if f.kind == FSkipDel {
			return nil
		}
	default:
		s.reg.remove(p)
	}

	if added {
		if err := retry(context.Background(), retryFor, func() error {
			t0 := time.Now()
			err := p.Del()
			s.observe("DEL", t0, err)
			return err
		}); err != nil {
			s.violate(Violation{VNeverDeleted, fmt.Sprintf("%s/%s on %s: %s", ns, name, n.Name, pluginMessage(err.Error()))})
		}
	}
	return s.forget(p)
}

// retry calls f until it succeeds, ctx ends or d passes, backing off up
// to 2 s between tries.
func retry(ctx context.Context, d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	wait := 200 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// classify names the cause of a failed ADD or DEL and says whether the
// plugin reported it as retryable: CNI code 11 ("try again later") or
// Coil's 100 (pool exhausted: the small pool refills as pods go). cnitool
// prints the plugin's message but not its code, so the code is read off
// the message, which coil/plugin words differently for each code:
// "try again later" only with 11, "pool exhausted:" only with 100.
func classify(err error) (string, bool) {
	var ce *mtest.CNIError
	if errors.As(err, &ce) {
		switch ce.Code {
		case 11:
			return "CNI 11: " + reason(ce.Msg), true
		case 100:
			return "CNI 100: pool exhausted", true
		default:
			return fmt.Sprintf("CNI %d: %s", ce.Code, cut(ce.Msg)), false
		}
	}
	full := pluginText(err.Error())
	switch {
	case strings.HasPrefix(full, "pool exhausted:"):
		return "CNI 100: pool exhausted", true
	case strings.Contains(full, "try again later"):
		return "CNI 11: " + reason(full), true
	}
	return "not retryable: " + cut(full), false
}

// pluginMessage is the message of the plugin that failed, out of
// cnitool's output, cut short.
func pluginMessage(out string) string { return cut(pluginText(out)) }

// pluginText is the message of the plugin that failed, out of cnitool's
// output.
func pluginText(out string) string {
	msg := out
	for _, mark := range []string{"failed (add): ", "failed (del): ", "failed (delete): "} {
		if i := strings.LastIndex(msg, mark); i >= 0 {
			msg = msg[i+len(mark):]
		}
	}
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	return strings.TrimSpace(msg)
}

func cut(msg string) string {
	if len(msg) > 200 {
		return msg[:200] + "..."
	}
	return msg
}

// reason names why coild asked to try again later.
func reason(msg string) string {
	for _, r := range []struct{ in, out string }{
		{"coild is unreachable", "coild unreachable"},
		{"not ready", "coild restoring its state"},
		{"not restored", "coild restoring its state"},
		{"outcome of the write unknown", "etcd write outcome unknown"},
		{"etcd", "etcd unavailable"},
	} {
		if strings.Contains(msg, r.in) {
			return r.out
		}
	}
	return "other"
}

// checkLoop runs the continuous checks until ctx ends.
func (s *soak) checkLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.checkOnce(ctx)
		}
	}
}

// checkOnce checks every coild and controller replica is running unless
// the soak stopped it, and the live pods' addresses.
func (s *soak) checkOnce(ctx context.Context) {
	for i, n := range s.c.Nodes {
		s.nodeMu[i].Lock()
		if !s.expected[i] && !n.CoildRunning() {
			s.violate(Violation{VCoildExit, fmt.Sprintf("coild of %s exited:\n%s", n.Name, n.CoildLog())})
			// Restart it, as the DaemonSet would.
			if err := n.StartCoild(); err != nil {
				s.log("restart coild of %s: %v", n.Name, err)
			}
		}
		s.nodeMu[i].Unlock()
	}
	s.ctlMu.Lock()
	for i := range s.c.ControllerReplicas() {
		if !s.c.ControllerReplicaRunning(i) {
			s.log("coil-controller replica %d exited on its own:\n%s", i, s.c.ControllerReplicaLog(i))
			s.mu.Lock()
			s.res.ControllerExits++
			s.mu.Unlock()
			// Restart it, as its Deployment would.
			_ = s.c.StartControllerReplica(i)
		}
	}
	s.ctlMu.Unlock()
	vs, err := s.ck.CheckLive(s.reg.stable, s.reg.read)
	if err != nil {
		// etcd may be restarting: the next check reads again.
		return
	}
	s.mu.Lock()
	s.res.ChecksRun++
	s.mu.Unlock()
	s.violate(vs...)
	if vs, err := s.ck.CheckGone(s.goneSince, leakBound); err == nil {
		s.goneMu.Lock()
		for _, v := range vs {
			if !s.reported[v.Detail[:strings.Index(v.Detail, " ")]] {
				s.reported[v.Detail[:strings.Index(v.Detail, " ")]] = true
				s.violate(v)
			}
		}
		s.goneMu.Unlock()
	}
	_ = s.etcd.sample(ctx, s.c)
}

// leakBound is how long a deleted pod's record may outlive it while the
// soak runs: leak grace and sweep period, a new controller leader that
// counts afresh after a Lease expiry, and a wide margin.
const leakBound = 2 * time.Minute

func (s *soak) goneSince(cid string) (time.Time, bool) {
	s.goneMu.Lock()
	defer s.goneMu.Unlock()
	t, ok := s.gone[cid]
	return t, ok
}

// forget deletes a pod's namespace and Pod object (after DEL, or instead
// of it) and notes when it went.
func (s *soak) forget(p *mtest.Pod) error {
	err := retry(context.Background(), 30*time.Second, func() error { return p.Forget(context.Background()) })
	s.goneMu.Lock()
	s.gone[p.ContainerID] = time.Now()
	s.goneMu.Unlock()
	return err
}

// inject runs faults one after another, every kind once first (in an
// order drawn from the seed), then kinds drawn at random, with quiet gaps
// between them, until ctx ends.
func (s *soak) inject(ctx context.Context) {
	rng := rand.New(rand.NewPCG(s.cfg.Seed, 0))
	order := rng.Perm(len(AllFaults))
	for k := 0; ; k++ {
		gap := s.cfg.FaultGapMin + time.Duration(rng.Int64N(int64(s.cfg.FaultGapMax-s.cfg.FaultGapMin)+1))
		select {
		case <-ctx.Done():
			return
		case <-time.After(gap):
		}
		kind := AllFaults[rng.IntN(len(AllFaults))]
		if k < len(order) {
			kind = AllFaults[order[k]]
		}
		start := time.Now()
		s.mu.Lock()
		s.faults = append(s.faults, window{start: start})
		s.res.FaultLog = append(s.res.FaultLog, fmt.Sprintf("%s +%s %s", start.UTC().Format("15:04:05"), start.Sub(s.res.Started).Round(time.Second), kind))
		s.mu.Unlock()
		what, err := s.fault(ctx, rng, kind)
		end := time.Now()
		s.mu.Lock()
		s.faults[len(s.faults)-1].end = end
		line := &s.res.FaultLog[len(s.res.FaultLog)-1]
		*line += ": " + what
		if err != nil {
			*line += fmt.Sprintf(" (not injected: %v)", err)
		} else {
			s.res.Faults[kind]++
		}
		s.mu.Unlock()
		s.log("fault %s", *line)
		if err == nil && k < len(order) {
			s.mandatory.Add(-1)
		} else if err != nil && k < len(order) {
			// Try this kind again later in the first round.
			order = append(order, order[k])
		}
	}
}

// fault injects one fault and waits for the cluster to recover from it.
func (s *soak) fault(ctx context.Context, rng *rand.Rand, kind string) (string, error) {
	bg := context.Background()
	nodeIdx := rng.IntN(len(s.c.Nodes))
	n := s.c.Nodes[nodeIdx]
	switch kind {
	case FCoildKill:
		s.nodeMu[nodeIdx].Lock()
		s.expected[nodeIdx] = true
		n.KillCoild()
		s.nodeMu[nodeIdx].Unlock()
		down := time.Duration(500+rng.IntN(2500)) * time.Millisecond
		time.Sleep(down)
		return fmt.Sprintf("coild of %s down %s", n.Name, down), s.startCoild(nodeIdx)
	case FEtcdMember, FEtcdLeader:
		leader, err := s.c.EtcdLeader()
		if err != nil {
			return "", err
		}
		m := leader
		if kind == FEtcdMember {
			m = (leader + 1 + rng.IntN(s.c.EtcdMembers()-1)) % s.c.EtcdMembers()
		}
		s.c.StopEtcdMember(m)
		down := time.Duration(1000+rng.IntN(4000)) * time.Millisecond
		time.Sleep(down)
		if err := s.c.RestartEtcdMember(m); err != nil {
			return "", fmt.Errorf("restart etcd member %d: %w", m, err)
		}
		err = retry(bg, time.Minute, func() error {
			s.ck.mu.Lock()
			s.ck.reads += s.c.EtcdMembers()
			s.ck.mu.Unlock()
			_, err := s.c.Etcdctl("endpoint", "health", "--cluster")
			return err
		})
		return fmt.Sprintf("member m%d (leader m%d) down %s", m, leader, down), err
	case FEtcdCut:
		d := time.Duration(10+rng.IntN(21)) * time.Second
		if err := n.CutEtcd(); err != nil {
			return "", err
		}
		time.Sleep(d)
		return fmt.Sprintf("%s cut for %s", n.Name, d), n.RestoreEtcd()
	case FControllerLeader:
		leader, err := s.c.ControllerLeader(bg)
		if err != nil {
			// A new leader may still be taking over from the last fault.
			if err := retry(ctx, 40*time.Second, func() (err error) { leader, err = s.c.ControllerLeader(bg); return err }); err != nil {
				return "", err
			}
		}
		s.ctlMu.Lock()
		s.c.KillControllerReplica(leader)
		time.Sleep(time.Second)
		err = s.c.StartControllerReplica(leader)
		s.ctlMu.Unlock()
		if err != nil {
			return "", err
		}
		// The other replica takes the Lease once it expires (15 s).
		var next int
		err = retry(bg, time.Minute, func() (err error) { next, err = s.c.ControllerLeader(bg); return err })
		return fmt.Sprintf("replica %d killed, replica %d leads", leader, next), err
	case FNodeObject:
		nodes := s.c.Kube.CoreV1().Nodes()
		if err := nodes.Delete(bg, n.Name, metav1.DeleteOptions{}); err != nil {
			return "", err
		}
		d := time.Duration(2+rng.IntN(8)) * time.Second
		time.Sleep(d)
		err := retry(bg, 30*time.Second, func() error {
			_, err := nodes.Create(bg, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.Name}}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				return nil
			}
			return err
		})
		return fmt.Sprintf("Node %s absent %s", n.Name, d), err
	case FSkipDel:
		var leaked string
		what, err := s.podFault(ctx, kind, func(p *mtest.Pod) error {
			leaked = p.ContainerID
			return s.forget(p)
		})
		if err != nil {
			return what, err
		}
		// The leak sweep frees the record after --leak-grace.
		t0 := time.Now()
		err = retry(bg, 2*time.Minute, func() error {
			recs, err := s.ck.Records()
			if err != nil {
				return err
			}
			for _, r := range recs {
				if r.ContainerID == leaked {
					return fmt.Errorf("record %s of the forgotten pod remains", r.Key)
				}
			}
			return nil
		})
		if err != nil {
			// Not a failure to inject: the final check reports the leak.
			return what + fmt.Sprintf(", NOT reclaimed within 2 min: %v", err), nil
		}
		return what + fmt.Sprintf(", reclaimed after %s", time.Since(t0).Round(time.Second)), nil
	case FVethGone:
		return s.podFault(ctx, kind, func(p *mtest.Pod) error {
			i := nodeIndex(s.c, p.Node)
			s.nodeMu[i].Lock()
			s.expected[i] = true
			p.Node.KillCoild()
			s.nodeMu[i].Unlock()
			if out, err := exec.Command("ip", "-n", p.Node.NetNS, "link", "del", nodenet.HostVethName(p.Namespace, p.Name)).CombinedOutput(); err != nil {
				return fmt.Errorf("delete veth: %w: %s", err, out)
			}
			return s.startCoild(i)
		})
	}
	return "", fmt.Errorf("unknown fault %q", kind)
}

// podFault hands f to the next worker about to delete its pod.
func (s *soak) podFault(ctx context.Context, kind string, f func(p *mtest.Pod) error) (string, error) {
	var victim string
	done := make(chan error, 1)
	pf := podFault{kind: kind, done: done, do: func(p *mtest.Pod) error {
		victim = fmt.Sprintf("pod %s/%s on %s (%v)", p.Namespace, p.Name, p.Node.Name, p.IPs)
		return f(p)
	}}
	select {
	case s.podFaults <- pf:
	case <-ctx.Done():
		return "", ctx.Err()
	case <-time.After(time.Minute):
		return "", fmt.Errorf("no worker took the fault")
	}
	err := <-done
	return victim, err
}

// startCoild starts a node's coild stopped by a fault and waits until it
// is ready.
func (s *soak) startCoild(i int) error {
	n := s.c.Nodes[i]
	s.nodeMu[i].Lock()
	err := n.StartCoild()
	s.nodeMu[i].Unlock()
	if err == nil {
		err = n.WaitReady(2 * time.Minute)
	}
	s.nodeMu[i].Lock()
	s.expected[i] = false
	s.nodeMu[i].Unlock()
	return err
}

func nodeIndex(c *mtest.Cluster, n *mtest.Node) int {
	for i, m := range c.Nodes {
		if m == n {
			return i
		}
	}
	return -1
}

func sleepC(seconds int) <-chan time.Time { return time.After(time.Duration(seconds) * time.Second) }
