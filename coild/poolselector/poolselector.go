// Package poolselector picks the address pool of a namespace. The choice
// rests on an admin-only namespace annotation, so that a pod's owner cannot
// take another tenant's pool; see "Allocation" in docs/coild.md.
package poolselector

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/model"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
)

// Annotation on a namespace naming the pool of its pods.
const Annotation = "coil.cybozu.com/pool"

// DefaultPool serves every namespace without a pool of its own.
const DefaultPool = "default"

// ErrNoPool means the pool a namespace selects does not exist. coild
// answers it as unavailable: an admin may create the pool, and a retry
// then succeeds.
var ErrNoPool = api.WithReason(errors.New("selected pool does not exist"), api.ReasonUnavailable)

// Selector maps namespaces to pools.
type Selector struct {
	lister corelisters.NamespaceLister
	client kubernetes.Interface

	mu    sync.RWMutex
	pools map[string]bool
	known bool
}

// New returns a selector reading namespaces from lister, and from client
// for a namespace the cache does not hold yet (just created).
func New(lister corelisters.NamespaceLister, client kubernetes.Interface) *Selector {
	return &Selector{lister: lister, client: client, pools: map[string]bool{}}
}

// SetPools replaces the set of existing pools (fed by a watch on etcd).
func (s *Selector) SetPools(pools []model.Pool) {
	m := make(map[string]bool, len(pools))
	for _, p := range pools {
		m[p.Name] = true
	}
	s.mu.Lock()
	s.pools = m
	s.known = true
	s.mu.Unlock()
}

func (s *Selector) poolExists(name string) (exists, known bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.pools[name], s.known
}

// PoolFor returns the pool for pods of namespace: the annotated pool if the
// namespace has the annotation, else a pool named like the namespace (v1
// compatibility), else DefaultPool.
func (s *Selector) PoolFor(ctx context.Context, namespace string) (string, error) {
	ns, err := s.lister.Get(namespace)
	if apierrors.IsNotFound(err) && s.client != nil {
		ns, err = s.client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	}
	if err != nil {
		return "", fmt.Errorf("look up namespace %q: %w", namespace, err)
	}
	if name, ok := ns.Annotations[Annotation]; ok {
		if exists, known := s.poolExists(name); known && !exists {
			return "", fmt.Errorf("namespace %q is annotated %s=%s: %w", namespace, Annotation, name, ErrNoPool)
		}
		return name, nil
	}
	if exists, _ := s.poolExists(namespace); exists {
		return namespace, nil
	}
	return DefaultPool, nil
}
