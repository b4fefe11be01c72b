package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coil-project/coil/model"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	policylisters "k8s.io/client-go/listers/policy/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

// Labels and names of the gateway objects coil-controller manages.
const (
	// ManagedByLabel marks the Deployments and PodDisruptionBudgets
	// coil-controller made for an egress (with ManagedByValue), and their
	// pods; it only ever touches objects that carry it.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "coil-controller"
	// GatewaySpecAnnotation holds a hash of the Deployment spec
	// coil-controller wants, so that a change of the egress (or a hand
	// edit of the annotation) is seen without comparing the spec the API
	// server filled with defaults.
	GatewaySpecAnnotation = "coil.cybozu.com/gateway-spec"
	// GatewayCommand runs in the gateway pods when they use the default
	// (Coil) image: it holds the pod's network namespace, which coild on
	// the node programs.
	GatewayCommand = "coil-egress"
	// gatewayContainer names the gateway pods' container.
	gatewayContainer = "gateway"
	// gatewayUser is the unprivileged user the gateway pods run as: coild
	// configures their network from outside, they need no privilege.
	gatewayUser = 65534
)

// GatewayObjectName is the name of the Deployment and the
// PodDisruptionBudget of the gateways of egress name.
func GatewayObjectName(egress string) string { return egress + "-gateway" }

// Event reasons about managed gateways.
const (
	EventGatewaysCreated  = "EgressGatewaysCreated"
	EventGatewaysUpdated  = "EgressGatewaysUpdated"
	EventGatewaysDeleted  = "EgressGatewaysDeleted"
	EventGatewayNameTaken = "EgressGatewayNameTaken"
)

// DefaultEgressRetry is how soon the egress watch is restarted after it
// failed.
const DefaultEgressRetry = 5 * time.Second

// EgressStore is what the gateway manager reads from etcd.
type EgressStore interface {
	WatchEgresses(ctx context.Context, retry time.Duration, fn func([]model.Egress)) error
	GetEgress(ctx context.Context, namespace, name string) (model.Egress, error)
}

// GatewayOptions tune a Gateways manager.
type GatewayOptions struct {
	// Image is the gateway image of egresses that name none: the Coil
	// image, whose GatewayCommand the pods run. Empty: such egresses get
	// no gateways, and an error is logged.
	Image string
	// ResyncPeriod is the informers' resync period; 0 takes
	// DefaultResyncPeriod.
	ResyncPeriod time.Duration
	// Recorder receives events; nil records none.
	Recorder record.EventRecorder
	// Metrics receives the metrics; nil keeps them unregistered.
	Metrics *Metrics
	// Logger logs; nil uses slog.Default().
	Logger *slog.Logger
}

// Gateways keeps, for each egress with Replicas > 0, a Deployment of that
// many gateway pods and a PodDisruptionBudget in the egress's namespace,
// and deletes them when the egress goes or stops asking for them. Run it
// only while holding leadership, like Controller.
type Gateways struct {
	store  EgressStore
	client kubernetes.Interface
	opts   GatewayOptions
	log    *slog.Logger

	// Set by Run before any goroutine that reads them starts.
	deps       appslisters.DeploymentLister
	pdbs       policylisters.PodDisruptionBudgetLister
	depsSynced cache.InformerSynced
	pdbsSynced cache.InformerSynced
	queue      workqueue.TypedRateLimitingInterface[string]

	mu       sync.Mutex
	egresses map[string]model.Egress // by Key; nil until the first list
}

// NewGateways returns a gateway manager reading egresses from store and
// writing Deployments and PodDisruptionBudgets through client.
func NewGateways(store EgressStore, client kubernetes.Interface, opts GatewayOptions) *Gateways {
	if opts.ResyncPeriod <= 0 {
		opts.ResyncPeriod = DefaultResyncPeriod
	}
	if opts.Recorder == nil {
		opts.Recorder = &record.FakeRecorder{}
	}
	if opts.Metrics == nil {
		opts.Metrics = newUnregisteredMetrics()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Gateways{store: store, client: client, opts: opts, log: opts.Logger}
}

// Run watches the egresses in etcd and the managed objects in the API and
// keeps them in step until ctx is done; it returns after every goroutine
// it started has stopped.
func (g *Gateways) Run(ctx context.Context) error {
	managed := labels.SelectorFromSet(labels.Set{ManagedByLabel: ManagedByValue}).String()
	factory := informers.NewSharedInformerFactoryWithOptions(g.client, g.opts.ResyncPeriod,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = managed }))
	depInf := factory.Apps().V1().Deployments()
	pdbInf := factory.Policy().V1().PodDisruptionBudgets()
	g.deps, g.pdbs = depInf.Lister(), pdbInf.Lister()
	g.depsSynced, g.pdbsSynced = depInf.Informer().HasSynced, pdbInf.Informer().HasSynced
	g.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "coil-controller-gateways"})
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    g.enqueueObject,
		UpdateFunc: func(_, obj any) { g.enqueueObject(obj) },
		DeleteFunc: g.enqueueObject,
	}
	for _, inf := range []cache.SharedIndexInformer{depInf.Informer(), pdbInf.Informer()} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("watch gateway objects: %w", err)
		}
	}
	factory.Start(ctx.Done())

	var wg sync.WaitGroup
	defer func() {
		g.queue.ShutDown()
		wg.Wait()
		factory.Shutdown()
		// A replica that no longer leads exports no stale gateway
		// counts (alerts compare desired with available).
		g.opts.Metrics.gatewaysDesired.Reset()
		g.opts.Metrics.gatewaysAvailable.Reset()
	}()
	wg.Go(func() {
		err := g.store.WatchEgresses(ctx, DefaultEgressRetry, g.setEgresses)
		if err != nil && ctx.Err() == nil {
			g.log.Error("egress watch stopped", "err", err)
		}
	})
	if !cache.WaitForCacheSync(ctx.Done(), g.depsSynced, g.pdbsSynced) {
		return nil // ctx done
	}
	wg.Go(func() { g.runWorker(ctx) })
	<-ctx.Done()
	return nil
}

// setEgresses takes a new list of every egress and queues each egress that
// is new, changed or gone.
func (g *Gateways) setEgresses(list []model.Egress) {
	next := make(map[string]model.Egress, len(list))
	for _, e := range list {
		next[e.Key()] = e
	}
	g.mu.Lock()
	prev := g.egresses
	g.egresses = next
	g.mu.Unlock()
	for k, e := range next {
		if p, ok := prev[k]; prev == nil || !ok || p.Replicas != e.Replicas || p.Image != e.Image {
			g.queue.Add(k)
		}
	}
	for k := range prev {
		if _, ok := next[k]; !ok {
			g.queue.Add(k)
		}
	}
}

// enqueueObject queues the egress a managed object belongs to.
func (g *Gateways) enqueueObject(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return
	}
	if name := m.GetLabels()[model.EgressGatewayLabel]; name != "" {
		g.queue.Add(m.GetNamespace() + "/" + name)
	}
}

func (g *Gateways) runWorker(ctx context.Context) {
	for {
		key, shutdown := g.queue.Get()
		if shutdown {
			return
		}
		err := g.sync(ctx, key)
		var taken *nameTakenError
		switch {
		case err == nil:
			g.queue.Forget(key)
		case ctx.Err() != nil:
			g.queue.Forget(key)
		case errors.Is(err, errNotLoaded):
			g.queue.Forget(key)
			g.queue.AddAfter(key, time.Second)
		case errors.As(err, &taken):
			// Not ours to fix: look again now and then.
			g.log.Warn("egress gateways not created: name taken", "egress", key, "err", err)
			g.queue.Forget(key)
			g.queue.AddAfter(key, time.Minute)
		default:
			g.opts.Metrics.gatewaySyncErrors.Inc()
			g.log.Warn("could not keep egress gateways in step; will retry", "egress", key, "err", err)
			g.queue.AddRateLimited(key)
		}
		g.queue.Done(key)
	}
}

// sync makes the managed objects of one egress what it asks for.
func (g *Gateways) sync(ctx context.Context, key string) error {
	namespace, name, ok := strings.Cut(key, "/")
	if !ok {
		return nil
	}
	g.mu.Lock()
	loaded := g.egresses != nil
	e, found := g.egresses[key]
	g.mu.Unlock()
	if !loaded {
		// Nothing is known of etcd yet. The first list queues every
		// egress, but not the objects of egresses deleted while no
		// controller ran: look at this one again then.
		return errNotLoaded
	}
	if found && e.Managed() {
		return g.ensure(ctx, e)
	}
	return g.remove(ctx, namespace, name)
}

// errNotLoaded: the egresses have not been read from etcd yet.
var errNotLoaded = errors.New("egresses not read from etcd yet")

// nameTakenError: an object coil-controller does not manage already has
// the name of an egress's gateway Deployment or PodDisruptionBudget.
type nameTakenError struct{ kind, namespace, name string }

func (e *nameTakenError) Error() string {
	return fmt.Sprintf("%s %s/%s exists and is not managed by coil-controller (label %s=%s); rename or delete it",
		e.kind, e.namespace, e.name, ManagedByLabel, ManagedByValue)
}

// owns reports whether m is the managed object of egress name.
func owns(m metav1.Object, egress string) bool {
	l := m.GetLabels()
	return l[ManagedByLabel] == ManagedByValue && l[model.EgressGatewayLabel] == egress
}

// gatewayLabels are the labels of an egress's managed objects and pods,
// and the selector of its Deployment and PodDisruptionBudget.
func gatewayLabels(egress string) map[string]string {
	return map[string]string{model.EgressGatewayLabel: egress, ManagedByLabel: ManagedByValue}
}

// ensure creates or updates the Deployment and PodDisruptionBudget of a
// managed egress.
func (g *Gateways) ensure(ctx context.Context, e model.Egress) error {
	image, command := e.Image, []string(nil)
	if image == "" {
		if g.opts.Image == "" {
			return fmt.Errorf("egress %s: no gateway image (set coil-controller's --egress-gateway-image, or the egress's --image)", e.Key())
		}
		image, command = g.opts.Image, []string{GatewayCommand}
	}
	want := GatewayDeployment(e, image, command)
	dep, err := g.ensureDeployment(ctx, e, want)
	if err != nil {
		return err
	}
	if err := g.ensurePDB(ctx, e, GatewayPDB(e)); err != nil {
		return err
	}
	g.opts.Metrics.gatewaysDesired.WithLabelValues(e.Namespace, e.Name).Set(float64(e.Replicas))
	g.opts.Metrics.gatewaysAvailable.WithLabelValues(e.Namespace, e.Name).Set(float64(dep.Status.AvailableReplicas))
	return nil
}

func (g *Gateways) ensureDeployment(ctx context.Context, e model.Egress, want *appsv1.Deployment) (*appsv1.Deployment, error) {
	api := g.client.AppsV1().Deployments(e.Namespace)
	cur, err := g.deps.Deployments(e.Namespace).Get(want.Name)
	if apierrors.IsNotFound(err) {
		created, err := api.Create(ctx, want, metav1.CreateOptions{})
		if err == nil {
			g.log.Info("created egress gateway deployment", "egress", e.Key(), "replicas", e.Replicas, "image", want.Spec.Template.Spec.Containers[0].Image)
			g.opts.Recorder.Eventf(created, corev1.EventTypeNormal, EventGatewaysCreated,
				"Created %d gateway pods for egress %s", e.Replicas, e.Key())
			return created, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create deployment %s/%s: %w", e.Namespace, want.Name, err)
		}
		// Not in the cache: someone else's, or ours and the cache lags.
		if cur, err = api.Get(ctx, want.Name, metav1.GetOptions{}); err != nil {
			return nil, fmt.Errorf("get deployment %s/%s: %w", e.Namespace, want.Name, err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("cached deployment %s/%s: %w", e.Namespace, want.Name, err)
	}
	if !owns(cur, e.Name) {
		g.opts.Recorder.Eventf(cur, corev1.EventTypeWarning, EventGatewayNameTaken,
			"Egress %s wants its gateway Deployment here, but this one is not managed by coil-controller", e.Key())
		return nil, &nameTakenError{kind: "Deployment", namespace: e.Namespace, name: want.Name}
	}
	if !deploymentDiffers(cur, want) {
		return cur, nil
	}
	if !equality.Semantic.DeepEqual(cur.Spec.Selector, want.Spec.Selector) {
		// The selector is immutable: replace the object.
		if err := g.deleteDeployment(ctx, cur); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("deployment %s/%s had another selector: deleted, to be created again", e.Namespace, want.Name)
	}
	next := cur.DeepCopy()
	next.Labels = want.Labels
	next.Annotations = mergeAnnotations(cur.Annotations, want.Annotations)
	next.Spec.Replicas = want.Spec.Replicas
	next.Spec.Strategy = want.Spec.Strategy
	next.Spec.Template = want.Spec.Template
	updated, err := api.Update(ctx, next, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("update deployment %s/%s: %w", e.Namespace, want.Name, err)
	}
	g.log.Info("updated egress gateway deployment", "egress", e.Key(), "replicas", e.Replicas, "image", want.Spec.Template.Spec.Containers[0].Image)
	g.opts.Recorder.Eventf(updated, corev1.EventTypeNormal, EventGatewaysUpdated,
		"Gateways of egress %s: %d replicas of %s", e.Key(), e.Replicas, want.Spec.Template.Spec.Containers[0].Image)
	return updated, nil
}

// deploymentDiffers reports whether cur needs an update to be want: its
// replicas, its labels, the images of its containers or the hash of the
// spec coil-controller wrote last.
func deploymentDiffers(cur, want *appsv1.Deployment) bool {
	if cur.Spec.Replicas == nil || *cur.Spec.Replicas != *want.Spec.Replicas ||
		cur.Annotations[GatewaySpecAnnotation] != want.Annotations[GatewaySpecAnnotation] ||
		!maps.Equal(cur.Labels, want.Labels) ||
		len(cur.Spec.Template.Spec.Containers) != len(want.Spec.Template.Spec.Containers) {
		return true
	}
	for i, c := range cur.Spec.Template.Spec.Containers {
		if c.Image != want.Spec.Template.Spec.Containers[i].Image {
			return true
		}
	}
	return false
}

func mergeAnnotations(cur, want map[string]string) map[string]string {
	out := maps.Clone(cur)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, want)
	return out
}

func (g *Gateways) ensurePDB(ctx context.Context, e model.Egress, want *policyv1.PodDisruptionBudget) error {
	api := g.client.PolicyV1().PodDisruptionBudgets(e.Namespace)
	cur, err := g.pdbs.PodDisruptionBudgets(e.Namespace).Get(want.Name)
	if apierrors.IsNotFound(err) {
		_, err := api.Create(ctx, want, metav1.CreateOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create poddisruptionbudget %s/%s: %w", e.Namespace, want.Name, err)
		}
		if cur, err = api.Get(ctx, want.Name, metav1.GetOptions{}); err != nil {
			return fmt.Errorf("get poddisruptionbudget %s/%s: %w", e.Namespace, want.Name, err)
		}
	} else if err != nil {
		return fmt.Errorf("cached poddisruptionbudget %s/%s: %w", e.Namespace, want.Name, err)
	}
	if !owns(cur, e.Name) {
		g.opts.Recorder.Eventf(cur, corev1.EventTypeWarning, EventGatewayNameTaken,
			"Egress %s wants its gateway PodDisruptionBudget here, but this one is not managed by coil-controller", e.Key())
		return &nameTakenError{kind: "PodDisruptionBudget", namespace: e.Namespace, name: want.Name}
	}
	if maps.Equal(cur.Labels, want.Labels) &&
		equality.Semantic.DeepEqual(cur.Spec.Selector, want.Spec.Selector) &&
		equality.Semantic.DeepEqual(cur.Spec.MaxUnavailable, want.Spec.MaxUnavailable) &&
		cur.Spec.MinAvailable == nil {
		return nil
	}
	next := cur.DeepCopy()
	next.Labels = want.Labels
	next.Spec = want.Spec
	if _, err := api.Update(ctx, next, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update poddisruptionbudget %s/%s: %w", e.Namespace, want.Name, err)
	}
	return nil
}

// remove deletes the managed objects of an egress that is gone or no
// longer asks for managed gateways. The watch's word is not enough: a
// record skipped as corrupt, or a watch that lags, must not take the
// gateways of a live egress away, so etcd is asked once more.
func (g *Gateways) remove(ctx context.Context, namespace, name string) error {
	g.opts.Metrics.gatewaysDesired.DeleteLabelValues(namespace, name)
	g.opts.Metrics.gatewaysAvailable.DeleteLabelValues(namespace, name)
	sel := labels.SelectorFromSet(gatewayLabels(name))
	deps, err := g.deps.Deployments(namespace).List(sel)
	if err != nil {
		return fmt.Errorf("list cached deployments: %w", err)
	}
	pdbs, err := g.pdbs.PodDisruptionBudgets(namespace).List(sel)
	if err != nil {
		return fmt.Errorf("list cached poddisruptionbudgets: %w", err)
	}
	if len(deps) == 0 && len(pdbs) == 0 {
		return nil
	}
	e, err := g.store.GetEgress(ctx, namespace, name)
	switch {
	case err == nil && e.Managed():
		return nil // the watch is behind; its next list queues the egress again
	case err == nil, errors.Is(err, model.ErrEgressNotFound):
	default:
		return fmt.Errorf("confirm egress %s/%s no longer wants gateways: %w", namespace, name, err)
	}
	for _, d := range deps {
		if err := g.deleteDeployment(ctx, d); err != nil {
			return err
		}
		g.log.Info("deleted egress gateway deployment", "egress", namespace+"/"+name, "deployment", d.Name)
		g.opts.Recorder.Eventf(d, corev1.EventTypeNormal, EventGatewaysDeleted,
			"Deleted the gateways of egress %s/%s: the egress is gone or runs its own", namespace, name)
	}
	for _, p := range pdbs {
		err := g.client.PolicyV1().PodDisruptionBudgets(namespace).Delete(ctx, p.Name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{UID: &p.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete poddisruptionbudget %s/%s: %w", namespace, p.Name, err)
		}
	}
	return nil
}

func (g *Gateways) deleteDeployment(ctx context.Context, d *appsv1.Deployment) error {
	// Background: the garbage collector removes the ReplicaSets and pods,
	// which terminate gracefully (coild drains their clients).
	bg := metav1.DeletePropagationBackground
	err := g.client.AppsV1().Deployments(d.Namespace).Delete(ctx, d.Name, metav1.DeleteOptions{
		Preconditions:     &metav1.Preconditions{UID: &d.UID},
		PropagationPolicy: &bg,
	})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete deployment %s/%s: %w", d.Namespace, d.Name, err)
	}
	return nil
}

// GatewayDeployment is the Deployment coil-controller keeps for a managed
// egress: what a user would write by hand for bring-your-own gateways
// (deploy/examples/egress-gateway.yaml). Its pods carry the egress's
// gateway label, prefer distinct nodes, and run image unprivileged, with
// command (nil: the image's entrypoint), doing nothing but exist: coild
// programs their network namespace. A rolling update starts a new pod
// before it stops an old one, so an egress of one replica keeps a gateway.
func GatewayDeployment(e model.Egress, image string, command []string) *appsv1.Deployment {
	lbl := gatewayLabels(e.Name)
	zero, one := intstr.FromInt32(0), intstr.FromInt32(1)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: GatewayObjectName(e.Name), Namespace: e.Namespace, Labels: maps.Clone(lbl)},
		Spec: appsv1.DeploymentSpec{
			Replicas: &e.Replicas,
			Selector: &metav1.LabelSelector{MatchLabels: maps.Clone(lbl)},
			Strategy: appsv1.DeploymentStrategy{
				Type:          appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{MaxUnavailable: &zero, MaxSurge: &one},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: maps.Clone(lbl)},
				Spec: corev1.PodSpec{
					Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
						PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
							Weight: 100,
							PodAffinityTerm: corev1.PodAffinityTerm{
								TopologyKey:   corev1.LabelHostname,
								LabelSelector: &metav1.LabelSelector{MatchLabels: maps.Clone(lbl)},
							},
						}},
					}},
					AutomountServiceAccountToken: new(false),
					EnableServiceLinks:           new(false),
					SecurityContext: &corev1.PodSecurityContext{
						RunAsNonRoot:   new(true),
						RunAsUser:      new(int64(gatewayUser)),
						RunAsGroup:     new(int64(gatewayUser)),
						SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
					},
					Containers: []corev1.Container{{
						Name:    gatewayContainer,
						Image:   image,
						Command: command,
						Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
							corev1.ResourceCPU:    resource.MustParse("1m"),
							corev1.ResourceMemory: resource.MustParse("8Mi"),
						}},
						SecurityContext: &corev1.SecurityContext{
							AllowPrivilegeEscalation: new(false),
							ReadOnlyRootFilesystem:   new(true),
							Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
						},
					}},
				},
			},
		},
	}
	d.Annotations = map[string]string{GatewaySpecAnnotation: specHash(d.Spec)}
	return d
}

// GatewayPDB is the PodDisruptionBudget of a managed egress's gateways:
// a drain takes them one at a time.
func GatewayPDB(e model.Egress) *policyv1.PodDisruptionBudget {
	lbl := gatewayLabels(e.Name)
	one := intstr.FromInt32(1)
	return &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: GatewayObjectName(e.Name), Namespace: e.Namespace, Labels: maps.Clone(lbl)},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: &one,
			Selector:       &metav1.LabelSelector{MatchLabels: maps.Clone(lbl)},
		},
	}
}

// specHash is a short hash of a spec as coil-controller writes it.
func specHash(spec appsv1.DeploymentSpec) string {
	b, err := json.Marshal(spec)
	if err != nil {
		panic(err) // a typed spec always marshals
	}
	h := fnv.New64a()
	h.Write(b)
	return strconv.FormatUint(h.Sum64(), 36)
}
