package controller

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/coil-project/coil/audit"
	"github.com/coil-project/coil/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func node(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func pod(ns, name, nodeName string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.PodSpec{NodeName: nodeName}}
}

func addr(nodeName string, blk, off int, ns, podName string) model.Address {
	return model.Address{Pool: "default", Block: blk, Offset: off, Revision: int64(1000 + blk*10 + off),
		IPv4:  netip.AddrFrom4([4]byte{10, 0, 0, byte(blk*4 + off)}),
		Owner: model.Owner{Node: nodeName, Namespace: ns, Pod: podName, ContainerID: "c-" + podName}}
}

func TestGraceTracker(t *testing.T) {
	a := addr("n1", 0, 1, "ns", "a")
	b := addr("n1", 0, 2, "ns", "b")
	reused := a
	reused.Revision++ // same address, allocated again: a new record
	t0 := time.Unix(1000, 0)
	grace := 10 * time.Second
	steps := []struct {
		at    time.Duration
		cands []model.Address
		reset bool
		want  []string // pod names of matured candidates
	}{
		{at: 0, cands: []model.Address{a}},
		{at: 5 * time.Second, cands: []model.Address{a, b}},
		{at: 10 * time.Second, cands: []model.Address{a, b}, want: []string{"a"}},
		// b's pod came back: b is forgotten and starts again later.
		{at: 12 * time.Second, cands: []model.Address{a}, want: []string{"a"}},
		{at: 13 * time.Second, cands: []model.Address{a, b}, want: []string{"a"}},
		{at: 20 * time.Second, cands: []model.Address{a, b}, want: []string{"a"}},
		{at: 23 * time.Second, cands: []model.Address{reused, b}, want: []string{"b"}},
		// A guard tripped: everything starts again.
		{at: 24 * time.Second, reset: true},
		{at: 25 * time.Second, cands: []model.Address{reused, b}},
		{at: 35 * time.Second, cands: []model.Address{reused, b}, want: []string{"a", "b"}},
	}
	tr := newGraceTracker()
	for i, s := range steps {
		if s.reset {
			tr.reset()
			continue
		}
		var cands []audit.LeakCandidate
		for _, c := range s.cands {
			cands = append(cands, audit.LeakCandidate{Address: c})
		}
		var got []string
		for _, m := range tr.observe(cands, t0.Add(s.at), grace) {
			got = append(got, m.Address.Pod)
		}
		if !slices.Equal(got, s.want) {
			t.Errorf("step %d (t+%s): matured %v, want %v", i, s.at, got, s.want)
		}
	}
	if !tr.markReported(b) || tr.markReported(b) {
		t.Error("markReported should be true once, then false")
	}
}
