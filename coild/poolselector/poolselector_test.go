package poolselector

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coil-project/coil/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

func ns(name string, annotations map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}
}

func TestPoolFor(t *testing.T) {
	client := fake.NewClientset(
		ns("plain", nil),
		ns("tenant-a", map[string]string{Annotation: "tenant"}),
		ns("ghost", map[string]string{Annotation: "missing"}),
		ns("team", nil),
	)
	factory := informers.NewSharedInformerFactory(client, time.Minute)
	inf := factory.Core().V1().Namespaces()
	sel := New(inf.Lister(), client)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		t.Fatal("cache not synced")
	}
	defer func() { cancel(); factory.Shutdown() }()
	sel.SetPools([]model.Pool{{Name: "default"}, {Name: "tenant"}, {Name: "team"}})
	// Created after the cache synced: found by a direct read.
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns("late", map[string]string{Annotation: "tenant"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		namespace string
		want      string
		err       error
	}{
		{"plain", DefaultPool, nil},
		{"tenant-a", "tenant", nil},
		{"team", "team", nil},
		{"ghost", "", ErrNoPool},
		{"late", "tenant", nil},
	}
	for _, c := range cases {
		t.Run(c.namespace, func(t *testing.T) {
			got, err := sel.PoolFor(ctx, c.namespace)
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("PoolFor = %q, %v; want error %v", got, err, c.err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("PoolFor = %q, %v; want %q", got, err, c.want)
			}
		})
	}
	if _, err := sel.PoolFor(ctx, "nonexistent"); err == nil {
		t.Fatal("unknown namespace gave no error")
	}
}
