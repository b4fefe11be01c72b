package egress

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/coil-project/coil/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// clientsIdle is how long the cluster-wide watch of client pods keeps
// running after the node's last gateway pod went away, so that a gateway
// restarting on the node does not pay a full list of the cluster's pods.
const clientsIdle = 5 * time.Minute

// podWatch holds the informers of the reconciler:
//   - the pods of this node (field selector), for clients and gateways here;
//   - gateway pods of the whole cluster (label selector), to choose from;
//   - while this node runs a gateway pod, every pod of the cluster, to find
//     the clients that chose it. Annotations cannot be selected on, so this
//     watch is the costly one; most nodes never run it.
//
// Every object is trimmed to what egress needs before it is cached.
type podWatch struct {
	kube     kubernetes.Interface
	node     string
	onChange func()

	localFactory, gatewayFactory informers.SharedInformerFactory
	localInf, gatewayInf         cache.SharedIndexInformer
	localLister, gatewayLister   corelisters.PodLister

	mu sync.Mutex
	// ctx bounds the informers; set by start.
	ctx            context.Context
	clientsFactory informers.SharedInformerFactory
	clientsInf     cache.SharedIndexInformer
	clientsStop    context.CancelFunc
	clientsIdle    time.Time
	// wg tracks the goroutines podWatch starts itself.
	wg sync.WaitGroup
}

func newPodWatch(kube kubernetes.Interface, node string, onChange func()) *podWatch {
	w := &podWatch{kube: kube, node: node, onChange: onChange}
	w.localFactory = informers.NewSharedInformerFactoryWithOptions(kube, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
		}),
		informers.WithTransform(trimPod))
	w.gatewayFactory = informers.NewSharedInformerFactoryWithOptions(kube, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = model.EgressGatewayLabel }),
		informers.WithTransform(trimPod))
	local := w.localFactory.Core().V1().Pods()
	gws := w.gatewayFactory.Core().V1().Pods()
	w.localInf, w.localLister = local.Informer(), local.Lister()
	w.gatewayInf, w.gatewayLister = gws.Informer(), gws.Lister()
	w.localInf.AddEventHandler(w.handler(relevant))
	w.gatewayInf.AddEventHandler(w.handler(func(*corev1.Pod) bool { return true }))
	return w
}

// relevant reports whether a (trimmed) pod has anything to do with egress.
func relevant(p *corev1.Pod) bool {
	return len(p.Annotations) > 0 || len(p.Labels) > 0
}

// handler wakes the reconciler for events of pods that matter before or
// after the change.
func (w *podWatch) handler(matters func(*corev1.Pod) bool) cache.ResourceEventHandler {
	check := func(objs ...any) {
		for _, o := range objs {
			if tomb, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = tomb.Obj
			}
			if p, ok := o.(*corev1.Pod); ok && matters(p) {
				w.onChange()
				return
			}
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { check(o) },
		UpdateFunc: func(o, n any) { check(o, n) },
		DeleteFunc: func(o any) { check(o) },
	}
}

// trimPod keeps of a pod only what egress reads, so that the caches stay
// small: name, namespace, the egress label and annotations, deletion,
// node, phase and addresses.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID,
			ResourceVersion: p.ResourceVersion, DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}
	if v, ok := p.Labels[model.EgressGatewayLabel]; ok {
		out.Labels = map[string]string{model.EgressGatewayLabel: v}
	}
	for k, v := range p.Annotations {
		if strings.HasPrefix(k, model.EgressClientAnnotationPrefix) {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	return out, nil
}

// start runs the node's and the gateways' informers until ctx ends.
func (w *podWatch) start(ctx context.Context) {
	w.mu.Lock()
	w.ctx = ctx
	w.mu.Unlock()
	w.localFactory.Start(ctx.Done())
	w.gatewayFactory.Start(ctx.Done())
}

// stop ends every informer and waits for their goroutines.
func (w *podWatch) stop() {
	w.mu.Lock()
	if w.clientsStop != nil {
		w.clientsStop()
		w.clientsFactory.Shutdown()
		w.clientsFactory, w.clientsInf, w.clientsStop = nil, nil, nil
	}
	w.mu.Unlock()
	w.localFactory.Shutdown()
	w.gatewayFactory.Shutdown()
	w.wg.Wait()
}

// synced reports whether the node's and the gateways' informers have
// listed once.
func (w *podWatch) synced() bool {
	return w.localInf.HasSynced() && w.gatewayInf.HasSynced()
}

// local returns the pods of this node.
func (w *podWatch) local() []*corev1.Pod {
	pods, _ := w.localLister.List(labels.Everything())
	return pods
}

// localPod returns one pod of this node from the cache, nil if absent.
func (w *podWatch) localPod(namespace, name string) *corev1.Pod {
	p, err := w.localLister.Pods(namespace).Get(name)
	if err != nil {
		return nil
	}
	return p
}

// gateways returns the gateway pods of the cluster.
func (w *podWatch) gateways() []*corev1.Pod {
	pods, _ := w.gatewayLister.List(labels.Everything())
	out := pods[:0:0]
	for _, p := range pods {
		if gatewayOf(p) != "" {
			out = append(out, p)
		}
	}
	return out
}

// clients returns the pods of the cluster that use an egress, or nil while
// the cluster-wide watch is not running or has not listed yet.
func (w *podWatch) clients() []*corev1.Pod {
	w.mu.Lock()
	inf := w.clientsInf
	w.mu.Unlock()
	if inf == nil || !inf.HasSynced() {
		return nil
	}
	out := []*corev1.Pod{}
	for _, o := range inf.GetStore().List() {
		if p, ok := o.(*corev1.Pod); ok && len(clientEgresses(p)) > 0 {
			out = append(out, p)
		}
	}
	return out
}

// needClients starts the cluster-wide watch of client pods when need is
// set, and stops it once it has not been needed for clientsIdle.
func (w *podWatch) needClients(need bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case need && w.clientsInf == nil && w.ctx != nil:
		ctx, cancel := context.WithCancel(w.ctx)
		f := informers.NewSharedInformerFactoryWithOptions(w.kube, 0, informers.WithTransform(trimPod))
		inf := f.Core().V1().Pods().Informer()
		inf.AddEventHandler(w.handler(func(p *corev1.Pod) bool { return len(p.Annotations) > 0 }))
		f.Start(ctx.Done())
		w.clientsFactory, w.clientsInf, w.clientsStop = f, inf, cancel
		// Wake the reconciler once the list is in, so that gateways
		// waiting for their clients get them at once. stop waits for it.
		w.wg.Go(func() {
			if cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
				w.onChange()
			}
		})
	case need:
		w.clientsIdle = time.Time{}
	case w.clientsInf != nil && w.clientsIdle.IsZero():
		w.clientsIdle = time.Now()
	case w.clientsInf != nil && time.Since(w.clientsIdle) > clientsIdle:
		w.clientsStop()
		f := w.clientsFactory
		w.clientsFactory, w.clientsInf, w.clientsStop = nil, nil, nil
		w.clientsIdle = time.Time{}
		// Shutdown waits for the informer's goroutines; the context is
		// cancelled already, so that is quick.
		f.Shutdown()
	}
}
