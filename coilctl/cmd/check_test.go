package cmd_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	kubeapitest "github.com/coil-project/coil/internal/testenv/kubeapi"
	"github.com/coil-project/coil/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// coilctl check against a real kube-apiserver: a node that is gone and a
// pod that is gone are reported, live ones are not, and nothing changes.
func TestCheck(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	api := kubeapitest.StartForTest(t, server.Endpoint, kubeapitest.Options{})
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := api.WriteKubeconfig(kubeconfig, kubeapitest.AdminUser); err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "alive"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "running", Namespace: "default"},
		Spec:       corev1.PodSpec{NodeName: "alive", Containers: []corev1.Container{{Name: "c", Image: "pause"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.ok("pool", "create", "default", "10.60.0.0/24", "2")
	own := func(node, pod string) model.Owner {
		return model.Owner{Node: node, Namespace: "default", Pod: pod, ContainerID: "c-" + pod, Interface: "eth0"}
	}
	if _, _, err := h.st.AcquireBlock(ctx, "default", own("alive", "running")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.st.AcquireBlock(ctx, "default", own("alive", "gone-pod")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.st.AcquireBlock(ctx, "default", own("gone-node", "orphan")); err != nil {
		t.Fatal(err)
	}
	before := fmt.Sprint(h.dump(t))

	var report struct {
		Nodes        int `json:"nodes"`
		MissingNodes []struct {
			Name string `json:"name"`
		} `json:"missingNodes"`
		LeakCandidates []struct {
			Pod    string `json:"pod"`
			Reason string `json:"reason"`
		} `json:"leakCandidates"`
	}
	out := h.ok("check", "--kubeconfig", kubeconfig, "-o", "json")
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if report.Nodes != 1 || len(report.MissingNodes) != 1 || report.MissingNodes[0].Name != "gone-node" {
		t.Fatalf("missing nodes = %+v (report %s)", report.MissingNodes, out)
	}
	for _, l := range report.LeakCandidates {
		if l.Pod == "running" {
			t.Fatalf("live pod reported as leak: %s", out)
		}
	}
	found := false
	for _, l := range report.LeakCandidates {
		found = found || (l.Pod == "gone-pod" && l.Reason == "pod-not-found")
	}
	if !found {
		t.Fatalf("deleted pod not reported: %s", out)
	}
	table := h.ok("check", "--kubeconfig", kubeconfig)
	if !strings.Contains(table, "gone-node") || !strings.Contains(table, "default/gone-pod") {
		t.Fatalf("table lacks findings:\n%s", table)
	}
	if after := fmt.Sprint(h.dump(t)); after != before {
		t.Fatalf("check changed etcd:\nbefore %s\nafter  %s", before, after)
	}
	if r := h.run("check", "--kubeconfig", filepath.Join(t.TempDir(), "nope")); r.code != 1 || !strings.Contains(r.stderr, "kubeconfig") {
		t.Fatalf("missing kubeconfig: %v", r)
	}
}

// TestCheckStaticPod runs coilctl check against a real kube-apiserver with
// a mirror Pod: the record of the static pod, allocated under the config
// hash kubelet passes as K8S_POD_UID, matches the mirror Pod's
// kubernetes.io/config.mirror annotation and is not a leak candidate,
// while a record under an earlier hash is (pod-replaced), as the
// controller's sweep judges them.
func TestCheckStaticPod(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	api := kubeapitest.StartForTest(t, server.Endpoint, kubeapitest.Options{})
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := api.WriteKubeconfig(kubeconfig, kubeapitest.AdminUser); err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mirrors := map[string]string{"etcd-n1": "hash-current", "proxy-n1": "hash-after"}
	for name, hash := range mirrors {
		created, err := kube.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default",
				Annotations: map[string]string{"kubernetes.io/config.mirror": hash}},
			Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "pause"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create mirror pod: %v", err)
		}
		if string(created.UID) == hash {
			t.Fatal("the mirror pod has the static pod's UID; the test would prove nothing")
		}
	}
	h.ok("pool", "create", "default", "10.61.0.0/24", "2")
	own := model.Owner{Node: "n1", Namespace: "default", Pod: "etcd-n1", ContainerID: "c-1", Interface: "eth0", PodUID: "hash-current"}
	b, _, err := h.st.AcquireBlock(ctx, "default", own)
	if err != nil {
		t.Fatal(err)
	}
	// proxy-n1's record is from before its manifest changed.
	h.allocate(b, 1, model.Owner{Node: "n1", Namespace: "default", Pod: "proxy-n1", ContainerID: "c-2", Interface: "eth0", PodUID: "hash-before"})

	var report struct {
		LeakCandidates []struct {
			Pod    string `json:"pod"`
			Reason string `json:"reason"`
		} `json:"leakCandidates"`
	}
	out := h.ok("check", "--kubeconfig", kubeconfig, "-o", "json")
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(report.LeakCandidates) != 1 || report.LeakCandidates[0].Pod != "proxy-n1" || report.LeakCandidates[0].Reason != "pod-replaced" {
		t.Fatalf("leak candidates = %+v, want only proxy-n1 (pod-replaced)", report.LeakCandidates)
	}
}

// TestCheckClusterStamp: coilctl check shows the cluster identity stamped
// in etcd next to the API's (kube-system's UID): not stamped yet, the
// same, or another cluster's.
func TestCheckClusterStamp(t *testing.T) {
	ctx := context.Background()
	api := kubeapitest.StartForTest(t, server.Endpoint, kubeapitest.Options{})
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := api.WriteKubeconfig(kubeconfig, kubeapitest.AdminUser); err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(api.Config)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := kube.CoreV1().Namespaces().Get(ctx, "kube-system", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ours := string(ns.UID)
	const foreign = "11111111-2222-4333-8444-555555555555"
	tests := []struct {
		name      string
		stamp     string
		wantMatch bool
		wantLine  string
	}{
		{name: "not stamped", wantLine: "cluster: etcd prefix not stamped yet; this API's kube-system UID is " + ours},
		{name: "same cluster", stamp: ours, wantMatch: true, wantLine: "cluster: " + ours},
		{name: "other cluster", stamp: foreign, wantLine: "cluster: MISMATCH: etcd prefix stamped by cluster " + foreign},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			if tc.stamp != "" {
				if _, err := h.st.StampCluster(ctx, tc.stamp); err != nil {
					t.Fatal(err)
				}
			}
			var report struct {
				Cluster struct {
					EtcdUID string `json:"etcdUID"`
					APIUID  string `json:"apiUID"`
					Match   bool   `json:"match"`
				} `json:"cluster"`
			}
			out := h.ok("check", "--kubeconfig", kubeconfig, "-o", "json")
			if err := json.Unmarshal([]byte(out), &report); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if c := report.Cluster; c.EtcdUID != tc.stamp || c.APIUID != ours || c.Match != tc.wantMatch {
				t.Errorf("cluster = %+v, want etcd %q, API %s, match %v", c, tc.stamp, ours, tc.wantMatch)
			}
			if table := h.ok("check", "--kubeconfig", kubeconfig); !strings.HasPrefix(table, tc.wantLine) {
				t.Errorf("table does not start with %q:\n%s", tc.wantLine, table)
			}
		})
	}
}

// TestCheckReportsCorruptRecords: records that do not decode, or keys of
// the wrong shape under the prefix, are listed by coilctl check (table and
// JSON) and do not stop it from comparing the rest.
func TestCheckReportsCorruptRecords(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	api := kubeapitest.StartForTest(t, server.Endpoint, kubeapitest.Options{})
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := api.WriteKubeconfig(kubeconfig, kubeapitest.AdminUser); err != nil {
		t.Fatal(err)
	}
	h.ok("pool", "create", "default", "10.61.0.0/24", "2")
	if _, _, err := h.st.AcquireBlock(ctx, "default", model.Owner{Node: "gone-node", Namespace: "default", Pod: "p", ContainerID: "c-p", Interface: "eth0"}); err != nil {
		t.Fatal(err)
	}
	bad := map[string]string{
		h.prefix + "addresses/default/0/1/3": "{not json",
		h.prefix + "blocks/default/0/7":      `{"pool":"default","subnet":0,"index":7,"node":"n","size":0}`,
	}
	for k, v := range bad {
		if _, err := h.cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	var report struct {
		MissingNodes []struct {
			Name string `json:"name"`
		} `json:"missingNodes"`
		Corrupt []struct {
			Key, Kind, Problem string
		} `json:"corrupt"`
	}
	out := h.ok("check", "--kubeconfig", kubeconfig, "-o", "json")
	if err := json.Unmarshal([]byte(out), &report); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if len(report.MissingNodes) != 1 || report.MissingNodes[0].Name != "gone-node" {
		t.Errorf("the rest of the comparison was lost: missing nodes %+v", report.MissingNodes)
	}
	got := map[string]bool{}
	for _, c := range report.Corrupt {
		got[c.Key] = c.Problem != ""
	}
	for k := range bad {
		if !got[k] {
			t.Errorf("corrupt record %s not reported: %s", k, out)
		}
	}
	table := h.ok("check", "--kubeconfig", kubeconfig)
	if !strings.Contains(table, "CORRUPT RECORD") || !strings.Contains(table, h.prefix+"addresses/default/0/1/3") {
		t.Errorf("table lacks the corrupt records:\n%s", table)
	}
}
