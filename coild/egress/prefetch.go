package egress

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// An ADD asks coild twice: for the address (POST /ip), then, once the
// plugin has set up the pod's veth, for its egress (POST /egress, SetupPod).
// When the informer does not hold the pod yet and an egress exists, the
// second needs the Pod from the API server; PrepareSetup starts that GET at
// the first request, so that its round trip overlaps the plugin's veth work
// instead of adding to the ADD. When the runtime passed the pod's
// annotations and they tell all SetupPod needs, PrepareSetup hands it the
// pod they describe instead, and the API server is not asked at all.

// prefetchTTL bounds how long a fetched Pod waits for its SetupPod; one
// that never came (the ADD failed before) is dropped after it.
const prefetchTTL = 30 * time.Second

// podFetch is one GET of a Pod; pod and err are set before done closes.
type podFetch struct {
	done    chan struct{}
	pod     *corev1.Pod
	err     error
	started time.Time
	// fromRuntime: pod is what the runtime's annotations describe, not
	// an answer of the API server.
	fromRuntime bool
}

type prefetcher struct {
	mu      sync.Mutex
	ctx     context.Context // the reconciler's run; nil while not running
	wg      sync.WaitGroup
	fetches map[string]*podFetch
}

// PrepareSetup is called as a pod's ADD allocates. It reports whether
// SetupPod of the pod could set anything up, from what the reconciler
// holds: false when no egress exists and the cache does not hold the pod,
// or when the cached pod is no egress client or gateway; true whenever it
// cannot tell (a pod not cached yet while egresses exist, inputs not
// loaded). It decides as SetupPod does, so that skipping SetupPod on false
// changes nothing. When only the API server can tell, it starts fetching
// the pod for SetupPod, without waiting.
//
// annotations are the pod's annotations as the container runtime passed
// them to the plugin (containerd's io.kubernetes.cri.pod-annotations),
// nil when it passed none. Only those with EgressClientAnnotationPrefix
// matter. For a pod the cache does not hold yet they answer for the API
// server when no egress lives in the pod's namespace: the pod is then no
// gateway (which a label makes, and runtimes pass no labels), and the
// annotations say whether it is a client, and of what. The cache, when it
// holds the pod, wins: it follows later changes, as the reconciler's
// passes do for a pod set up from the runtime's annotations.
func (r *Reconciler) PrepareSetup(namespace, name string, annotations map[string]string) bool {
	if p := r.pods.localPod(namespace, name); p != nil {
		return len(clientEgresses(p)) > 0 || gatewayOf(p) != ""
	}
	if r.noEgresses() {
		return false
	}
	if annotations != nil && !r.egressIn(namespace) {
		if len(clientEgressesOf(annotations)) == 0 {
			return false
		}
		// What SetupPod reads of a client pod: who it is, where it
		// runs, which egresses it uses.
		r.prefetched(namespace, name, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Annotations: annotations},
			Spec:       corev1.PodSpec{NodeName: r.cfg.Node},
		})
		return true
	}
	r.prefetchPod(namespace, name)
	return true
}

// prefetched hands SetupPod of namespace/name pod, known without the API
// server, as if fetched; while the reconciler runs (else SetupPod asks).
func (r *Reconciler) prefetched(namespace, name string, pod *corev1.Pod) {
	p := &r.prefetch
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if !p.openLocked(now) {
		return
	}
	f := &podFetch{done: make(chan struct{}), pod: pod, started: now, fromRuntime: true}
	close(f.done)
	p.fetches[namespace+"/"+name] = f
}

// prefetchPod starts fetching the Pod namespace/name from the API server
// for SetupPod, once per pod at a time, while the reconciler runs.
func (r *Reconciler) prefetchPod(namespace, name string) {
	key := namespace + "/" + name
	p := &r.prefetch
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	if !p.openLocked(now) {
		return
	}
	if _, ok := p.fetches[key]; ok {
		return
	}
	f := &podFetch{done: make(chan struct{}), started: now}
	p.fetches[key] = f
	ctx := p.ctx
	p.wg.Go(func() {
		defer close(f.done)
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		f.pod, f.err = r.getPod(gctx, namespace, name)
	})
}

// openLocked reports whether fetches may be added (the reconciler runs),
// readying the map and dropping the fetches no SetupPod took within
// prefetchTTL. p.mu is held.
func (p *prefetcher) openLocked(now time.Time) bool {
	if p.ctx == nil || p.ctx.Err() != nil {
		return false
	}
	if p.fetches == nil {
		p.fetches = map[string]*podFetch{}
	}
	for k, f := range p.fetches {
		if now.Sub(f.started) > prefetchTTL {
			delete(p.fetches, k)
		}
	}
	return true
}

// takePrefetched returns the fetch of namespace/name started by
// PrepareSetup, if any, removing it: each serves one SetupPod.
func (r *Reconciler) takePrefetched(namespace, name string) *podFetch {
	p := &r.prefetch
	p.mu.Lock()
	defer p.mu.Unlock()
	key := namespace + "/" + name
	f := p.fetches[key]
	delete(p.fetches, key)
	return f
}

// runPrefetch lets PrepareSetup start fetches under ctx until it ends, and
// waits for those in flight.
func (r *Reconciler) runPrefetch(ctx context.Context) func() {
	p := &r.prefetch
	p.mu.Lock()
	p.ctx = ctx
	p.mu.Unlock()
	return func() {
		p.mu.Lock()
		p.ctx = nil
		p.fetches = nil
		p.mu.Unlock()
		p.wg.Wait()
	}
}
