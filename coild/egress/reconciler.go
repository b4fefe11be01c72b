// Package egress keeps the egress NAT tunnels of the pods on coild's node in
// step with the egress records in etcd and the pods in the Kubernetes API.
// Only the node's own daemon can enter its pods' network namespaces, so this
// runs in coild; the design is in docs/egress.md.
package egress

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"reflect"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/model"
	"github.com/coil-project/coil/nodenet"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ErrNotReady is returned by SetupPod for a pod that uses egress while the
// reconciler has not yet loaded the egresses, pools and gateway pods: a
// decision on partial data could send the pod's traffic the wrong way.
// coild answers it as unavailable: the plugin's retry will succeed.
var ErrNotReady = api.WithReason(errors.New("egress state not loaded yet"), api.ReasonUnavailable)

// ErrNetNSGone is returned when programming a pod failed and its network
// namespace path does not exist as coild sees it: the sandbox is gone, or
// its path is not visible to coild (a mount propagation mistake). Nothing
// was programmed for the pod.
var ErrNetNSGone = errors.New("pod network namespace not found")

// PodSetup is what SetupPod did for a pod.
type PodSetup struct {
	// Clients are the egresses the pod is a client of, sorted by name.
	Clients []ClientRoute
	// Gateway is the egress ("namespace/name") the pod is a gateway of;
	// empty if none.
	Gateway string
	// Missing lists egresses the pod is annotated for that do not exist;
	// its traffic to them takes the normal path.
	Missing []string
}

// ClientRoute is one egress of a client pod and the gateway it goes
// through now.
type ClientRoute struct {
	// Egress is "namespace/name".
	Egress string
	// GatewayPod ("namespace/name") is the gateway pod chosen and Gateway
	// its address the tunnel leads to; GatewayPod is empty while the
	// egress has no running gateway.
	GatewayPod string
	Gateway    netip.Addr
}

// addressAddrs returns the addresses of an allocation.
func addressAddrs(a model.Address) addrs { return addrs{a.IPv4.Unmap(), a.IPv6.Unmap()} }

// Store is the part of model.Store the reconciler uses.
type Store interface {
	WatchEgresses(ctx context.Context, retry time.Duration, fn func([]model.Egress)) error
}

// Config wires a Reconciler.
type Config struct {
	// Node is the name of this node.
	Node  string
	Kube  kubernetes.Interface
	Store Store
	// Networks lists the allocations of this node's pods (their primary
	// interface), which carry the pods' network namespaces.
	Networks func() []model.Address
	// Bypass are destinations that never go through a tunnel besides the
	// pools' subnets, link-local ranges and gateways: service and node
	// networks.
	Bypass []netip.Prefix
	// Resync is the period of the full reconciliation, which repairs
	// anything changed behind coild's back.
	Resync time.Duration
	// ProbeInterval is the period of the health probes of the gateways
	// this node's clients use; zero turns probing off (any running
	// gateway is chosen). ProbeMisses probes lost in a row take a gateway
	// out of this node's choice, as many good answers in a row bring it
	// back (docs/egress.md, "Health probes").
	ProbeInterval time.Duration
	ProbeMisses   int
	// InHostNS runs f in the node's network namespace, where the probes'
	// sockets are opened; nil runs it where coild is.
	InHostNS func(f func() error) error
	// Registry receives the metrics; nil means none.
	Registry prometheus.Registerer
	Logger   *slog.Logger
}

// Reconciler keeps the egress tunnels of the node's pods in step.
type Reconciler struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	pods    *podWatch
	trigger chan struct{}
	// probe is nil when probing is off.
	probe *prober

	// gatewayStats exports the node's gateway pods' counters.
	gatewayStats *gatewayStats

	// mu guards the inputs fed from etcd.
	mu           sync.Mutex
	egresses     map[string]model.Egress
	egressesSeen bool
	pools        []netip.Prefix
	poolsSeen    bool

	// prefetch holds the Pod GETs started at an ADD's allocation.
	prefetch prefetcher

	// snapshots numbers the snapshots (podState.seq).
	snapshots atomic.Uint64

	// stateMu guards applied and unlisted; it is never held across
	// kernel work.
	stateMu sync.Mutex
	applied map[string]podState
	// unlisted are the clients of this node set up from the runtime's
	// annotations that the cache does not hold yet (addUnlisted).
	unlisted map[string]*corev1.Pod
	// podLocks serialise the kernel work of one pod (striped by pod key):
	// a CNI ADD and the reconcile loop never program a pod at once, and
	// no lock spans the whole node.
	podLocks [64]sync.Mutex
	// swept is set once the first reconciliation has removed leftovers
	// of pods that lost their egress while coild was down.
	swept bool
	// retrying is set while a wake-up of the loop is scheduled.
	retrying atomic.Bool
}

// podState is the egress configuration of one pod, as wanted or as
// programmed.
type podState struct {
	netns   string
	client  *nodenet.EgressClient
	gateway *nodenet.EgressGateway
	// serves is the egress the pod is a gateway of, if gateway is set.
	serves string
	// chosen maps each egress of a client to the gateway pod it uses
	// ("" while none), for the API answer and the failover count.
	chosen map[string]string
	// lost lists the egresses whose gateway went away since the last
	// programming: those moves are failovers.
	lost []string
	// seq is the sequence number of the snapshot the state was computed
	// from. A reconcile pass and an ADD compute outside the pod's lock, so
	// a pass that read the probes' verdicts before an ADD waited for
	// newer ones could otherwise program its older choice over the ADD's
	// (a client left without a gateway right after its ADD): apply never
	// replaces a state by one computed from an older snapshot.
	seq uint64
}

func (s podState) empty() bool { return s.client == nil && s.gateway == nil }

// New returns a reconciler; Run starts it.
func New(cfg Config) *Reconciler {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Resync <= 0 {
		cfg.Resync = time.Minute
	}
	r := &Reconciler{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "egress"),
		metrics:  newMetrics(cfg.Registry),
		trigger:  make(chan struct{}, 1),
		egresses: map[string]model.Egress{},
		applied:  map[string]podState{},
	}
	r.gatewayStats = newGatewayStats(cfg.Registry)
	r.pods = newPodWatch(cfg.Kube, cfg.Node, r.kick)
	if cfg.ProbeInterval > 0 {
		if cfg.ProbeMisses <= 0 {
			cfg.ProbeMisses = DefaultProbeMisses
			r.cfg.ProbeMisses = cfg.ProbeMisses
		}
		// The socket is opened by Run.
		r.probe = newProber(cfg.ProbeInterval, cfg.ProbeMisses, nil, r.metrics, r.log, r.kick)
	}
	return r
}

// SetPools takes the pools' subnets, which stay on clients' normal path.
// It is fed by coild's watch of the pools.
func (r *Reconciler) SetPools(pools []model.Pool) {
	var ps []netip.Prefix
	for _, p := range pools {
		for _, s := range p.Subnets {
			for _, pf := range []netip.Prefix{s.IPv4, s.IPv6} {
				if pf.IsValid() {
					ps = append(ps, pf)
				}
			}
		}
	}
	r.mu.Lock()
	r.pools, r.poolsSeen = sortPrefixes(ps), true
	r.mu.Unlock()
	r.kick()
}

func (r *Reconciler) setEgresses(list []model.Egress) {
	m := make(map[string]model.Egress, len(list))
	for _, e := range list {
		m[e.Key()] = e
	}
	r.mu.Lock()
	r.egresses, r.egressesSeen = m, true
	r.mu.Unlock()
	r.kick()
}

// kick wakes the reconcile loop; wake-ups while it is busy coalesce.
func (r *Reconciler) kick() {
	select {
	case r.trigger <- struct{}{}:
	default:
	}
}

// Run watches etcd and the API and reconciles until ctx ends. It owns
// every goroutine it starts and returns only after they have stopped.
func (r *Reconciler) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	stopPrefetch := r.runPrefetch(ctx)
	defer stopPrefetch()
	defer cancel()
	wg.Go(func() {
		if err := r.cfg.Store.WatchEgresses(ctx, 2*time.Second, r.setEgresses); err != nil && ctx.Err() == nil {
			r.log.Error("watch egresses", "error", err)
		}
	})
	if r.probe != nil {
		var sock *nodenet.ProbeSocket
		open := func() (err error) { sock, err = nodenet.OpenProbeSocket(); return err }
		var err error
		if r.cfg.InHostNS != nil {
			err = r.cfg.InHostNS(open)
		} else {
			err = open()
		}
		if err != nil {
			return fmt.Errorf("egress gateway probes (turn them off with --egress-probe-interval=0): %w", err)
		}
		r.probe.send = sock
		wg.Go(func() { r.probe.run(ctx, sock.Read4, sock.Read6, sock.Close) })
	}
	r.pods.start(ctx)
	defer r.pods.stop()
	started := time.Now()

	ticker := time.NewTicker(r.cfg.Resync)
	defer ticker.Stop()
	for {
		full := false
		select {
		case <-ctx.Done():
			return nil
		case <-r.trigger:
		case <-ticker.C:
			full = true
		}
		if !r.ready() {
			// Informers may finish their first list without an event
			// worth a wake-up: look again shortly.
			r.retryIn(100 * time.Millisecond)
			continue
		}
		// Let a burst of events (a rollout, a deleted gateway seen by
		// several informers) settle into one pass.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(20 * time.Millisecond):
		}
		r.reconcileGuarded(full, time.Since(started) < startupProbeWait)
	}
}

// startupProbeWait bounds how long the first pass after a start waits for
// the probes' first verdicts; they come within (misses+1) intervals.
const startupProbeWait = 10 * time.Second

// reconcileGuarded runs one pass. A panic in it (a bug, or something a pod
// put in its own namespace that nodenet did not expect) abandons that pass
// only: coild must not crash-loop on every restart because of one pod.
func (r *Reconciler) reconcileGuarded(full, waitProbes bool) {
	defer func() {
		if v := recover(); v != nil {
			r.metrics.panics.Inc()
			r.log.Error("egress reconcile pass panicked; retrying", "panic", v, "stack", string(debug.Stack()))
			r.retryIn(time.Second)
		}
	}()
	r.reconcile(full, waitProbes)
}

// ready reports whether every input has been loaded once.
func (r *Reconciler) ready() bool {
	r.mu.Lock()
	loaded := r.egressesSeen && r.poolsSeen
	r.mu.Unlock()
	return loaded && r.pods.synced()
}

// noEgresses reports whether the egresses are known and there are none.
func (r *Reconciler) noEgresses() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.egressesSeen && len(r.egresses) == 0
}

// egressIn reports whether an egress lives in namespace, or the egresses
// are not loaded yet (it cannot tell): its pods may be gateways.
func (r *Reconciler) egressIn(namespace string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.egressesSeen {
		return true
	}
	for _, e := range r.egresses {
		if e.Namespace == namespace {
			return true
		}
	}
	return false
}

// snapshot is every input of one reconciliation.
type snapshot struct {
	// seq orders snapshots: see podState.seq.
	seq      uint64
	egresses map[string]model.Egress
	bypass   []netip.Prefix
	// gateways are the eligible gateway pods of each egress, by key.
	gateways map[string][]gateway
	// alive adds to gateways the pods that are being deleted but still
	// run (draining): connections opened through them stay with them.
	alive map[string][]gateway
	// networks are this node's pods' networks by pod key.
	networks map[string]model.Address
	// clients are the pods of the cluster that use an egress; nil while
	// unknown (the cluster-wide watch is not running or not synced).
	clients []*corev1.Pod
}

func (r *Reconciler) snapshot() *snapshot {
	r.mu.Lock()
	s := &snapshot{seq: r.snapshots.Add(1), egresses: r.egresses, bypass: sortPrefixes(append(slices.Clone(r.pools), r.cfg.Bypass...))}
	r.mu.Unlock()
	s.gateways = map[string][]gateway{}
	s.alive = map[string][]gateway{}
	for _, p := range r.pods.gateways() {
		e := gatewayOf(p)
		if _, ok := s.egresses[e]; !ok || !running(p) {
			continue
		}
		g := gateway{key: podKey(p), addrs: podAddrs(p)}
		s.alive[e] = append(s.alive[e], g)
		if eligible(p) {
			s.gateways[e] = append(s.gateways[e], g)
		}
	}
	s.networks = map[string]model.Address{}
	for _, n := range r.cfg.Networks() {
		k := n.Namespace + "/" + n.Pod
		// A pod restarted its sandbox: the newest attachment is the live one.
		if old, ok := s.networks[k]; n.NetNS != "" && (!ok || n.CreatedAt.After(old.CreatedAt)) {
			s.networks[k] = n
		}
	}
	s.clients = r.withUnlisted(r.pods.clients())
	return s
}

// addUnlisted remembers client pod p of this node, set up from the
// runtime's annotations (a static pod before its mirror): the gateways'
// clients come from the API, which does not hold it, and a pass would
// otherwise take it off this node's gateways right after its ADD put it
// there. It is forgotten once the cache holds the pod (the API answers
// for it from then on) or its address is released.
func (r *Reconciler) addUnlisted(p *corev1.Pod) {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	if r.unlisted == nil {
		r.unlisted = map[string]*corev1.Pod{}
	}
	r.unlisted[podKey(p)] = p
}

// withUnlisted adds to clients, the cluster's clients as the API shows
// them (nil while unknown), the unlisted clients it lacks.
func (r *Reconciler) withUnlisted(clients []*corev1.Pod) []*corev1.Pod {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	if clients == nil || len(r.unlisted) == 0 {
		return clients
	}
	for k, p := range r.unlisted {
		if r.pods.localPod(p.Namespace, p.Name) != nil {
			delete(r.unlisted, k)
			continue
		}
		if !slices.ContainsFunc(clients, func(c *corev1.Pod) bool { return podKey(c) == k }) {
			clients = append(clients, p)
		}
	}
	return clients
}

func podKey(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }

// desired computes the configuration of one pod of this node. prev is what
// was programmed last, for the gateway's clients when the cluster-wide view
// is unknown.
func (r *Reconciler) desired(s *snapshot, p *corev1.Pod, net model.Address, prev podState) podState {
	key := podKey(p)
	d := podState{netns: net.NetNS, chosen: map[string]string{}, seq: s.seq}
	self := gatewayOf(p)
	var tunnels []nodenet.EgressTunnel
	for _, e := range clientEgresses(p) {
		eg, ok := s.egresses[e]
		if !ok || e == self {
			continue
		}
		t := nodenet.EgressTunnel{VNI: eg.VNI, Destinations: eg.Destinations}
		usable := r.usable(s.gateways[e], addressAddrs(net), prev.chosen[e])
		if g, ok := choose(key, addressAddrs(net), usable); ok {
			_, t.Gateway, _ = outer(addressAddrs(net), g.addrs)
			d.chosen[e] = g.key
			t.Established = r.established(s.alive[e], addressAddrs(net), g)
		} else {
			d.chosen[e] = ""
		}
		if old := prev.chosen[e]; old != "" && old != d.chosen[e] && !slices.ContainsFunc(usable, func(g gateway) bool { return g.key == old }) {
			d.lost = append(d.lost, e)
		}
		tunnels = append(tunnels, t)
	}
	if len(tunnels) > 0 {
		d.client = &nodenet.EgressClient{IPv4: net.IPv4, IPv6: net.IPv6, Bypass: s.bypass, Tunnels: tunnels}
	}
	if eg, ok := s.egresses[self]; ok && self != "" {
		gw := &nodenet.EgressGateway{VNI: eg.VNI, IPv4: net.IPv4, IPv6: net.IPv6}
		switch {
		case s.clients != nil:
			gw.Clients = r.servedClients(s, self, key, addressAddrs(net))
		case prev.gateway != nil && prev.gateway.VNI == eg.VNI:
			// Who the clients are is not known yet: keep serving the
			// ones programmed before rather than cutting them off.
			gw.Clients = prev.gateway.Clients
		}
		d.gateway, d.serves = gw, self
	}
	return d
}

// servedClients returns the clients, anywhere in the cluster, of egress e
// that the gateway pod gwKey (of addresses gwAddrs) serves: all of them.
// Which gateway a client uses is decided on the client's node, from its own
// probes, which the gateway's node cannot see; and while a gateway drains,
// a client uses two at once. So every gateway of an egress accepts and
// returns the traffic of every client of it.
func (r *Reconciler) servedClients(s *snapshot, e, gwKey string, gwAddrs addrs) []nodenet.EgressGatewayClient {
	var out []nodenet.EgressGatewayClient
	for _, c := range s.clients {
		if gatewayOf(c) == e || !slices.Contains(clientEgresses(c), e) || terminated(c) {
			continue
		}
		ck := podKey(c)
		a := podAddrs(c)
		if c.Spec.NodeName == r.cfg.Node {
			// Ours: the allocator knows the addresses before the
			// status does, and after a DEL that they are gone.
			n, ok := s.networks[ck]
			if !ok {
				continue
			}
			a = addressAddrs(n)
		}
		if !a.valid() {
			continue
		}
		co, _, ok := outer(a, gwAddrs)
		if !ok {
			continue
		}
		out = append(out, nodenet.EgressGatewayClient{Outer: co, IPv4: a.v4, IPv6: a.v6})
	}
	slices.SortFunc(out, func(a, b nodenet.EgressGatewayClient) int { return a.Outer.Compare(b.Outer) })
	return out
}

// terminated reports whether a pod's containers are done, its network gone.
func terminated(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// reconcile brings every pod of the node in step; full re-programs even
// pods whose configuration did not change, repairing drift.
func (r *Reconciler) reconcile(full, waitProbes bool) {
	s := r.snapshot()
	r.pods.needClients(r.hasLocalGateways(s))
	if r.probe != nil {
		targets := map[probeTarget]probeState{}
		for _, p := range r.pods.local() {
			if net, ok := s.networks[podKey(p)]; ok && p.Spec.NodeName == r.cfg.Node && !terminated(p) {
				r.addTargets(targets, s, p, addressAddrs(net))
			}
		}
		r.stateMu.Lock()
		first := !r.swept
		r.stateMu.Unlock()
		if !r.probe.want(targets, time.Now()) && first && waitProbes {
			// Right after a start nothing is known of the gateways:
			// choosing now would move every client off them. The
			// first verdicts come within a few intervals.
			r.retryIn(r.cfg.ProbeInterval)
			return
		}
	}

	want := map[string]podState{}
	seen := map[string]bool{}
	var clean []string
	for _, p := range r.pods.local() {
		k := podKey(p)
		if p.Spec.NodeName != r.cfg.Node || terminated(p) {
			continue
		}
		net, ok := s.networks[k]
		if !ok {
			continue
		}
		seen[k] = true
		if d := r.desired(s, p, net, r.appliedState(k)); !d.empty() {
			want[k] = d
		} else {
			clean = append(clean, k)
		}
	}

	r.stateMu.Lock()
	sweep := !r.swept
	r.swept = true
	for k, st := range r.applied {
		if _, ok := want[k]; ok {
			continue
		}
		if n, live := s.networks[k]; !seen[k] && live && n.NetNS == st.netns {
			// The pod's network is there but the informer does not
			// show the pod (just created, or gone from the API before
			// its DEL): leave it until it shows or DEL comes.
			continue
		}
		// No longer a client nor a gateway: programming the empty
		// state removes what is there.
		want[k] = podState{netns: st.netns, seq: s.seq}
	}
	r.stateMu.Unlock()

	if sweep {
		// After a restart nothing is known of what was programmed: make
		// sure pods that lost their egress while coild was down hold no
		// leftovers. Pods that never had one see only reads.
		for _, k := range clean {
			r.teardownLeftovers(k, s.networks[k].NetNS)
		}
	}

	failed := false
	for k, d := range want {
		if err := r.apply(k, d, full); errors.Is(err, ErrNetNSGone) {
			// Its DEL will come; a recreated sandbox comes with an ADD.
			r.log.Debug("egress of a pod whose namespace is gone", "pod", k, "error", err)
		} else if err != nil {
			failed = true
			r.log.Error("program egress", "pod", k, "error", err)
		}
	}
	if failed {
		// Retry soon rather than at the next resync.
		r.retryIn(time.Second)
	}
	r.updateMetrics(s, want)
	r.gatewayStats.set(want)
}

// retryIn wakes the reconcile loop after d, with at most one wake-up
// pending.
func (r *Reconciler) retryIn(d time.Duration) {
	if r.retrying.CompareAndSwap(false, true) {
		time.AfterFunc(d, func() {
			r.retrying.Store(false)
			r.kick()
		})
	}
}

// hasLocalGateways reports whether a gateway pod of an existing egress runs
// on this node: only then is the cluster-wide watch of client pods needed.
func (r *Reconciler) hasLocalGateways(s *snapshot) bool {
	for _, p := range r.pods.local() {
		if _, ok := s.egresses[gatewayOf(p)]; ok && p.Spec.NodeName == r.cfg.Node && !terminated(p) {
			return true
		}
	}
	return false
}

func (r *Reconciler) appliedState(key string) podState {
	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	return r.applied[key]
}

func (r *Reconciler) lockPod(key string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(key))
	m := &r.podLocks[h.Sum32()%uint32(len(r.podLocks))]
	m.Lock()
	return m
}

// apply programs one pod's configuration d unless it is what was
// programmed last (and force is false).
func (r *Reconciler) apply(key string, d podState, force bool) error {
	defer r.lockPod(key).Unlock()
	prev := r.appliedState(key)
	if d.seq < prev.seq {
		// Computed from an older view than what is programmed.
		return nil
	}
	if !force && prev.netns == d.netns && reflect.DeepEqual(prev.client, d.client) && reflect.DeepEqual(prev.gateway, d.gateway) {
		return nil
	}
	var errs []error
	if prev.netns != "" && prev.netns != d.netns {
		// A new sandbox of the pod: the old namespace is gone or going.
		errs = append(errs, nodenet.TeardownEgressClient(prev.netns), nodenet.TeardownEgressGateway(prev.netns))
		prev = podState{}
	}
	switch {
	case d.client != nil:
		errs = append(errs, nodenet.SyncEgressClient(d.netns, *d.client))
	case prev.client != nil || force:
		errs = append(errs, nodenet.TeardownEgressClient(d.netns))
	}
	switch {
	case d.gateway != nil:
		errs = append(errs, nodenet.SyncEgressGateway(d.netns, *d.gateway))
	case prev.gateway != nil || force:
		errs = append(errs, nodenet.TeardownEgressGateway(d.netns))
	}
	err := errors.Join(errs...)

	r.stateMu.Lock()
	defer r.stateMu.Unlock()
	if err != nil && !netnsExists(d.netns) {
		// The sandbox is gone (DEL is on its way), or coild cannot see
		// the path at all. Either way nothing is programmed there: say
		// so, and remember nothing, never a success (fail closed).
		delete(r.applied, key)
		return fmt.Errorf("%w: %s: %w", ErrNetNSGone, d.netns, err)
	}
	if err != nil {
		r.metrics.syncFailures.Inc()
		// Forget what is there: the next pass programs it all again.
		r.applied[key] = podState{netns: d.netns, client: &nodenet.EgressClient{}, gateway: &nodenet.EgressGateway{}, seq: d.seq}
		return err
	}
	for _, e := range d.lost {
		r.metrics.failovers.WithLabelValues(e).Inc()
		r.log.Info("client moved off a gateway that went away", "pod", key, "egress", e, "new_gateway", d.chosen[e])
	}
	d.lost = nil
	if d.empty() {
		delete(r.applied, key)
	} else {
		r.applied[key] = d
	}
	return nil
}

// netnsExists reports whether a network namespace path still exists.
func netnsExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// rollback removes what a failed SetupPod may have programmed in part, and
// forgets it, so that a later pass starts from nothing.
func (r *Reconciler) rollback(key, netns string) {
	r.teardownLeftovers(key, netns)
	r.stateMu.Lock()
	delete(r.applied, key)
	r.stateMu.Unlock()
}

// teardownLeftovers removes egress settings from a pod that should have
// none.
func (r *Reconciler) teardownLeftovers(key, netns string) {
	defer r.lockPod(key).Unlock()
	if err := errors.Join(nodenet.TeardownEgressClient(netns), nodenet.TeardownEgressGateway(netns)); err != nil {
		r.log.Error("remove egress leftovers", "pod", key, "error", err)
	}
}

// SetupPod programs the egress configuration of a pod during its CNI ADD,
// once its interface exists, so that its first packet takes the right
// path. A pod that is neither a client nor a gateway costs one look-up in
// the informer's cache.
func (r *Reconciler) SetupPod(ctx context.Context, net model.Address) (PodSetup, error) {
	var resp PodSetup
	if r.noEgresses() && r.pods.localPod(net.Namespace, net.Pod) == nil {
		// Nothing a pod could be a client or gateway of: the API
		// round trip for a pod the cache does not hold yet (a static
		// pod before its mirror, a watch lagging behind) would only
		// slow the ADD down.
		return resp, nil
	}
	p, fromRuntime, err := r.pod(ctx, net.Namespace, net.Pod)
	if err != nil || p == nil {
		return resp, err
	}
	if len(clientEgresses(p)) == 0 && gatewayOf(p) == "" {
		return resp, nil
	}
	if fromRuntime {
		r.addUnlisted(p)
	}
	if !r.ready() {
		return resp, fmt.Errorf("pod %s/%s uses egress: %w", net.Namespace, net.Pod, ErrNotReady)
	}
	s := r.snapshot()
	key := podKey(p)
	s.networks[key] = net
	if r.probe != nil {
		// A client gets a gateway its node has heard from: wait for
		// the first verdicts on the ones it may use (a few intervals at
		// most; they are known already if another pod of the node
		// uses the egress).
		targets := map[probeTarget]probeState{}
		r.addTargets(targets, s, p, addressAddrs(net))
		if !r.probe.want(targets, time.Now()) {
			r.probe.wait(ctx, slices.Collect(maps.Keys(targets)), time.Duration(r.cfg.ProbeMisses+2)*r.cfg.ProbeInterval)
			// What the wait learnt makes this state newer than any pass
			// that began before: see podState.seq.
			s = r.snapshot()
			s.networks[key] = net
		}
	}
	d := r.desired(s, p, net, r.appliedState(key))
	if err := r.apply(key, d, true); err != nil {
		// Fail closed: the plugin rolls the pod back and the runtime
		// retries the ADD, rather than a pod whose traffic would leave
		// with its own address while ADD reported a gateway.
		r.rollback(key, d.netns)
		return resp, fmt.Errorf("program egress of pod %s: %w", key, err)
	}
	for _, e := range clientEgresses(p) {
		if _, ok := s.egresses[e]; !ok {
			r.log.Warn("pod is annotated for an egress that does not exist", "pod", key, "egress", e)
			resp.Missing = append(resp.Missing, e)
			continue
		}
		if e == gatewayOf(p) {
			continue
		}
		route := ClientRoute{Egress: e}
		if g := d.chosen[e]; g != "" {
			t := slices.IndexFunc(s.gateways[e], func(x gateway) bool { return x.key == g })
			_, ip, _ := outer(addressAddrs(net), s.gateways[e][t].addrs)
			route.GatewayPod, route.Gateway = g, ip
		}
		resp.Clients = append(resp.Clients, route)
	}
	if d.gateway != nil {
		resp.Gateway = gatewayOf(p)
	}
	r.updateLocalGateways(s, p, d)
	// A new gateway needs the cluster-wide view of its clients.
	r.kick()
	return resp, nil
}

// updateLocalGateways programs, before the ADD of client p returns, the
// gateways of this node of its egresses (every gateway serves every
// client), so that even the replies to its first
// packets come back through the tunnel. Gateways on other nodes learn of
// the client from the API, as soon as its status shows its address.
func (r *Reconciler) updateLocalGateways(s *snapshot, p *corev1.Pod, d podState) {
	if s.clients == nil {
		return // the reconcile loop does it once the view is complete
	}
	key := podKey(p)
	s.clients = append(slices.DeleteFunc(slices.Clone(s.clients), func(c *corev1.Pod) bool { return podKey(c) == key }), p)
	for _, gp := range r.pods.local() {
		g := podKey(gp)
		net, ok := s.networks[g]
		if _, uses := d.chosen[gatewayOf(gp)]; !uses || !ok || gp.Spec.NodeName != r.cfg.Node || terminated(gp) {
			continue
		}
		if err := r.apply(g, r.desired(s, gp, net, r.appliedState(g)), false); err != nil {
			r.log.Error("program egress gateway for a new client", "gateway", g, "client", key, "error", err)
		}
	}
}

// splitKey splits "namespace/name".
func splitKey(k string) (namespace, name string) {
	namespace, name, _ = strings.Cut(k, "/")
	return namespace, name
}

// pod returns the Pod object from the informer's cache, or from the API
// when the cache does not hold it yet (through the fetch PrepareSetup
// started, if any); nil when it does not exist. fromRuntime reports a pod
// described by the runtime's annotations, which the API did not answer
// for.
func (r *Reconciler) pod(ctx context.Context, namespace, name string) (p *corev1.Pod, fromRuntime bool, err error) {
	if p := r.pods.localPod(namespace, name); p != nil {
		return p, false, nil
	}
	if f := r.takePrefetched(namespace, name); f != nil {
		select {
		case <-f.done:
			if f.err == nil {
				return f.pod, f.fromRuntime, nil
			}
			// Failed: ask again below.
		case <-ctx.Done():
			return nil, false, fmt.Errorf("get pod %s/%s: %w", namespace, name, ctx.Err())
		}
	}
	p, err = r.getPod(ctx, namespace, name)
	return p, false, err
}

// getPod asks the API server for a Pod; nil when it does not exist.
func (r *Reconciler) getPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	p, err := r.cfg.Kube.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
	}
	return p, nil
}

// PodReleased forgets a pod whose address was released (CNI DEL or GC) and
// removes its egress settings, if its namespace still exists. A release of
// an older sandbox of a pod leaves the newer one alone.
func (r *Reconciler) PodReleased(net model.Address) {
	key := net.Namespace + "/" + net.Pod
	st := r.appliedState(key)
	if net.NetNS == "" || st.netns != "" && st.netns != net.NetNS {
		return
	}
	func() {
		defer r.lockPod(key).Unlock()
		if err := errors.Join(nodenet.TeardownEgressClient(net.NetNS), nodenet.TeardownEgressGateway(net.NetNS)); err != nil {
			r.log.Error("remove egress of released pod", "pod", key, "error", err)
		}
		r.stateMu.Lock()
		if r.applied[key].netns == net.NetNS {
			delete(r.applied, key)
		}
		delete(r.unlisted, key)
		r.stateMu.Unlock()
	}()
	r.kick()
}

// addTargets adds to targets the gateway addresses client pod p (of
// addresses a) may tunnel to.
func (r *Reconciler) addTargets(targets map[probeTarget]probeState, s *snapshot, p *corev1.Pod, a addrs) {
	for _, e := range clientEgresses(p) {
		eg, ok := s.egresses[e]
		if !ok || e == gatewayOf(p) {
			continue
		}
		for _, g := range s.alive[e] {
			if _, ga, ok := outer(a, g.addrs); ok {
				targets[probeTarget{gateway: g.key, addr: ga}] = probeState{egress: e, vni: eg.VNI}
			}
		}
	}
}

// usable returns the gateways among gws a client of addresses a may
// choose: those its node's probes find up. One not judged yet is kept only
// if the client uses it already (prev), so that a new gateway gets clients
// once it has answered, and a restart moves nobody.
func (r *Reconciler) usable(gws []gateway, a addrs, prev string) []gateway {
	if r.probe == nil {
		return gws
	}
	var out []gateway
	for _, g := range gws {
		_, ga, ok := outer(a, g.addrs)
		if !ok {
			continue
		}
		switch r.probe.health(probeTarget{gateway: g.key, addr: ga}) {
		case probeUp:
			out = append(out, g)
		case probePending:
			if g.key == prev {
				out = append(out, g)
			}
		}
	}
	return out
}

// established returns the outer addresses of the gateways in alive, other
// than the chosen one, that may still carry connections of a client of
// addresses a: all that run and are not found down by the probes
// (draining ones included). Connections opened through one of them stay
// with it.
func (r *Reconciler) established(alive []gateway, a addrs, chosen gateway) []netip.Addr {
	var out []netip.Addr
	_, cur, _ := outer(a, chosen.addrs)
	for _, g := range alive {
		_, ga, ok := outer(a, g.addrs)
		if !ok || g.key == chosen.key || ga.Is4() != cur.Is4() {
			continue
		}
		if r.probe != nil && r.probe.health(probeTarget{gateway: g.key, addr: ga}) == probeDown {
			continue
		}
		out = append(out, ga)
	}
	slices.SortFunc(out, func(x, y netip.Addr) int { return x.Compare(y) })
	return out
}
