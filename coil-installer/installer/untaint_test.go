package installer

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coil-project/coil/coild/api"
	kubeapitest "github.com/coil-project/coil/internal/testenv/kubeapi"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Users of the shared API server: one with exactly the rights RemoveTaint
// documents (get and patch nodes), one with get only.
const (
	untaintUser  = "untainter"
	readOnlyUser = "node-reader"
)

// sharedAPI is the kube-apiserver the tests share, with the users above bound
// to their rules.
var sharedAPI = &kubeapitest.Shared{
	Options: kubeapitest.Options{Users: []kubeapitest.User{{Name: untaintUser}, {Name: readOnlyUser}}},
	Setup: func(ctx context.Context, s *kubeapitest.Server) error {
		if err := bindUser(ctx, s, untaintUser, []string{"get", "patch"}); err != nil {
			return err
		}
		return bindUser(ctx, s, readOnlyUser, []string{"get"})
	},
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	sharedAPI.Stop()
	os.Exit(code)
}

// kubeAPI returns the shared kube-apiserver.
func kubeAPI(t *testing.T) *kubeapitest.Server { return sharedAPI.Get(t) }

func bindUser(ctx context.Context, s *kubeapitest.Server, user string, verbs []string) error {
	admin, err := kubernetes.NewForConfig(s.Config)
	if err != nil {
		return err
	}
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: verbs}},
	}
	if _, err := admin.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create role: %w", err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	if _, err := admin.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create binding: %w", err)
	}
	return nil
}

func userClient(t *testing.T, s *kubeapitest.Server, user string) kubernetes.Interface {
	t.Helper()
	cfg := s.Config
	if user != kubeapitest.AdminUser {
		var err error
		if cfg, err = s.UserConfig(user); err != nil {
			t.Fatal(err)
		}
	}
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var nodeSeq atomic.Int64

// createNode creates a Node with a name unique to the test and taints.
func createNode(t *testing.T, admin kubernetes.Interface, taints []corev1.Taint) string {
	t.Helper()
	name := fmt.Sprintf("node-%d", nodeSeq.Add(1))
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{Taints: taints}}
	if _, err := admin.CoreV1().Nodes().Create(context.Background(), n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	return name
}

func getNode(t *testing.T, admin kubernetes.Interface, name string) *corev1.Node {
	t.Helper()
	n, err := admin.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// taintKeys returns key=value:effect of each taint, in order.
func taintKeys(n *corev1.Node) []string {
	var out []string
	for _, t := range n.Spec.Taints {
		out = append(out, fmt.Sprintf("%s=%s:%s", t.Key, t.Value, t.Effect))
	}
	return out
}

var (
	bootstrapNoSchedule = corev1.Taint{Key: BootstrapTaint, Effect: corev1.TaintEffectNoSchedule}
	bootstrapNoExecute  = corev1.Taint{Key: BootstrapTaint, Value: "x", Effect: corev1.TaintEffectNoExecute}
	dedicated           = corev1.Taint{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule}
	notReady            = corev1.Taint{Key: "node.kubernetes.io/not-ready", Effect: corev1.TaintEffectNoExecute}
)

// The API server adds taints of its own to a new Node (the
// TaintNodesByCondition admission adds node.kubernetes.io/not-ready), so
// the tests compare with the taints the node has after creation, less the
// bootstrap taint.
func TestRemoveTaint(t *testing.T) {
	s := kubeAPI(t)
	admin := userClient(t, s, kubeapitest.AdminUser)
	tests := []struct {
		name        string
		taints      []corev1.Taint
		wantRemoved bool
	}{
		{name: "only the bootstrap taint", taints: []corev1.Taint{bootstrapNoSchedule}, wantRemoved: true},
		{name: "others stay in order", taints: []corev1.Taint{dedicated, bootstrapNoSchedule, notReady}, wantRemoved: true},
		{name: "every effect of the key", taints: []corev1.Taint{bootstrapNoSchedule, bootstrapNoExecute, dedicated}, wantRemoved: true},
		{name: "no bootstrap taint", taints: []corev1.Taint{dedicated}},
		{name: "no taints", taints: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := createNode(t, admin, tc.taints)
			before := getNode(t, admin, name)
			want := withoutBootstrap(taintKeys(before))
			for _, tt := range tc.taints {
				if tt.Key != BootstrapTaint && !contains(want, fmt.Sprintf("%s=%s:%s", tt.Key, tt.Value, tt.Effect)) {
					t.Fatalf("created node lacks taint %v: %v", tt, taintKeys(before))
				}
			}
			// As the least-privileged user: get and patch on nodes suffice.
			removed, err := RemoveTaint(context.Background(), userClient(t, s, untaintUser), name, BootstrapTaint)
			if err != nil {
				t.Fatal(err)
			}
			after := getNode(t, admin, name)
			if removed != tc.wantRemoved || !reflect.DeepEqual(taintKeys(after), want) {
				t.Errorf("removed %v, taints %v; want %v, %v", removed, taintKeys(after), tc.wantRemoved, want)
			}
			if !tc.wantRemoved && after.ResourceVersion != before.ResourceVersion {
				t.Error("the node was written although there was nothing to remove")
			}
		})
	}
}

// withoutBootstrap drops the bootstrap taint's entries from taintKeys output.
func withoutBootstrap(keys []string) []string {
	var out []string
	for _, k := range keys {
		if !strings.HasPrefix(k, BootstrapTaint+"=") {
			out = append(out, k)
		}
	}
	return out
}

func TestRemoveTaintErrors(t *testing.T) {
	s := kubeAPI(t)
	admin := userClient(t, s, kubeapitest.AdminUser)
	name := createNode(t, admin, []corev1.Taint{bootstrapNoSchedule})

	_, err := RemoveTaint(context.Background(), userClient(t, s, readOnlyUser), name, BootstrapTaint)
	if !apierrors.IsForbidden(err) {
		t.Errorf("without patch: error %v, want Forbidden", err)
	}
	if retriable(err) {
		t.Error("Forbidden counted as retriable")
	}
	_, err = RemoveTaint(context.Background(), admin, "no-such-node", BootstrapTaint)
	if !apierrors.IsNotFound(err) || retriable(err) {
		t.Errorf("missing node: error %v, want a final NotFound", err)
	}
	if got := taintKeys(getNode(t, admin, name)); !contains(got, BootstrapTaint+"=:NoSchedule") {
		t.Errorf("taints changed to %v", got)
	}
}

// fakeCoild answers /readyz on a unix socket like coild: 503 with an
// ErrorResponse until ready is set, then 200.
type fakeCoild struct {
	ready  atomic.Bool
	probes atomic.Int64
	socket string
}

func startFakeCoild(t *testing.T) *fakeCoild {
	t.Helper()
	f := &fakeCoild{socket: filepath.Join(t.TempDir(), "coild.sock")}
	ln, err := net.Listen("unix", f.socket)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathReady, func(w http.ResponseWriter, _ *http.Request) {
		f.probes.Add(1)
		w.Header().Set("Content-Type", "application/json")
		if !f.ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			json.NewEncoder(w).Encode(api.ErrorResponse{Status: http.StatusServiceUnavailable, Reason: api.ReasonUnavailable, Error: "restoring state"})
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"status": "ready"})
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return f
}

func (f *fakeCoild) client(t *testing.T) *api.Client {
	t.Helper()
	c, err := api.NewClient("unix://"+f.socket, api.WithTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestUntaintWaitsForCoild: while coild answers 503 the taint stays; once
// it answers 200 the taint goes and the other taints stay.
func TestUntaintWaitsForCoild(t *testing.T) {
	s := kubeAPI(t)
	admin := userClient(t, s, kubeapitest.AdminUser)
	name := createNode(t, admin, []corev1.Taint{bootstrapNoSchedule, dedicated})
	coild := startFakeCoild(t)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Untaint(ctx, UntaintConfig{
			NodeName:     name,
			Coild:        coild.client(t),
			Kube:         userClient(t, s, untaintUser),
			PollInterval: 20 * time.Millisecond,
		})
	}()

	for coild.probes.Load() < 5 {
		select {
		case err := <-done:
			t.Fatalf("Untaint returned while coild was not ready: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	before := taintKeys(getNode(t, admin, name))
	if !contains(before, BootstrapTaint+"=:NoSchedule") {
		t.Fatalf("after %d not-ready answers the taints are %v; the bootstrap taint went too early", coild.probes.Load(), before)
	}

	coild.ready.Store(true)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("Untaint did not return after coild became ready")
	}
	if got, want := taintKeys(getNode(t, admin, name)), withoutBootstrap(before); !reflect.DeepEqual(got, want) || !contains(got, "dedicated=db:NoSchedule") {
		t.Errorf("taints %v, want %v", got, want)
	}
}

func TestUntaintGivesUp(t *testing.T) {
	s := kubeAPI(t)
	admin := userClient(t, s, kubeapitest.AdminUser)
	name := createNode(t, admin, []corev1.Taint{bootstrapNoSchedule})
	coild := startFakeCoild(t)

	// coild never ready: Untaint ends with the context and says why.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := Untaint(ctx, UntaintConfig{NodeName: name, Coild: coild.client(t), Kube: admin, PollInterval: 20 * time.Millisecond})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, api.ErrUnavailable) {
		t.Errorf("error %v, want the deadline and coild's last answer", err)
	}

	// Ready, but not allowed to patch: a final error at once.
	coild.ready.Store(true)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	start := time.Now()
	err = Untaint(ctx2, UntaintConfig{NodeName: name, Coild: coild.client(t), Kube: userClient(t, s, readOnlyUser), PollInterval: time.Second})
	if !apierrors.IsForbidden(err) || time.Since(start) > 5*time.Second {
		t.Errorf("error %v after %v, want Forbidden without retries", err, time.Since(start))
	}
	if got := taintKeys(getNode(t, admin, name)); !contains(got, BootstrapTaint+"=:NoSchedule") {
		t.Errorf("taints %v, want the bootstrap taint kept", got)
	}
}
