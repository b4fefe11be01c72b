// Package etcdservice resolves etcd endpoints given as a Kubernetes
// Service, "@NAMESPACE/NAME", from the Service's EndpointSlices, and
// follows them: when etcd members come and go, the etcd client's
// endpoints are updated in place, without a restart (coil v1 did the
// same). coild and coil-controller use it for --etcd-endpoints.
package etcdservice

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// PortName is the EndpointSlice port used when a slice has several.
const PortName = "client"

// Ref names the Service of etcd.
type Ref struct {
	Namespace, Name string
}

// String is "@NAMESPACE/NAME".
func (r Ref) String() string { return "@" + r.Namespace + "/" + r.Name }

// Parse tells whether endpoints name a Service ("@NAMESPACE/NAME", alone)
// rather than URLs. ok is false for URLs; err is set when an entry starts
// with "@" but the list is not exactly one well-formed Service name.
func Parse(endpoints []string) (ref Ref, ok bool, err error) {
	if !slices.ContainsFunc(endpoints, func(e string) bool { return strings.HasPrefix(e, "@") }) {
		return Ref{}, false, nil
	}
	if len(endpoints) != 1 {
		return Ref{}, false, fmt.Errorf("etcd endpoints %q: a Service (@NAMESPACE/NAME) must be the only endpoint", endpoints)
	}
	ns, name, found := strings.Cut(strings.TrimPrefix(endpoints[0], "@"), "/")
	if !found || len(validation.IsDNS1123Label(ns)) > 0 || len(validation.IsDNS1035Label(name)) > 0 {
		return Ref{}, false, fmt.Errorf("etcd endpoints %q: want @NAMESPACE/NAME naming a Service", endpoints[0])
	}
	return Ref{Namespace: ns, Name: name}, true, nil
}

// URLs returns the client URLs of the ready endpoints of slices, sorted
// and without duplicates. The port is the one named PortName, or the only
// port of a slice; a slice without either is skipped.
func URLs(list []*discoveryv1.EndpointSlice, scheme string) []string {
	var urls []string
	for _, s := range list {
		port, ok := slicePort(s)
		if !ok {
			continue
		}
		for _, ep := range s.Endpoints {
			if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
				continue
			}
			for _, addr := range ep.Addresses {
				urls = append(urls, scheme+"://"+net.JoinHostPort(addr, strconv.Itoa(int(port))))
			}
		}
	}
	slices.Sort(urls)
	return slices.Compact(urls)
}

func slicePort(s *discoveryv1.EndpointSlice) (int32, bool) {
	for _, p := range s.Ports {
		if p.Name != nil && *p.Name == PortName && p.Port != nil {
			return *p.Port, true
		}
	}
	if len(s.Ports) == 1 && s.Ports[0].Port != nil {
		return *s.Ports[0].Port, true
	}
	return 0, false
}

// Follower keeps the endpoints of one Service in view.
type Follower struct {
	ref    Ref
	scheme string
	log    *slog.Logger
	lister cache.Indexer
	synced cache.InformerSynced
	events chan struct{}
	run    func(stop <-chan struct{})
}

// NewFollower prepares to follow ref's EndpointSlices through client;
// scheme is "https" when etcd is dialled with TLS, else "http". The client
// needs list and watch on endpointslices in ref's namespace.
func NewFollower(client kubernetes.Interface, ref Ref, scheme string, log *slog.Logger) *Follower {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 10*time.Minute,
		informers.WithNamespace(ref.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = labels.Set{discoveryv1.LabelServiceName: ref.Name}.String()
		}))
	inf := factory.Discovery().V1().EndpointSlices().Informer()
	f := &Follower{
		ref: ref, scheme: scheme, log: log,
		lister: inf.GetIndexer(), synced: inf.HasSynced,
		// One pending wake-up is enough: every wake-up reads the lot.
		events: make(chan struct{}, 1),
	}
	wake := func(any) {
		select {
		case f.events <- struct{}{}:
		default:
		}
	}
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    wake,
		UpdateFunc: func(_, obj any) { wake(obj) },
		DeleteFunc: wake,
	})
	f.run = func(stop <-chan struct{}) {
		factory.Start(stop)
		<-stop
		factory.Shutdown()
	}
	return f
}

// current returns the URLs the informer's cache holds now.
func (f *Follower) current() []string {
	var list []*discoveryv1.EndpointSlice
	for _, obj := range f.lister.List() {
		if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
			list = append(list, s)
		}
	}
	return URLs(list, f.scheme)
}

// Run starts following and returns the Service's endpoints once it has
// some (an error if it has none within wait). Afterwards, until ctx ends,
// it calls update with every new non-empty list, from one goroutine it
// owns; done is closed when that goroutine has stopped. A Service whose
// endpoints all go away leaves the last list in place: a client with no
// endpoints could not even retry.
func (f *Follower) Run(ctx context.Context, wait time.Duration, update func([]string)) (initial []string, done <-chan struct{}, err error) {
	stop := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		f.run(stop)
	}()
	fail := func(err error) ([]string, <-chan struct{}, error) {
		close(stop)
		<-stopped
		return nil, nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if !cache.WaitForCacheSync(wctx.Done(), f.synced) {
		return fail(fmt.Errorf("etcd Service %s: list EndpointSlices: no answer within %s", f.ref, wait))
	}
	for initial = f.current(); len(initial) == 0; initial = f.current() {
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return fail(context.Cause(ctx))
			}
			return fail(fmt.Errorf("etcd Service %s has no ready endpoints (EndpointSlices labelled %s=%s with a port named %q or a single port) after %s",
				f.ref, discoveryv1.LabelServiceName, f.ref.Name, PortName, wait))
		case <-f.events:
		}
	}
	f.log.Info("etcd endpoints from Service", "service", f.ref.String(), "endpoints", initial)
	out := make(chan struct{})
	go func() {
		defer close(out)
		defer func() { close(stop); <-stopped }()
		last := initial
		for {
			select {
			case <-ctx.Done():
				return
			case <-f.events:
			}
			now := f.current()
			switch {
			case slices.Equal(now, last):
			case len(now) == 0:
				f.log.Warn("etcd Service has no ready endpoints; keeping the last ones", "service", f.ref.String(), "endpoints", last)
			default:
				f.log.Info("etcd endpoints changed", "service", f.ref.String(), "endpoints", now, "before", last)
				update(now)
				last = now
			}
		}
	}()
	return initial, out, nil
}
