// Package controller acts on what package audit finds: it frees the blocks
// of deleted nodes and the addresses of vanished pods, behind guards that
// keep a wrong view of the cluster from freeing live state. Config and Run
// are the whole coil-controller process; see docs/coil-controller.md.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/coil-project/coil/audit"
	"github.com/coil-project/coil/model"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

// Store is the part of model.Store the controller reads and writes.
type Store interface {
	audit.Reader
	ForceReleaseBlock(ctx context.Context, b model.Block) (int64, error)
	DeleteNode(ctx context.Context, name string) error
	ReleaseAddress(ctx context.Context, a model.Address) error
	// NodeAlive reports whether the node's coild holds its liveness key.
	NodeAlive(ctx context.Context, node string) (bool, error)
	// ListPools returns every pool, for the capacity metrics.
	ListPools(ctx context.Context) ([]model.Pool, error)
}

// Defaults of Options, also the defaults of coil-controller's flags.
const (
	DefaultScanInterval    = 5 * time.Minute
	DefaultLeakGrace       = 10 * time.Minute
	DefaultMaxReclaimRatio = 0.5
	// DefaultMaxNodeReleaseRatio is the default of MaxNodeReleaseRatio.
	DefaultMaxNodeReleaseRatio = 0.5
	DefaultResyncPeriod        = 10 * time.Minute
	DefaultNodeRecheck         = 30 * time.Second
	// DefaultPoolUsageWarning is the default of PoolUsageWarning.
	DefaultPoolUsageWarning = 0.85
)

// minOperationTimeout bounds one node clean-up, and one sweep unless the
// scan interval is longer.
const minOperationTimeout = time.Minute

// Event reasons the controller records.
const (
	EventBlocksReleased   = "BlocksReleased"
	EventAddressReclaimed = "AddressReclaimed"
	EventLeakFound        = "LeakedAddressFound"
	// EventNodeReleaseRefused is recorded on the kube-system Namespace
	// when the sweep refuses to release missing nodes (the cap tripped).
	EventNodeReleaseRefused = "NodeReleaseRefused"
	// EventPoolUsageHigh is recorded on the kube-system Namespace when a
	// pool's usage ratio rises to PoolUsageWarning, EventPoolUsageNormal
	// when it falls below again.
	EventPoolUsageHigh   = "PoolUsageHigh"
	EventPoolUsageNormal = "PoolUsageNormal"
)

// Options tune a Controller. Zero values take the defaults above.
type Options struct {
	// ScanInterval is the period of the sweep that compares every address
	// and block with the API.
	ScanInterval time.Duration
	// LeakGrace is how long an address must stay a leak candidate, sweep
	// after sweep, before it is reclaimed.
	LeakGrace time.Duration
	// ReportOnly turns reclaiming of leaked addresses off: they are
	// logged, counted and announced as events only. (Blocks of deleted
	// nodes are always released.)
	ReportOnly bool
	// MaxReclaimRatio is the largest share of address records that may
	// look leaked in one sweep; above it nothing is reclaimed.
	MaxReclaimRatio float64
	// MaxNodeReleaseRatio is the largest share of the nodes known to etcd
	// (owning blocks or a node record) that one sweep may find missing
	// from the API and release; above it the sweep releases none.
	MaxNodeReleaseRatio float64
	// ResyncPeriod is the informers' resync period.
	ResyncPeriod time.Duration
	// NodeRecheckInterval is how soon a deleted node whose release was
	// deferred (pods still bound to it, its coild alive) is looked at
	// again.
	NodeRecheckInterval time.Duration
	// PoolUsageWarning is the usage ratio (model.Capacity.Ratio) at which
	// a pool gets a warning event and log line, once per crossing.
	PoolUsageWarning float64
	// Recorder receives Kubernetes events; nil records none.
	Recorder record.EventRecorder
	// Metrics receives the metrics; nil keeps them unregistered.
	Metrics *Metrics
	// Logger logs; nil uses slog.Default().
	Logger *slog.Logger
}

func (o *Options) setDefaults() {
	if o.ScanInterval <= 0 {
		o.ScanInterval = DefaultScanInterval
	}
	if o.LeakGrace < 0 {
		o.LeakGrace = 0
	}
	if o.MaxReclaimRatio <= 0 || o.MaxReclaimRatio > 1 {
		o.MaxReclaimRatio = DefaultMaxReclaimRatio
	}
	if o.MaxNodeReleaseRatio <= 0 || o.MaxNodeReleaseRatio > 1 {
		o.MaxNodeReleaseRatio = DefaultMaxNodeReleaseRatio
	}
	if o.PoolUsageWarning <= 0 {
		o.PoolUsageWarning = DefaultPoolUsageWarning
	}
	if o.ResyncPeriod <= 0 {
		o.ResyncPeriod = DefaultResyncPeriod
	}
	if o.NodeRecheckInterval <= 0 {
		o.NodeRecheckInterval = DefaultNodeRecheck
	}
	if o.Recorder == nil {
		o.Recorder = &record.FakeRecorder{} // nil channel: drops events
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Controller reconciles etcd with the cluster. Create it with New and call
// Run once, only while holding leadership.
type Controller struct {
	store  Store
	client kubernetes.Interface
	opts   Options
	log    *slog.Logger

	// Set by Run before any goroutine that reads them starts.
	nodes       corelisters.NodeLister
	pods        corelisters.PodLister
	podsByNode  cache.Indexer // pods indexed by podNodeIndex
	nodesSynced cache.InformerSynced
	podsSynced  cache.InformerSynced
	queue       workqueue.TypedRateLimitingInterface[string]

	// tracker is used by the sweep loop only.
	tracker *graceTracker
	// usageHigh holds the pools at or above PoolUsageWarning at the last
	// sweep; used by the sweep loop only.
	usageHigh map[string]bool
}

// New returns a controller acting on store and watching the API through
// client.
func New(store Store, client kubernetes.Interface, opts Options) *Controller {
	opts.setDefaults()
	return &Controller{
		store:     store,
		client:    client,
		opts:      opts,
		log:       opts.Logger,
		tracker:   newGraceTracker(),
		usageHigh: map[string]bool{},
	}
}

// Run watches Nodes and Pods, releases the blocks of deleted nodes once
// their deletion is seen and nothing uses them any more (nodeReleasable),
// and sweeps every ScanInterval (starting at
// once, which cleans up nodes deleted while no controller ran). It returns
// when ctx is done, after every goroutine it started has stopped.
func (c *Controller) Run(ctx context.Context) error {
	factory := informers.NewSharedInformerFactoryWithOptions(c.client, c.opts.ResyncPeriod,
		informers.WithTransform(trimObject))
	nodeInf := factory.Core().V1().Nodes()
	podInf := factory.Core().V1().Pods()
	// The clean-up of a deleted node asks for the pods bound to it: an
	// index, not a scan of every pod of the cluster per node.
	if err := podInf.Informer().AddIndexers(cache.Indexers{podNodeIndex: podNodeName}); err != nil {
		return fmt.Errorf("index pods by node: %w", err)
	}
	c.nodes, c.pods = nodeInf.Lister(), podInf.Lister()
	c.podsByNode = podInf.Informer().GetIndexer()
	c.nodesSynced, c.podsSynced = nodeInf.Informer().HasSynced, podInf.Informer().HasSynced
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "coil-controller-nodes"})
	if _, err := nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: c.onNodeDelete,
	}); err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}

	// Informers re-list whenever their watch ends, so a watch that dies
	// quietly only delays events; the periodic sweep does not depend on
	// events at all.
	factory.Start(ctx.Done())
	var wg sync.WaitGroup
	defer func() {
		c.queue.ShutDown()
		wg.Wait()
		factory.Shutdown() // returns once the informers' goroutines are gone
	}()

	c.log.Info("waiting for the node cache to sync")
	if !cache.WaitForCacheSync(ctx.Done(), c.nodesSynced) {
		return nil // ctx done
	}
	// Pods are not waited for: a pod cache that cannot sync (RBAC, a huge
	// list) must not stop node clean-up. The sweep checks it each time.
	wg.Go(func() { c.runNodeWorker(ctx) })

	ticker := time.NewTicker(c.opts.ScanInterval)
	defer ticker.Stop()
	for {
		// A sweep must not hang on a stuck etcd or API server until the
		// process is restarted: it is cut off when the next one is due.
		sctx, cancel := context.WithTimeout(ctx, max(c.opts.ScanInterval, minOperationTimeout))
		start := time.Now()
		err := c.sweep(sctx)
		c.opts.Metrics.sweepDuration.Observe(time.Since(start).Seconds())
		cancel()
		if err != nil && ctx.Err() == nil {
			c.log.Warn("sweep did not complete", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ticker.C:
		}
	}
}

func (c *Controller) onNodeDelete(obj any) {
	var name string
	switch o := obj.(type) {
	case *corev1.Node:
		name = o.Name
	case cache.DeletedFinalStateUnknown:
		// The watch missed the deletion; the re-list noticed it.
		name = strings.TrimPrefix(o.Key, "/")
	default:
		return
	}
	c.log.Info("node deleted", "node", name)
	c.queue.Add(name)
}

// maxNodeBatch bounds how many deleted nodes one pass cleans up.
const maxNodeBatch = 1000

func (c *Controller) runNodeWorker(ctx context.Context) {
	for {
		name, shutdown := c.queue.Get()
		if shutdown {
			return
		}
		// Take every deletion already queued: the blocks of all of them
		// are then found with one list of the blocks instead of one per
		// node (a rack going away deletes many nodes at once).
		names := []string{name}
		for c.queue.Len() > 0 && len(names) < maxNodeBatch {
			n, shutdown := c.queue.Get()
			if shutdown {
				break
			}
			names = append(names, n)
		}
		rctx, cancel := context.WithTimeout(ctx, minOperationTimeout)
		errs := c.releaseNodes(rctx, names)
		cancel()
		for i, name := range names {
			var inUse *nodeInUseError
			switch err := errs[i]; {
			case err == nil:
				c.queue.Forget(name)
			case errors.As(err, &inUse):
				// Not a failure: look again once pods or coild may be gone.
				c.log.Info("deleted node still in use; keeping its blocks", "node", name, "reason", inUse.reason, "detail", inUse.detail)
				c.queue.Forget(name)
				c.queue.AddAfter(name, c.opts.NodeRecheckInterval)
			case ctx.Err() != nil:
				// Shutting down; the next leader's first sweep finds the node.
				c.queue.Forget(name)
			default:
				c.log.Warn("could not clean up deleted node; will retry", "node", name, "err", err)
				c.queue.AddRateLimited(name)
			}
			c.queue.Done(name)
		}
	}
}

// releaseNodes runs releaseNode for each name, listing the blocks once.
// It returns one error (or nil) per name.
func (c *Controller) releaseNodes(ctx context.Context, names []string) []error {
	errs := make([]error, len(names))
	// Blocks are listed before the API is asked about any node, so a block
	// acquired after the API confirmed a deletion (a node re-registering
	// under the same name) is never in the list.
	all, err := c.store.ListBlocks(ctx, "")
	if err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("list blocks: %w", err)
		}
		return errs
	}
	byNode := map[string][]model.Block{}
	for _, b := range all {
		byNode[b.Node] = append(byNode[b.Node], b)
	}
	for i, name := range names {
		errs[i] = c.releaseNode(ctx, name, byNode[name])
	}
	return errs
}

// releaseNode frees the blocks and the node record of a node that no
// longer exists and that nothing uses any more (nodeReleasable). A node
// that exists, or whose absence cannot be confirmed, is left alone; one
// still in use is deferred (an error wrapping errNodeInUse).
//
// blocks are the node's blocks, listed before this call; each release is
// also guarded by the block's creation revision.
func (c *Controller) releaseNode(ctx context.Context, name string, blocks []model.Block) error {
	gone, err := c.nodeReleasable(ctx, name)
	if err != nil || !gone {
		return err
	}

	var released, addresses int64
	var ips []string
	for _, b := range blocks {
		n, err := c.store.ForceReleaseBlock(ctx, b)
		if errors.Is(err, model.ErrBlockLost) {
			continue // someone else released it meanwhile
		}
		if err != nil {
			return fmt.Errorf("release blocks of node %s: %w", name, err)
		}
		released++
		addresses += n
		ips = append(ips, b.String())
		c.opts.Metrics.reclaimedBlocks.Inc()
		c.opts.Metrics.reclaimedAddresses.WithLabelValues(causeNodeDeleted).Add(float64(n))
	}
	if err := c.store.DeleteNode(ctx, name); err != nil {
		return fmt.Errorf("delete record of node %s: %w", name, err)
	}
	if released == 0 {
		c.log.Info("cleaned up deleted node: no blocks, node record removed", "node", name)
	}
	if released > 0 {
		c.opts.Metrics.deletedNodes.Inc()
		c.log.Info("released blocks of deleted node", "node", name, "blocks", released, "addresses", addresses)
		c.opts.Recorder.Eventf(nodeRef(name), corev1.EventTypeNormal, EventBlocksReleased,
			"Released %d address blocks (%s) holding %d addresses of deleted node %s",
			released, strings.Join(ips, " "), addresses, name)
	}
	return nil
}

// errNodeInUse: the Node object is gone but the node may still run, so
// its blocks are kept for now. Errors wrapping it are *nodeInUseError.
var errNodeInUse = errors.New("deleted node still in use")

// nodeInUseError says why a deleted node's release waits; reason is a
// label of coil_controller_node_release_deferred_total.
type nodeInUseError struct {
	node, reason, detail string
}

func (e *nodeInUseError) Error() string {
	return fmt.Sprintf("node %s: %v: %s", e.node, errNodeInUse, e.detail)
}

func (e *nodeInUseError) Unwrap() error { return errNodeInUse }

// nodeReleasable decides whether the blocks of node name may be released.
// A deleted Node object is not a dead node (`kubectl delete node`, a
// cloud controller after an API hiccup): its pods may run on for a while,
// and another node taking its blocks would hand out their addresses
// again. So all of these must hold:
//   - the Node is gone, by a quorum read (the cache may be stale);
//   - no Pod in the API is bound to it outside phases Succeeded/Failed;
//   - its coild's liveness key has expired (model.Store.KeepNodeAlive).
//
// It returns false with no error when the node exists, an error wrapping
// errNodeInUse when it is gone but still in use, and any other error when
// a condition cannot be confirmed: then nothing is released either.
func (c *Controller) nodeReleasable(ctx context.Context, name string) (bool, error) {
	if !c.nodesSynced() {
		return false, fmt.Errorf("nodes: %w", audit.ErrNotSynced)
	}
	if _, err := c.nodes.Get(name); err == nil {
		return false, nil // it exists (again)
	}
	all, err := c.nodes.List(labels.Everything())
	if err != nil {
		return false, fmt.Errorf("list cached nodes: %w", err)
	}
	if len(all) == 0 {
		return false, fmt.Errorf("node %s: %w", name, audit.ErrNoNodes)
	}
	// A quorum read, not the cache: the cache may be stale, the API is the
	// truth about whether the node exists.
	if _, err := c.client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); err == nil {
		return false, nil
	} else if !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("confirm deletion of node %s: %w", name, err)
	}

	pod, err := c.boundPod(ctx, name)
	if err != nil {
		return false, err
	}
	if pod != "" {
		return false, c.deferRelease(name, deferPodsBound, "pod "+pod+" is still bound to it")
	}
	alive, err := c.store.NodeAlive(ctx, name)
	if err != nil {
		return false, fmt.Errorf("read liveness of node %s: %w", name, err)
	}
	if alive {
		return false, c.deferRelease(name, deferCoildAlive, "its coild still renews its liveness lease")
	}
	return true, nil
}

func (c *Controller) deferRelease(name, reason, detail string) error {
	c.opts.Metrics.releaseDeferred.WithLabelValues(reason).Inc()
	return &nodeInUseError{node: name, reason: reason, detail: detail}
}

// podListPage bounds one page of the quorum pod list.
const podListPage = 500

// boundPod returns the namespace/name of a pod bound to node that has not
// finished, or "" when there is none. The cache answers first when it can
// (a live pod there is enough to wait), but "none" is confirmed by a
// quorum list: a cache that lags must not free a running pod's address.
func (c *Controller) boundPod(ctx context.Context, node string) (string, error) {
	if c.podsSynced() {
		cached, err := c.podsByNode.ByIndex(podNodeIndex, node)
		if err != nil {
			return "", fmt.Errorf("list cached pods of node %s: %w", node, err)
		}
		for _, obj := range cached {
			if p, ok := obj.(*corev1.Pod); ok && holdsNode(p, node) {
				return p.Namespace + "/" + p.Name, nil
			}
		}
	}
	opts := metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
		Limit:         podListPage,
	}
	for {
		list, err := c.client.CoreV1().Pods(metav1.NamespaceAll).List(ctx, opts)
		if err != nil {
			return "", fmt.Errorf("list pods bound to node %s: %w", node, err)
		}
		for i := range list.Items {
			if p := &list.Items[i]; holdsNode(p, node) {
				return p.Namespace + "/" + p.Name, nil
			}
		}
		if list.Continue == "" {
			return "", nil
		}
		opts.Continue = list.Continue
	}
}

// podNodeIndex indexes the pod cache by spec.nodeName.
const podNodeIndex = "spec.nodeName"

func podNodeName(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.NodeName == "" {
		return nil, nil
	}
	return []string{p.Spec.NodeName}, nil
}

// holdsNode reports whether pod p may still run on node: bound to it and
// not finished.
func holdsNode(p *corev1.Pod, node string) bool {
	if p.Spec.NodeName != node {
		return false
	}
	return p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed
}

// sweep compares etcd with the informer caches once: it refreshes the
// metrics, queues the clean-up of missing nodes and reclaims leaked
// addresses that have stayed candidates for the grace period. Run calls
// it every ScanInterval; it returns the reason when it skipped a step.
func (c *Controller) sweep(ctx context.Context) error {
	if !c.nodesSynced() {
		c.skipped("nodes-not-synced")
		return fmt.Errorf("nodes: %w", audit.ErrNotSynced)
	}
	nodes, err := c.nodes.List(labels.Everything())
	if err != nil {
		c.skipped("api-error")
		return fmt.Errorf("list cached nodes: %w", err)
	}
	// HasSynced is read before the list so a true answer covers it.
	podsSynced := c.podsSynced()
	var pods []*corev1.Pod
	if podsSynced {
		if pods, err = c.pods.List(labels.Everything()); err != nil {
			c.skipped("api-error")
			return fmt.Errorf("list cached pods: %w", err)
		}
	}
	snap, err := audit.ReadSnapshot(ctx, c.store)
	if err != nil {
		c.skipped("etcd-error")
		return err
	}
	rep := audit.Compare(snap, nodes, pods, podsSynced, time.Now())
	c.opts.Metrics.observe(rep)
	// Capacity does not depend on the API's view: it is published even
	// when a guard below stops the sweep.
	if err := c.observeCapacity(ctx, snap); err != nil {
		c.log.Warn("capacity metrics not refreshed", "err", err)
	}

	if err := rep.NodeGuard(); err != nil {
		c.skipped(reasonOf(err))
		c.tracker.reset()
		return fmt.Errorf("not releasing blocks of missing nodes: %w", err)
	}
	if err := c.capNodeRelease(rep); err != nil {
		c.tracker.reset()
		return err
	}
	for _, m := range rep.MissingNodes {
		c.queue.Add(m.Name)
	}

	if err := rep.LeakGuard(c.opts.MaxReclaimRatio); err != nil {
		c.skipped(reasonOf(err))
		c.tracker.reset()
		return fmt.Errorf("not reclaiming addresses: %w", err)
	}
	matured := c.tracker.observe(rep.LeakCandidates, rep.Time, c.opts.LeakGrace)
	if len(rep.LeakCandidates) > 0 {
		c.log.Info("leak candidates", "candidates", len(rep.LeakCandidates), "past-grace", len(matured))
	}
	var firstErr error
	for _, cand := range matured {
		if err := c.reclaim(ctx, cand); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		c.skipped("reclaim-error")
		return firstErr
	}
	c.opts.Metrics.lastSweep.SetToCurrentTime()
	return nil
}

// observeCapacity publishes the capacity of every pool and subnet, and
// announces each pool whose usage ratio crossed PoolUsageWarning since the
// last sweep, up or down, with one log line and one event. A pool drained
// as a whole is never warned about: being full is what its drain is for.
func (c *Controller) observeCapacity(ctx context.Context, snap audit.Snapshot) error {
	pools, err := c.store.ListPools(ctx)
	if err != nil {
		return fmt.Errorf("list pools: %w", err)
	}
	usage := make([]model.PoolUsage, 0, len(pools))
	for _, p := range pools {
		usage = append(usage, p.Usage(snap.Blocks, snap.Addresses))
	}
	c.opts.Metrics.observeCapacity(usage)

	high := make(map[string]bool, len(c.usageHigh))
	limit := c.opts.PoolUsageWarning
	for _, u := range usage {
		ratio := u.Ratio()
		now := !u.Drained && ratio >= limit
		was := c.usageHigh[u.Pool]
		high[u.Pool] = now
		switch {
		case now && !was:
			c.log.Warn("pool usage reached the warning level", "pool", u.Pool, "ratio", ratio, "warning", limit,
				"in-use", u.AddressesInUse, "usable", u.Usable(), "free-blocks", u.BlocksFree)
			c.opts.Recorder.Eventf(clusterRef(), corev1.EventTypeWarning, EventPoolUsageHigh,
				"Pool %q is %.1f%% used (warning at %.1f%%): %d of %d usable addresses in use, %d free blocks left; add a subnet (coilctl pool add-subnet %s CIDR)",
				u.Pool, 100*ratio, 100*limit, u.AddressesInUse, u.Usable(), u.BlocksFree, u.Pool)
		case was && !now:
			c.log.Info("pool usage back below the warning level", "pool", u.Pool, "ratio", ratio, "warning", limit)
			c.opts.Recorder.Eventf(clusterRef(), corev1.EventTypeNormal, EventPoolUsageNormal,
				"Pool %q is %.1f%% used, below the warning at %.1f%% again", u.Pool, 100*ratio, 100*limit)
		}
	}
	for pool, was := range c.usageHigh {
		if _, ok := high[pool]; !ok && was {
			c.log.Info("pool with high usage deleted", "pool", pool)
		}
	}
	c.usageHigh = high
	return nil
}

// capNodeRelease refuses the sweep's whole batch of missing nodes when
// more of them than MaxNodeReleaseRatio of the nodes known to etcd are
// missing, as LeakGuard caps the leak sweep: it counts the reason, records
// a warning event and returns why. The same view of the cluster is not
// trusted for leaks either, so the caller skips those too.
func (c *Controller) capNodeRelease(rep audit.Report) error {
	err := rep.NodeReleaseGuard(c.opts.MaxNodeReleaseRatio)
	if err == nil {
		return nil
	}
	c.skipped(reasonOf(err))
	names := make([]string, 0, len(rep.MissingNodes))
	for _, m := range rep.MissingNodes {
		names = append(names, m.Name)
	}
	const shown = 10
	list := strings.Join(names[:min(len(names), shown)], " ")
	if len(names) > shown {
		list += " ..."
	}
	c.opts.Recorder.Eventf(clusterRef(), corev1.EventTypeWarning, EventNodeReleaseRefused,
		"Not releasing the blocks of %s: %v; check --kubeconfig and --etcd-prefix, or raise --max-node-release-ratio",
		list, err)
	return fmt.Errorf("not releasing blocks of missing nodes: %w", err)
}

// reclaim releases one address that has been a candidate for the grace
// period, after asking the API once more whether its pod is really gone.
func (c *Controller) reclaim(ctx context.Context, cand audit.LeakCandidate) error {
	a := cand.Address
	pod, err := c.client.CoreV1().Pods(a.Namespace).Get(ctx, a.Pod, metav1.GetOptions{})
	switch {
	case err == nil && pod.Spec.NodeName == a.Node && audit.IsPodUID(pod, a.PodUID):
		c.tracker.forget(a) // the cache was behind; the pod is there
		return nil
	case err != nil && !apierrors.IsNotFound(err):
		return fmt.Errorf("confirm pod %s/%s is gone: %w", a.Namespace, a.Pod, err)
	}
	ips := ipList(a.IPs())
	if c.opts.ReportOnly {
		if !c.tracker.markReported(a) {
			return nil // told once already
		}
		c.log.Warn("leaked address (not reclaimed: reclaim disabled)", "address", ips, "pod", a.Namespace+"/"+a.Pod,
			"node", a.Node, "container", a.ContainerID, "reason", cand.Reason)
		c.opts.Recorder.Eventf(podRef(a), corev1.EventTypeWarning, EventLeakFound,
			"Address %s on node %s (container %s) looks leaked: %s", ips, a.Node, audit.ShortID(a.ContainerID), cand.Reason)
		return nil
	}
	err = c.store.ReleaseAddress(ctx, a)
	if errors.Is(err, model.ErrNotOwner) {
		c.tracker.forget(a) // allocated again meanwhile: not ours to free
		return nil
	}
	if err != nil {
		return fmt.Errorf("reclaim %s of %s/%s: %w", ips, a.Namespace, a.Pod, err)
	}
	c.tracker.forget(a)
	c.opts.Metrics.reclaimedAddresses.WithLabelValues(causeLeak).Inc()
	c.log.Info("reclaimed leaked address", "address", ips, "pod", a.Namespace+"/"+a.Pod,
		"node", a.Node, "container", a.ContainerID, "reason", cand.Reason)
	c.opts.Recorder.Eventf(podRef(a), corev1.EventTypeNormal, EventAddressReclaimed,
		"Reclaimed address %s on node %s (container %s): %s for longer than %s",
		ips, a.Node, audit.ShortID(a.ContainerID), cand.Reason, c.opts.LeakGrace)
	return nil
}

func (c *Controller) skipped(reason string) {
	c.opts.Metrics.sweepSkipped.WithLabelValues(reason).Inc()
}

// reasonOf turns a guard error into a metric label.
func reasonOf(err error) string {
	switch {
	case errors.Is(err, audit.ErrNotSynced):
		return "pods-not-synced"
	case errors.Is(err, audit.ErrNoNodes):
		return "no-nodes"
	case errors.Is(err, audit.ErrNoPods):
		return "no-pods"
	case errors.Is(err, audit.ErrTooManyLeaks):
		return "too-many-leaks"
	case errors.Is(err, audit.ErrTooManyNodes):
		return "too-many-nodes"
	default:
		return "error"
	}
}

func ipList(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, ",")
}

// nodeRef and podRef name objects that are already gone, so events are
// recorded against a reference rather than a fetched object.
func nodeRef(name string) *corev1.ObjectReference {
	return &corev1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: name}
}

// clusterRef is the object of events about the whole cluster: the
// namespace whose UID is its identity.
func clusterRef() *corev1.ObjectReference {
	return &corev1.ObjectReference{APIVersion: "v1", Kind: "Namespace", Name: "kube-system"}
}

func podRef(a model.Address) *corev1.ObjectReference {
	return &corev1.ObjectReference{APIVersion: "v1", Kind: "Pod", Namespace: a.Namespace, Name: a.Pod}
}

// trimObject keeps only what the controller reads of Nodes and Pods, so
// the caches of a large cluster stay small.
func trimObject(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return &corev1.Pod{
			ObjectMeta: trimMeta(o.ObjectMeta),
			Spec:       corev1.PodSpec{NodeName: o.Spec.NodeName, HostNetwork: o.Spec.HostNetwork},
			Status:     corev1.PodStatus{Phase: o.Status.Phase},
		}, nil
	case *corev1.Node:
		return &corev1.Node{ObjectMeta: trimMeta(o.ObjectMeta)}, nil
	default:
		return obj, nil
	}
}

func trimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name: m.Name, Namespace: m.Namespace, UID: m.UID,
		ResourceVersion: m.ResourceVersion, CreationTimestamp: m.CreationTimestamp,
		DeletionTimestamp: m.DeletionTimestamp,
		Annotations:       mirrorOnly(m.Annotations),
	}
}

// mirrorOnly keeps the one annotation the comparison reads: a static
// pod's address is recorded under the hash its mirror Pod carries there.
func mirrorOnly(annotations map[string]string) map[string]string {
	hash, ok := annotations[audit.MirrorPodAnnotation]
	if !ok {
		return nil
	}
	return map[string]string{audit.MirrorPodAnnotation: hash}
}
