package controller

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv"
	kubeapitest "github.com/coil-project/coil/internal/testenv/kubeapi"
	"github.com/coil-project/coil/model"
	"github.com/prometheus/client_golang/prometheus"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
)

// The controller runs in these tests as a restricted user holding exactly
// ClusterRules and LeaseRules, so the documented RBAC is tested too.
const (
	controllerUser = "coil-controller"
	// noPodsUser has ClusterRules without pods: its pod cache never syncs.
	noPodsUser = "coil-controller-no-pods"
)

// Short lease timing so that hand-overs take about a second.
const (
	testLeaseDuration = 2 * time.Second
	testRenewDeadline = 1500 * time.Millisecond
	testRetryPeriod   = 200 * time.Millisecond
)

func setupRBAC(ctx context.Context, api *kubeapitest.Server) error {
	admin, err := kubernetes.NewForConfig(api.Config)
	if err != nil {
		return err
	}
	var noPods []rbacv1.PolicyRule
	for _, r := range ClusterRules() {
		r.Resources = deleteString(r.Resources, "pods")
		noPods = append(noPods, r)
	}
	for user, rules := range map[string][]rbacv1.PolicyRule{controllerUser: ClusterRules(), noPodsUser: noPods} {
		role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: rules}
		if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create cluster role: %w", err)
		}
		binding := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
		}
		if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create cluster role binding: %w", err)
		}
	}
	return nil
}

func deleteString(list []string, s string) []string {
	var out []string
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

// cluster is one test's corner of the shared API server: its own namespace
// (for pods and the leader Lease) and node names starting with its prefix.
type cluster struct {
	api    *kubeapitest.Server
	admin  kubernetes.Interface
	ns     string
	prefix string
	nodes  []string
}

var clusterSeq atomic.Int64

func newCluster(t *testing.T) *cluster {
	t.Helper()
	api := kubeAPI(t)
	admin, err := kubernetes.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	n := clusterSeq.Add(1)
	c := &cluster{api: api, admin: admin, ns: fmt.Sprintf("test-%d", n), prefix: fmt.Sprintf("t%d-", n)}
	ctx := context.Background()
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "coil-controller-lease", Namespace: c.ns}, Rules: LeaseRules()}
	if _, err := admin.RbacV1().Roles(c.ns).Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "coil-controller-lease", Namespace: c.ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{
			{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: controllerUser},
			{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: noPodsUser},
		},
	}
	if _, err := admin.RbacV1().RoleBindings(c.ns).Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Later tests share the server: leave no pods or nodes of ours behind.
	// (Namespaces are not deleted: without a controller manager they would
	// stay Terminating anyway.)
	t.Cleanup(func() {
		ctx := context.Background()
		zero := metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}
		if err := admin.CoreV1().Pods(c.ns).DeleteCollection(ctx, zero, metav1.ListOptions{}); err != nil {
			t.Errorf("delete pods: %v", err)
		}
		for _, name := range c.nodes {
			if err := admin.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete node %s: %v", name, err)
			}
		}
	})
	return c
}

func (c *cluster) nodeName(short string) string { return c.prefix + short }

func (c *cluster) createNode(t *testing.T, short string) string {
	t.Helper()
	name := c.nodeName(short)
	if _, err := c.admin.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	c.nodes = append(c.nodes, name)
	return name
}

func (c *cluster) deleteNode(t *testing.T, name string) {
	t.Helper()
	if err := c.admin.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) createPod(t *testing.T, name, nodeName string) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.ns},
		Spec: corev1.PodSpec{
			NodeName:   nodeName,
			Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
	if _, err := c.admin.CoreV1().Pods(c.ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// deletePod deletes at once, as kubelet's final deletion does; no CNI DEL
// happens in these tests, which is the point.
func (c *cluster) deletePod(t *testing.T, name string) {
	t.Helper()
	err := c.admin.CoreV1().Pods(c.ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) clientAs(t *testing.T, user string) kubernetes.Interface {
	t.Helper()
	cfg, err := c.api.UserConfig(user)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// events returns the reasons of events about the object named name.
func (c *cluster) events(t *testing.T, namespace, name string) []string {
	t.Helper()
	l, err := c.admin.CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("involvedObject.name", name).String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, e := range l.Items {
		reasons = append(reasons, e.Reason)
	}
	return reasons
}

func hasReason(reasons []string, want string) bool {
	for _, r := range reasons {
		if r == want {
			return true
		}
	}
	return false
}

// instance is one coil-controller replica run in the test process, the
// way main wires it: leader election around Controller.Run.
type instance struct {
	name    string
	reg     *prometheus.Registry
	store   *watchedStore
	leading atomic.Bool
	stop    func() error
}

// overlap counts how many instances are inside Controller.Run at once, and
// remembers the highest count seen: more than one means two replicas acted.
type overlap struct {
	mu       sync.Mutex
	now, max int
}

func (o *overlap) enter() {
	o.mu.Lock()
	o.now++
	o.max = max(o.max, o.now)
	o.mu.Unlock()
}

func (o *overlap) leave() {
	o.mu.Lock()
	o.now--
	o.mu.Unlock()
}

func (o *overlap) highest() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.max
}

type instanceOptions struct {
	user    string
	opts    Options
	overlap *overlap // nil: not tracked
}

func (c *cluster) start(t *testing.T, name string, st Store, io instanceOptions) *instance {
	t.Helper()
	in := &instance{name: name, reg: prometheus.NewRegistry()}
	in.store = &watchedStore{Store: st, active: &in.leading}
	client := c.clientAs(t, io.user)
	recorder, stopEvents := NewEventRecorder(client)
	t.Cleanup(stopEvents)
	opts := io.opts
	opts.Recorder = recorder
	opts.Metrics = NewMetrics(in.reg)
	opts.Logger = testLogger(t, name)
	ctrl := New(in.store, client, opts)
	le := LeaderElection{
		Client: client, Namespace: c.ns, Identity: name,
		LeaseDuration: testLeaseDuration, RenewDeadline: testRenewDeadline, RetryPeriod: testRetryPeriod,
		OnLeading: opts.Metrics.SetLeader,
		Logger:    opts.Logger,
	}
	in.stop = runInBackground(t, func(ctx context.Context) error {
		return le.Run(ctx, func(ctx context.Context) error {
			if io.overlap != nil {
				io.overlap.enter()
				defer io.overlap.leave()
			}
			in.leading.Store(true)
			defer in.leading.Store(false)
			return ctrl.Run(ctx)
		})
	})
	return in
}

func (in *instance) waitLeading(t *testing.T) {
	t.Helper()
	testenv.Eventually(t, 15*time.Second, in.name+" to lead", in.leading.Load)
}

func (in *instance) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	return metricValue(t, in.reg, name, labels)
}

// watchedStore counts writes and flags any made while its instance is not
// inside Controller.Run.
type watchedStore struct {
	Store
	active     *atomic.Bool
	writes     atomic.Int64
	violations atomic.Int64
}

func (s *watchedStore) wrote() {
	s.writes.Add(1)
	if !s.active.Load() {
		s.violations.Add(1)
	}
}

func (s *watchedStore) ForceReleaseBlock(ctx context.Context, b model.Block) (int64, error) {
	s.wrote()
	return s.Store.ForceReleaseBlock(ctx, b)
}

func (s *watchedStore) DeleteNode(ctx context.Context, name string) error {
	s.wrote()
	return s.Store.DeleteNode(ctx, name)
}

func (s *watchedStore) ReleaseAddress(ctx context.Context, a model.Address) error {
	s.wrote()
	return s.Store.ReleaseAddress(ctx, a)
}

// quiet keeps the leak sweep out of the way of node tests.
var quiet = Options{ScanInterval: time.Hour, LeakGrace: time.Hour}

func TestNodeDeletionReleasesBlocks(t *testing.T) {
	c := newCluster(t)
	st := newStore(t)
	al := newAllocator(st)
	ctx := context.Background()
	n1, n2 := c.createNode(t, "n1"), c.createNode(t, "n2")
	for _, n := range []string{n1, n2} {
		if err := st.PutNode(ctx, model.Node{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	al.alloc(t, n1, c.ns, "a", false)
	al.alloc(t, n1, c.ns, "b", true)
	kept := al.alloc(t, n2, c.ns, "c", false)
	c.createPod(t, "a", n1)
	c.createPod(t, "b", n1)
	c.createPod(t, "c", n2)

	in := c.start(t, "solo", st, instanceOptions{user: controllerUser, opts: quiet})
	in.waitLeading(t)
	if nodeBlocks(t, st, n1) != 2 {
		t.Fatal("blocks of an existing node were released")
	}

	// The node went away with its pods (a node whose pods remain is
	// TestDeletedNodeInUseKeepsBlocks).
	c.deletePod(t, "a")
	c.deletePod(t, "b")
	start := time.Now()
	c.deleteNode(t, n1)
	testenv.Eventually(t, 10*time.Second, "release of the deleted node's blocks and record", func() bool {
		return nodeBlocks(t, st, n1) == 0 && !hasNodeRecord(t, st, n1)
	})
	t.Logf("blocks released %s after the node was deleted", time.Since(start).Round(time.Millisecond))

	if nodeBlocks(t, st, n2) != 1 || !hasNodeRecord(t, st, n2) || !exists(t, st, kept) {
		t.Error("state of the remaining node was touched")
	}
	if got := in.metric(t, "coil_controller_reclaimed_blocks_total", nil); got != 2 {
		t.Errorf("reclaimed blocks metric = %v, want 2", got)
	}
	if got := in.metric(t, "coil_controller_reclaimed_addresses_total", map[string]string{"cause": causeNodeDeleted}); got != 2 {
		t.Errorf("reclaimed addresses metric = %v, want 2", got)
	}
	testenv.Eventually(t, 10*time.Second, "a BlocksReleased event", func() bool {
		return hasReason(c.events(t, metav1.NamespaceDefault, n1), EventBlocksReleased)
	})
}

func TestNodeDeletedWhileControllerDown(t *testing.T) {
	c := newCluster(t)
	st := newStore(t)
	al := newAllocator(st)
	ctx := context.Background()
	n1, n2 := c.createNode(t, "n1"), c.createNode(t, "n2")
	// n3 never had a Node object in this cluster, only a stale record.
	n3 := c.nodeName("n3")
	for _, n := range []string{n1, n2, n3} {
		if err := st.PutNode(ctx, model.Node{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	al.alloc(t, n1, c.ns, "a", false)
	al.alloc(t, n1, c.ns, "b", false)
	kept := al.alloc(t, n2, c.ns, "c", false)
	c.createPod(t, "c", n2)
	c.deleteNode(t, n1)

	// 2 of the 3 nodes known to etcd are missing: above the default
	// --max-node-release-ratio, which TestNodeReleaseCapped covers.
	opts := quiet
	opts.MaxNodeReleaseRatio = 1
	in := c.start(t, "solo", st, instanceOptions{user: controllerUser, opts: opts})
	in.waitLeading(t)
	testenv.Eventually(t, 10*time.Second, "start-up clean-up of the node deleted earlier", func() bool {
		return nodeBlocks(t, st, n1) == 0 && !hasNodeRecord(t, st, n1) && !hasNodeRecord(t, st, n3)
	})
	if nodeBlocks(t, st, n2) != 1 || !hasNodeRecord(t, st, n2) || !exists(t, st, kept) {
		t.Error("state of the remaining node was touched")
	}
}

func TestLeakedAddressReclaimedAfterGrace(t *testing.T) {
	const grace = 2 * time.Second
	c := newCluster(t)
	st := newStore(t)
	al := newAllocator(st)
	n1, n2 := c.createNode(t, "n1"), c.createNode(t, "n2")
	var live []model.Address
	for _, p := range []string{"a", "b", "c"} {
		live = append(live, al.alloc(t, n1, c.ns, p, false))
		c.createPod(t, p, n1)
	}
	deleted := al.alloc(t, n1, c.ns, "deleted", false)
	c.createPod(t, "deleted", n1)
	// "moved" was recreated on n2 without a CNI DEL on n1.
	moved := al.alloc(t, n1, c.ns, "moved", true)
	c.createPod(t, "moved", n2)

	started := time.Now()
	in := c.start(t, "solo", st, instanceOptions{user: controllerUser,
		opts: Options{ScanInterval: 200 * time.Millisecond, LeakGrace: grace}})
	in.waitLeading(t)
	testenv.Eventually(t, 10*time.Second, "a complete sweep", func() bool {
		return in.metric(t, "coil_controller_last_successful_sweep_timestamp_seconds", nil) > 0
	})
	if !exists(t, st, deleted) {
		t.Fatal("the address of a running pod was reclaimed")
	}

	deletedAt := time.Now()
	c.deletePod(t, "deleted")
	var gone time.Time
	testenv.Eventually(t, grace+10*time.Second, "reclaim of the deleted pod's address", func() bool {
		if exists(t, st, deleted) {
			return false
		}
		gone = time.Now()
		return true
	})
	after := gone.Sub(deletedAt)
	t.Logf("address reclaimed %s after the pod was deleted (grace %s)", after.Round(time.Millisecond), grace)
	if after < grace {
		t.Errorf("reclaimed %s after the pod was deleted, before the grace period of %s", after, grace)
	}
	if exists(t, st, moved) {
		t.Error("the record of the pod that moved to another node was not reclaimed")
	} else if time.Since(started) < grace {
		t.Error("the moved pod's record was reclaimed before the grace period")
	}
	for _, a := range live {
		if !exists(t, st, a) {
			t.Errorf("address of live pod %s was reclaimed", a.Pod)
		}
	}
	if got := in.metric(t, "coil_controller_reclaimed_addresses_total", map[string]string{"cause": causeLeak}); got != 2 {
		t.Errorf("reclaimed addresses metric = %v, want 2", got)
	}
	testenv.Eventually(t, 10*time.Second, "an AddressReclaimed event", func() bool {
		return hasReason(c.events(t, c.ns, "deleted"), EventAddressReclaimed)
	})
}

// TestUnreadablePodsReclaimNothing runs against the real API: a controller
// that may not read pods (its pod cache never syncs) and one whose pod
// list misses most pods must both leave every address alone. A deleted
// node's blocks are released only when the pods bound to it can be read.
func TestUnreadablePodsReclaimNothing(t *testing.T) {
	tests := []struct {
		name       string
		user       string
		pods       []string
		wantReason string
		// wantNodeReleased: the deleted node's block is released (it
		// cannot be while no pod can be read: one may still be bound).
		wantNodeReleased bool
	}{
		{name: "pods forbidden", user: noPodsUser, pods: []string{"a", "b", "c"}, wantReason: "pods-not-synced"},
		{name: "most pods missing", user: controllerUser, pods: []string{"a"}, wantReason: "too-many-leaks", wantNodeReleased: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			st := newStore(t)
			al := newAllocator(st)
			n1, gone := c.createNode(t, "n1"), c.createNode(t, "gone")
			for _, p := range []string{"a", "b", "c"} {
				al.alloc(t, n1, c.ns, p, false)
			}
			for _, p := range tc.pods {
				c.createPod(t, p, n1)
			}
			al.alloc(t, gone, c.ns, "x", false)
			c.deleteNode(t, gone)

			in := c.start(t, "solo", st, instanceOptions{user: tc.user,
				opts: Options{ScanInterval: 200 * time.Millisecond, LeakGrace: 0}})
			in.waitLeading(t)
			if tc.wantNodeReleased {
				testenv.Eventually(t, 10*time.Second, "release of the deleted node's block", func() bool {
					return nodeBlocks(t, st, gone) == 0
				})
			}
			testenv.Eventually(t, 10*time.Second, "guard "+tc.wantReason+" to trip 3 times", func() bool {
				return in.metric(t, "coil_controller_sweep_skipped_total", map[string]string{"reason": tc.wantReason}) >= 3
			})
			if !tc.wantNodeReleased && nodeBlocks(t, st, gone) != 1 {
				t.Error("the deleted node's block was released although no pod bound to it could be read")
			}
			addrs, err := st.ListAddresses(context.Background(), "")
			if err != nil {
				t.Fatal(err)
			}
			want := 3
			if !tc.wantNodeReleased {
				want++ // the deleted node's, kept with its block
			}
			if len(addrs) != want {
				t.Errorf("%d address records left, want %d", len(addrs), want)
			}
		})
	}
}

// TestOneLeaderActs runs two replicas against one etcd and API server and
// checks that only the lease holder acts, that the other takes over on a
// graceful hand-over, and that a replica whose lease is taken away stops.
func TestOneLeaderActs(t *testing.T) {
	c := newCluster(t)
	st := newStore(t)
	al := newAllocator(st)
	ov := &overlap{}
	opts := instanceOptions{user: controllerUser, opts: Options{ScanInterval: 300 * time.Millisecond, LeakGrace: time.Hour}, overlap: ov}

	a := c.start(t, "replica-a", st, opts)
	a.waitLeading(t)
	b := c.start(t, "replica-b", st, opts)

	// Both run; only a acts. (n0 stays: with no node at all the
	// controller would refuse to release anything.)
	c.createNode(t, "n0")
	n1 := c.createNode(t, "n1")
	al.alloc(t, n1, c.ns, "p1", false)
	time.Sleep(time.Second) // b campaigns several times meanwhile
	c.deleteNode(t, n1)
	testenv.Eventually(t, 10*time.Second, "release by the leader", func() bool { return nodeBlocks(t, st, n1) == 0 })
	if b.leading.Load() || b.store.writes.Load() != 0 {
		t.Fatalf("standby replica acted: leading=%v writes=%d", b.leading.Load(), b.store.writes.Load())
	}
	if a.store.writes.Load() == 0 {
		t.Fatal("leader made no write")
	}

	// Graceful hand-over: a stops (releasing the lease after its work has
	// stopped), b takes over well before the lease would expire.
	stoppedAt := time.Now()
	if err := a.stop(); err != nil {
		t.Fatalf("replica a: %v", err)
	}
	b.waitLeading(t)
	t.Logf("replica b leads %s after replica a stopped", time.Since(stoppedAt).Round(time.Millisecond))
	n2 := c.createNode(t, "n2")
	al.alloc(t, n2, c.ns, "p2", false)
	c.deleteNode(t, n2)
	testenv.Eventually(t, 10*time.Second, "release by the new leader", func() bool { return nodeBlocks(t, st, n2) == 0 })
	if b.store.writes.Load() == 0 {
		t.Fatal("new leader made no write")
	}

	// A standby that is shut down while campaigning returns at once and
	// never acted.
	standby := c.start(t, "replica-c", st, opts)
	time.Sleep(500 * time.Millisecond)
	if err := standby.stop(); err != nil {
		t.Errorf("standby replica: %v", err)
	}
	if standby.store.writes.Load() != 0 {
		t.Error("standby replica wrote")
	}

	// Someone else takes the lease (as a replica would after b stalled):
	// b must notice within the renew deadline and stop acting.
	hijack(t, c, DefaultLeaseName, "intruder")
	testenv.Eventually(t, 10*time.Second, "replica b to stop leading", func() bool { return !b.leading.Load() })
	if err := b.stop(); !errors.Is(err, ErrLeadershipLost) {
		t.Errorf("replica b returned %v, want ErrLeadershipLost", err)
	}

	if ov.highest() > 1 {
		t.Errorf("%d replicas were acting at the same time", ov.highest())
	}
	for _, in := range []*instance{a, b} {
		if v := in.store.violations.Load(); v != 0 {
			t.Errorf("%s wrote %d times while not leading", in.name, v)
		}
	}
}

// hijack makes holder the owner of the lease for an hour.
func hijack(t *testing.T, c *cluster, name, holder string) {
	t.Helper()
	ctx := context.Background()
	testenv.Eventually(t, 10*time.Second, "lease update", func() bool {
		l, err := c.admin.CoordinationV1().Leases(c.ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		now := metav1.NewMicroTime(time.Now())
		l.Spec = coordinationv1.LeaseSpec{
			HolderIdentity: ptr.To(holder), LeaseDurationSeconds: ptr.To[int32](3600),
			AcquireTime: &now, RenewTime: &now,
		}
		_, err = c.admin.CoordinationV1().Leases(c.ns).Update(ctx, l, metav1.UpdateOptions{})
		return err == nil
	})
}

// TestDeletedNodeInUseKeepsBlocks deletes the Node object of a node that
// is still in use, as `kubectl delete node` or a cloud controller's
// hiccup does: while a Pod is bound to it or its coild holds its liveness
// key, nothing of it is released; once the cause is gone, its blocks are
// released within the liveness TTL and one recheck. A pod that has
// finished does not hold the node.
func TestDeletedNodeInUseKeepsBlocks(t *testing.T) {
	const ttl = 2 * time.Second
	tests := []struct {
		name string
		// hold makes the node look in use and returns what ends that.
		hold      func(t *testing.T, c *cluster, st *model.Store, node string) (end func())
		wantDefer string // "" when the node is released at once
	}{
		{
			name: "pod bound",
			hold: func(t *testing.T, c *cluster, _ *model.Store, node string) func() {
				c.createPod(t, "bound", node)
				return func() { c.deletePod(t, "bound") }
			},
			wantDefer: deferPodsBound,
		},
		{
			name: "coild alive",
			hold: func(t *testing.T, _ *cluster, st *model.Store, node string) func() {
				return holdLiveness(t, st, node, ttl)
			},
			wantDefer: deferCoildAlive,
		},
		{
			name: "pod finished",
			hold: func(t *testing.T, c *cluster, _ *model.Store, node string) func() {
				c.createPod(t, "done", node)
				c.setPodPhase(t, "done", corev1.PodSucceeded)
				return func() {}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t)
			st := newStore(t)
			al := newAllocator(st)
			c.createNode(t, "n0") // a node must remain, or nothing is released
			n1 := c.createNode(t, "n1")
			if err := st.PutNode(context.Background(), model.Node{Name: n1}); err != nil {
				t.Fatal(err)
			}
			al.alloc(t, n1, c.ns, "a", false)
			end := tc.hold(t, c, st, n1)

			in := c.start(t, "solo", st, instanceOptions{user: controllerUser,
				opts: Options{ScanInterval: time.Hour, LeakGrace: time.Hour, NodeRecheckInterval: 300 * time.Millisecond}})
			in.waitLeading(t)
			c.deleteNode(t, n1)
			if tc.wantDefer != "" {
				testenv.Eventually(t, 10*time.Second, "the release to be deferred 3 times", func() bool {
					if nodeBlocks(t, st, n1) == 0 {
						t.Fatal("the blocks of a deleted node still in use were released")
					}
					return in.metric(t, "coil_controller_node_release_deferred_total", map[string]string{"reason": tc.wantDefer}) >= 3
				})
				if !hasNodeRecord(t, st, n1) {
					t.Fatal("the record of a node still in use was deleted")
				}
			}
			end()
			testenv.Eventually(t, ttl+10*time.Second, "release once the node is no longer in use", func() bool {
				return nodeBlocks(t, st, n1) == 0 && !hasNodeRecord(t, st, n1)
			})
		})
	}
}

// holdLiveness keeps node's liveness key as its coild does, until the
// returned function stops renewing it; the key then expires with its lease.
func holdLiveness(t *testing.T, st *model.Store, node string, ttl time.Duration) (stop func()) {
	t.Helper()
	halt := runInBackground(t, func(ctx context.Context) error {
		err := st.KeepNodeAlive(ctx, node, ttl, 200*time.Millisecond, nil)
		if ctx.Err() != nil {
			return nil // stopped by the test
		}
		return err
	})
	testenv.Eventually(t, 10*time.Second, "the liveness key", func() bool {
		alive, err := st.NodeAlive(context.Background(), node)
		if err != nil {
			t.Fatal(err)
		}
		return alive
	})
	return func() {
		if err := halt(); err != nil {
			t.Errorf("liveness: %v", err)
		}
	}
}

func (c *cluster) setPodPhase(t *testing.T, name string, phase corev1.PodPhase) {
	t.Helper()
	ctx := context.Background()
	p, err := c.admin.CoreV1().Pods(c.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status.Phase = phase
	if _, err := c.admin.CoreV1().Pods(c.ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}
