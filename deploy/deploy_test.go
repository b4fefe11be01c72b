// Package deploy_test checks the manifests in deploy/ against the real
// thing (binaries, a kube-apiserver with strict validation, the rendered
// RBAC), so that a broken manifest fails `go test` rather than a cluster.
package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/coil-project/coil/coil-controller/controller"
	installercmd "github.com/coil-project/coil/coil-installer/cmd"
	"github.com/coil-project/coil/coil-installer/installer"
	"github.com/coil-project/coil/coild/api"
	kubeapitest "github.com/coil-project/coil/internal/testenv/kubeapi"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// Names the manifests are expected to use.
const (
	namespace     = "coil-system"
	coildSA       = "coild"
	controllerSA  = "coil-controller"
	image         = "ghcr.io/coil-project/coil:dev"
	exampleFile   = "examples/egress-gateway.yaml"
	conflistTmpl  = "cni/conflist.tmpl"
	coildBinary   = "coild"
	controllerBin = "coil-controller"
	installerBin  = "coil-installer"
)

// render builds the kustomization in this directory, as
// `kubectl kustomize deploy/` would.
func render(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	objs, err := renderDir(".")
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// renderDir builds the kustomization in dir, as `kubectl kustomize dir`.
func renderDir(dir string) ([]*unstructured.Unstructured, error) {
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	var objs []*unstructured.Unstructured
	for _, r := range m.Resources() {
		b, err := r.MarshalJSON()
		if err != nil {
			return nil, err
		}
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(b); err != nil {
			return nil, fmt.Errorf("rendered %s: %w", r.CurId(), err)
		}
		objs = append(objs, u)
	}
	return objs, nil
}

// readYAML decodes every document of a multi-document YAML file.
func readYAML(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

func id(u *unstructured.Unstructured) string {
	s := u.GetKind() + "/"
	if u.GetNamespace() != "" {
		s += u.GetNamespace() + "/"
	}
	return s + u.GetName()
}

// find returns the one object of kind and name (a generated ConfigMap is
// found by its name before the hash suffix).
func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, u := range objs {
		if u.GetKind() != kind {
			continue
		}
		n := u.GetName()
		if n == name || kind == "ConfigMap" && strings.HasPrefix(n, name+"-") && len(n) == len(name)+11 {
			found = append(found, u)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s %s, found %d", kind, name, len(found))
	}
	return found[0]
}

func convert[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	var out T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, &out, true); err != nil {
		t.Fatalf("%s: %v", id(u), err)
	}
	return &out
}

// workloads returns the pod specs of the rendered DaemonSet and Deployment.
func workloads(t *testing.T, objs []*unstructured.Unstructured) (ds *appsv1.DaemonSet, dep *appsv1.Deployment) {
	t.Helper()
	return convert[appsv1.DaemonSet](t, find(t, objs, "DaemonSet", "coild")),
		convert[appsv1.Deployment](t, find(t, objs, "Deployment", "coil-controller"))
}

func TestRender(t *testing.T) {
	objs := render(t)
	var ids []string
	for _, u := range objs {
		ids = append(ids, id(u))
		if u.GetNamespace() != "" && u.GetNamespace() != namespace {
			t.Errorf("%s is not in %s", id(u), namespace)
		}
	}
	sort.Strings(ids)
	cmCoil := find(t, objs, "ConfigMap", "coil-config").GetName()
	cmCNI := find(t, objs, "ConfigMap", "coil-cni").GetName()
	want := []string{
		"ClusterRole/coil-controller",
		"ClusterRole/coild",
		"ClusterRoleBinding/coil-controller",
		"ClusterRoleBinding/coild",
		"ConfigMap/" + namespace + "/" + cmCNI,
		"ConfigMap/" + namespace + "/" + cmCoil,
		"DaemonSet/" + namespace + "/coild",
		"Deployment/" + namespace + "/coil-controller",
		"Namespace/" + namespace,
		"PodDisruptionBudget/" + namespace + "/coil-controller",
		"Role/" + namespace + "/coil-controller-leader-election",
		"RoleBinding/" + namespace + "/coil-controller-leader-election",
		"ServiceAccount/" + namespace + "/coil-controller",
		"ServiceAccount/" + namespace + "/coild",
		"ValidatingAdmissionPolicy/coil-coild-own-node",
		"ValidatingAdmissionPolicyBinding/coil-coild-own-node",
	}
	sort.Strings(want)
	if !reflect.DeepEqual(ids, want) {
		t.Errorf("rendered objects:\n%s\nwant:\n%s", strings.Join(ids, "\n"), strings.Join(want, "\n"))
	}

	// The CNI template is the file, byte for byte, and renders into a
	// valid configuration list.
	tmpl, err := os.ReadFile(conflistTmpl)
	if err != nil {
		t.Fatal(err)
	}
	cni := convert[corev1.ConfigMap](t, find(t, objs, "ConfigMap", "coil-cni"))
	if cni.Data["conflist.tmpl"] != string(tmpl) {
		t.Errorf("ConfigMap coil-cni holds %q, want the content of %s", cni.Data["conflist.tmpl"], conflistTmpl)
	}
	rendered, err := installer.RenderConflist(conflistTmpl, installer.TemplateData{CoildEndpoint: "unix:///run/coil/coild.sock"})
	if err != nil {
		t.Error(err)
	} else {
		// containerd passes the pod's annotations only to a plugin
		// that declares the capability; coild then judges egress
		// without asking the API server.
		var list struct {
			Plugins []struct {
				Type         string          `json:"type"`
				Capabilities map[string]bool `json:"capabilities"`
			} `json:"plugins"`
		}
		if err := json.Unmarshal(rendered, &list); err != nil || len(list.Plugins) == 0 || list.Plugins[0].Type != "coil" ||
			!list.Plugins[0].Capabilities[api.PodAnnotationsCapability] {
			t.Errorf("the coil plugin must declare capability %s: %s (%v)", api.PodAnnotationsCapability, rendered, err)
		}
	}
	if v := convert[corev1.ConfigMap](t, find(t, objs, "ConfigMap", "coil-config")).Data["etcd-endpoints"]; v == "" {
		t.Error("ConfigMap coil-config has no etcd-endpoints")
	}

	ds, dep := workloads(t, objs)
	for _, spec := range []*corev1.PodSpec{&ds.Spec.Template.Spec, &dep.Spec.Template.Spec} {
		for _, c := range allContainers(spec) {
			if c.Image != image {
				t.Errorf("container %s: image %s, want %s (kustomize images)", c.Name, c.Image, image)
			}
		}
		// Generated names are referenced with their hash.
		for _, v := range spec.Volumes {
			if v.ConfigMap != nil && v.ConfigMap.Name != cmCNI {
				t.Errorf("volume %s refers to ConfigMap %s, not %s", v.Name, v.ConfigMap.Name, cmCNI)
			}
		}
		for _, c := range allContainers(spec) {
			for _, e := range c.Env {
				if r := e.ValueFrom; r != nil && r.ConfigMapKeyRef != nil && r.ConfigMapKeyRef.Name != cmCoil {
					t.Errorf("container %s env %s refers to ConfigMap %s, not %s", c.Name, e.Name, r.ConfigMapKeyRef.Name, cmCoil)
				}
			}
		}
	}

	checkDaemonSet(t, ds)
	checkController(t, dep, objs)
}

// checkDaemonSet checks what ties coild, the installer and the node
// together.
func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet) {
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.ServiceAccountName != coildSA {
		t.Errorf("coild: hostNetwork %v, service account %q", spec.HostNetwork, spec.ServiceAccountName)
	}
	tolerates := map[string]bool{}
	for _, tol := range spec.Tolerations {
		switch {
		case tol.Key == installer.BootstrapTaint && tol.Operator == corev1.TolerationOpExists:
			tolerates["bootstrap"] = true
		case tol.Key == "" && tol.Operator == corev1.TolerationOpExists:
			tolerates[string(tol.Effect)] = true
		}
	}
	for _, k := range []string{"bootstrap", "NoSchedule", "NoExecute"} {
		if !tolerates[k] {
			t.Errorf("coild does not tolerate every %s taint", k)
		}
	}

	containers := map[string]corev1.Container{}
	for _, c := range allContainers(&spec) {
		containers[c.Name] = c
		// Every container of ours learns its node from the downward API.
		if len(c.Command) > 0 && (c.Command[0] == installerBin || c.Command[0] == coildBinary) {
			if !hasFieldEnv(c, installercmd.NodeNameEnv, "spec.nodeName") {
				t.Errorf("container %s: no %s from spec.nodeName", c.Name, installercmd.NodeNameEnv)
			}
		}
	}
	install, coild, untaint := containers["install"], containers["coild"], containers["untaint"]
	if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != "install" {
		t.Errorf("want the installer as the only init container, got %v", spec.InitContainers)
	}

	// Privilege: the installer and coild write /proc/sys (the host's,
	// and pod namespaces'), which is read-only in unprivileged
	// containers; the untaint sidecar gets nothing.
	for _, c := range []corev1.Container{install, coild} {
		if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
			t.Errorf("container %s must be privileged (writes /proc/sys/net)", c.Name)
		}
	}
	if sc := untaint.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot ||
		sc.Privileged != nil && *sc.Privileged || sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Error("the untaint sidecar must run as non-root without capabilities")
	}

	// The plugin finds coild where coild listens, on a host path.
	socket := flagValue(coild.Args, "socket")
	endpoint := flagValue(install.Args, "coild-endpoint")
	if endpoint != "unix://"+socket {
		t.Errorf("conflist endpoint %q, coild socket %q", endpoint, socket)
	}
	if hp := hostPathOf(spec, coild, filepath.Dir(socket)); hp != filepath.Dir(socket) {
		t.Errorf("coild's socket directory %s is not the same host directory (%q)", filepath.Dir(socket), hp)
	}
	// The untaint sidecar asks coild's loopback listener.
	if got, want := flagValue(untaint.Args, "coild-endpoint"), "http://"+flagValue(coild.Args, "http"); got != want {
		t.Errorf("untaint asks %s, coild listens on %s", got, want)
	}
	if !hasFlag(untaint.Args, "keep-running") {
		t.Error("the untaint sidecar exits after its work; without --keep-running kubelet restarts it forever")
	}
	// The installer writes into the host's CNI directories.
	for name, host := range map[string]string{"cni-bin-dir": "/opt/cni/bin", "cni-conf-dir": "/etc/cni/net.d"} {
		if hp := hostPathOf(spec, install, flagValue(install.Args, name)); hp != host {
			t.Errorf("--%s is host path %q, want %s", name, hp, host)
		}
	}
	if hp := hostPathOf(spec, coild, "/var/run/netns"); hp != "/var/run/netns" {
		t.Error("coild does not see the host's /var/run/netns")
	}
	for _, m := range coild.VolumeMounts {
		if m.MountPath == "/var/run/netns" && (m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer) {
			t.Error("/var/run/netns needs mountPropagation HostToContainer")
		}
	}
	checkSecretMount(t, spec, coild)
	if got := flagValue(coild.Args, "metrics-addr"); got != ":9384" {
		t.Errorf("coild --metrics-addr %q, want :9384", got)
	}
}

func checkController(t *testing.T, dep *appsv1.Deployment, objs []*unstructured.Unstructured) {
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 {
		t.Errorf("coil-controller replicas %v, want 2", dep.Spec.Replicas)
	}
	spec := dep.Spec.Template.Spec
	if spec.ServiceAccountName != controllerSA || len(spec.Containers) != 1 {
		t.Fatalf("coil-controller: service account %q, %d containers", spec.ServiceAccountName, len(spec.Containers))
	}
	c := spec.Containers[0]
	if flagValue(c.Args, "leader-elect") != "true" || flagValue(c.Args, "metrics-addr") != ":9386" {
		t.Errorf("coil-controller args %v: want --leader-elect=true --metrics-addr=:9386", c.Args)
	}
	// The Lease lives where the Role grants it.
	role := find(t, objs, "Role", "coil-controller-leader-election")
	if got := flagValue(c.Args, "leader-elect-namespace"); got != "$(POD_NAMESPACE)" || !hasFieldEnv(c, "POD_NAMESPACE", "metadata.namespace") || role.GetNamespace() != namespace {
		t.Errorf("--leader-elect-namespace=%s must be the pod's namespace, where the Role is (%s)", got, role.GetNamespace())
	}
	checkSecretMount(t, spec, c)

	// RBAC is exactly what the controller documents and is tested with.
	cr := convert[rbacv1.ClusterRole](t, find(t, objs, "ClusterRole", "coil-controller"))
	if !reflect.DeepEqual(cr.Rules, controller.ClusterRules()) {
		t.Errorf("ClusterRole coil-controller rules\n%+v\nwant controller.ClusterRules()\n%+v", cr.Rules, controller.ClusterRules())
	}
	r := convert[rbacv1.Role](t, role)
	if !reflect.DeepEqual(r.Rules, controller.LeaseRules()) {
		t.Errorf("Role rules\n%+v\nwant controller.LeaseRules()\n%+v", r.Rules, controller.LeaseRules())
	}
	pdb := find(t, objs, "PodDisruptionBudget", "coil-controller")
	if sel, _, _ := unstructured.NestedStringMap(pdb.Object, "spec", "selector", "matchLabels"); !reflect.DeepEqual(sel, dep.Spec.Selector.MatchLabels) {
		t.Errorf("the PodDisruptionBudget selects %v, the Deployment's pods are %v", sel, dep.Spec.Selector.MatchLabels)
	}
}

// checkSecretMount: the etcd TLS files given as flags are in the
// coil-etcd-tls Secret's mount, under the keys of a kubernetes.io/tls
// Secret plus ca.crt.
func checkSecretMount(t *testing.T, spec corev1.PodSpec, c corev1.Container) {
	t.Helper()
	var dir string
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.Secret != nil && v.Secret.SecretName == "coil-etcd-tls" {
				dir = m.MountPath
			}
		}
	}
	if dir == "" {
		t.Errorf("container %s does not mount the Secret coil-etcd-tls", c.Name)
		return
	}
	for name, key := range map[string]string{"etcd-tls-ca": "ca.crt", "etcd-tls-cert": "tls.crt", "etcd-tls-key": "tls.key"} {
		if got := flagValue(c.Args, name); got != filepath.Join(dir, key) {
			t.Errorf("container %s --%s=%s, want %s", c.Name, name, got, filepath.Join(dir, key))
		}
	}
	if !strings.HasPrefix(flagValue(c.Args, "etcd-endpoints"), "$(") {
		t.Errorf("container %s: --etcd-endpoints should come from the coil-config ConfigMap", c.Name)
	}
}

func allContainers(spec *corev1.PodSpec) []corev1.Container {
	return append(append([]corev1.Container(nil), spec.InitContainers...), spec.Containers...)
}

func hasFieldEnv(c corev1.Container, name, fieldPath string) bool {
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == fieldPath {
			return true
		}
	}
	return false
}

// hostPathOf returns the host path mounted at path in container c ("" if
// none): the hostPath of the mount whose mountPath is path or a parent
// of it, with the rest of path appended.
func hostPathOf(spec corev1.PodSpec, c corev1.Container, path string) string {
	for _, m := range c.VolumeMounts {
		rel, err := filepath.Rel(m.MountPath, path)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil {
				return filepath.Join(v.HostPath.Path, rel)
			}
		}
	}
	return ""
}

// flagValue returns the value of --name=value in args.
func flagValue(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == "--"+name || strings.HasPrefix(a, "--"+name+"=") {
			return true
		}
	}
	return false
}

var (
	flagRE   = regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)`)
	envRefRE = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
)

// TestCommandLines builds the binaries and checks every flag in every
// container's command and args against the binary's --help, and every
// $(VAR) reference against the container's env (kubelet would pass an
// unknown reference through literally).
func TestCommandLines(t *testing.T) {
	bin := buildBinaries(t)
	specs := map[string]*corev1.PodSpec{}
	ds, dep := workloads(t, render(t))
	specs["DaemonSet coild"] = &ds.Spec.Template.Spec
	specs["Deployment coil-controller"] = &dep.Spec.Template.Spec

	helpCache := map[string]map[string]bool{}
	checked := 0
	for owner, spec := range specs {
		for _, c := range allContainers(spec) {
			if len(c.Command) == 0 {
				t.Errorf("%s container %s: no command; the image has no entrypoint", owner, c.Name)
				continue
			}
			binary := filepath.Base(c.Command[0])
			var sub, flags []string
			for _, a := range append(append([]string(nil), c.Command[1:]...), c.Args...) {
				switch {
				case strings.HasPrefix(a, "--"):
					name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
					flags = append(flags, name)
				case len(flags) == 0:
					sub = append(sub, a)
				default:
					t.Errorf("%s container %s: positional argument %q after flags", owner, c.Name, a)
				}
			}
			key := strings.Join(append([]string{binary}, sub...), " ")
			known, ok := helpCache[key]
			if !ok {
				known = helpFlags(t, filepath.Join(bin, binary), sub)
				helpCache[key] = known
			}
			for _, f := range flags {
				checked++
				if !known[f] {
					t.Errorf("%s container %s: %s has no flag --%s", owner, c.Name, key, f)
				}
			}
			env := map[string]bool{}
			for _, e := range c.Env {
				env[e.Name] = true
			}
			for _, a := range append(append([]string(nil), c.Command...), c.Args...) {
				for _, m := range envRefRE.FindAllStringSubmatch(a, -1) {
					if !env[m[1]] {
						t.Errorf("%s container %s: %q refers to $(%s), which is not in its env", owner, c.Name, a, m[1])
					}
				}
			}
		}
	}
	if checked < 20 {
		t.Errorf("only %d flags checked; the parser is broken", checked)
	}
	if len(helpCache) != 4 {
		t.Errorf("commands checked: %v; want coild, coil-controller, coil-installer install and untaint", helpCache)
	}
}

// buildBinaries builds the commands the containers run into a temporary
// directory. (With the default cgo setting, to share the build cache of
// `make build` and `go vet`; the flags are the same as in the image's
// static build.)
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./"+coildBinary, "./"+controllerBin, "./"+installerBin)
	cmd.Dir = ".." // the module root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// helpFlags runs `binary sub... --help` and returns the long flags it
// lists.
func helpFlags(t *testing.T, binary string, sub []string) map[string]bool {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(binary, append(append([]string(nil), sub...), "--help")...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = []string{"PATH=/usr/bin:/bin"} // no COIL_* from the test's environment
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v --help: %v\n%s", binary, sub, err, out.String())
	}
	flags := map[string]bool{}
	for _, m := range flagRE.FindAllStringSubmatch(out.String(), -1) {
		flags[m[1]] = true
	}
	if len(flags) < 3 {
		t.Fatalf("%s %v --help lists %d flags:\n%s", binary, sub, len(flags), out.String())
	}
	return flags
}

// sharedAPI is the API server the tests that need one share. The rendered
// Namespace is created for real: every other object is namespaced in it.
var sharedAPI = &kubeapitest.Shared{
	// --allow-privileged is on in every cluster that runs a CNI DaemonSet
	// (kubeadm's default); the test server's default is off.
	Options: kubeapitest.Options{ExtraArgs: []string{"--allow-privileged=true"}},
	Setup: func(ctx context.Context, s *kubeapitest.Server) error {
		objs, err := renderDir(".")
		if err != nil {
			return err
		}
		dyn, mapper, err := clients(s.Config)
		if err != nil {
			return err
		}
		for _, u := range objs {
			if u.GetKind() == "Namespace" {
				if err := create(ctx, dyn, mapper, u, false); err != nil {
					return err
				}
			}
		}
		return nil
	},
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	sharedAPI.Stop()
	os.Exit(code)
}

// cluster returns the shared API server, started on first use.
func cluster(t *testing.T) *kubeapitest.Server { return sharedAPI.Get(t) }

func clients(cfg *rest.Config) (dynamic.Interface, meta.RESTMapper, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	return dyn, restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc)), nil
}

// create submits u; with dryRun the server validates, defaults, admits and
// authorizes it completely but stores nothing. Unknown or duplicate fields
// are errors (strict field validation), as a typo in a manifest must be.
func create(ctx context.Context, dyn dynamic.Interface, mapper meta.RESTMapper, u *unstructured.Unstructured, dryRun bool) error {
	gvk := u.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return fmt.Errorf("%s: no such resource on the server: %w", id(u), err)
	}
	var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if u.GetNamespace() == "" {
			return fmt.Errorf("%s: namespaced, but has no namespace", id(u))
		}
		ri = dyn.Resource(m.Resource).Namespace(u.GetNamespace())
	} else if u.GetNamespace() != "" {
		return fmt.Errorf("%s: cluster-scoped, but has a namespace", id(u))
	}
	opts := metav1.CreateOptions{FieldValidation: metav1.FieldValidationStrict}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	if _, err := ri.Create(ctx, u, opts); err != nil {
		return fmt.Errorf("create %s: %w", id(u), err)
	}
	return nil
}

// TestServerDryRun submits every rendered object, and the egress example,
// to the API server with server-side dry-run.
func TestServerDryRun(t *testing.T) {
	s := cluster(t)
	ctx := context.Background()
	dyn, mapper, err := clients(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range render(t) {
		if u.GetKind() == "Namespace" {
			continue // created for real by cluster
		}
		t.Run(id(u), func(t *testing.T) {
			if err := create(ctx, dyn, mapper, u, true); err != nil {
				t.Error(err)
			}
		})
	}

	// A strict dry-run does catch mistakes: a misspelt field fails.
	broken := find(t, render(t), "DaemonSet", "coild")
	unstructured.SetNestedField(broken.Object, true, "spec", "template", "spec", "hostNetwrk")
	if err := create(ctx, dyn, mapper, broken, true); err == nil || !strings.Contains(err.Error(), "hostNetwrk") {
		t.Errorf("a misspelt field passed the dry-run: %v", err)
	}

	// The example, in its own namespace.
	for _, u := range readYAML(t, exampleFile) {
		dry := u.GetKind() != "Namespace"
		t.Run("example "+id(u), func(t *testing.T) {
			if err := create(ctx, dyn, mapper, u, dry); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestExample checks the example's labels and annotation: gateway pods
// labelled with the egress name, in a namespace annotated with a pool.
func TestExample(t *testing.T) {
	var nsAnnotated bool
	var gateways int
	for _, u := range readYAML(t, exampleFile) {
		switch u.GetKind() {
		case "Namespace":
			nsAnnotated = u.GetAnnotations()["coil.cybozu.com/pool"] != ""
		case "Deployment":
			d := convert[appsv1.Deployment](t, u)
			if d.Spec.Template.Labels["coil.cybozu.com/egress"] == "" {
				t.Error("gateway pods are not labelled coil.cybozu.com/egress")
			}
			gateways++
		}
		if u.GetKind() != "Namespace" && u.GetNamespace() == "" {
			t.Errorf("%s has no namespace", id(u))
		}
	}
	if !nsAnnotated || gateways != 1 {
		t.Errorf("namespace annotated %v, %d gateway Deployments", nsAnnotated, gateways)
	}
	// Not part of the kustomization.
	for _, u := range render(t) {
		if u.GetNamespace() == "internet-egress" {
			t.Errorf("%s of the example is in the kustomization", id(u))
		}
	}
}

// access is one request made as a service account, and whether RBAC
// must allow it.
type access struct {
	verb      string
	resource  schema.GroupVersionResource
	namespace string
	name      string
	allowed   bool
}

var (
	nodesR  = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}
	podsR   = schema.GroupVersionResource{Version: "v1", Resource: "pods"}
	nsR     = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}
	secretR = schema.GroupVersionResource{Version: "v1", Resource: "secrets"}
	cmR     = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}
	eventsR = schema.GroupVersionResource{Version: "v1", Resource: "events"}
	leaseR  = schema.GroupVersionResource{Group: "coordination.k8s.io", Version: "v1", Resource: "leases"}
	dsR     = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}
	depR    = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
	pdbR    = schema.GroupVersionResource{Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"}
	epsR    = schema.GroupVersionResource{Group: "discovery.k8s.io", Version: "v1", Resource: "endpointslices"}
)

// applyKinds creates, for real, the rendered objects of the given kinds on
// the shared API server; objects an earlier test created are kept.
func applyKinds(t *testing.T, s *kubeapitest.Server, kinds ...string) {
	t.Helper()
	dyn, mapper, err := clients(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range render(t) {
		if !slices.Contains(kinds, u.GetKind()) {
			continue
		}
		if err := create(context.Background(), dyn, mapper, u, false); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
}

// TestRBAC creates the rendered service accounts and RBAC objects for real
// and acts as each service account (impersonation) to show what it can
// and cannot do. Writes are dry-run, so a wrongly allowed request changes
// nothing; authorization happens before dry-run is considered.
func TestRBAC(t *testing.T) {
	s := cluster(t)
	ctx := context.Background()
	applyKinds(t, s, "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")

	tests := []struct {
		sa     string
		checks []access
	}{
		{sa: coildSA, checks: []access{
			{"list", nsR, "", "", true},
			{"watch", nsR, "", "", true},
			{"get", nsR, "", "default", true},
			{"list", podsR, "", "", true},
			{"watch", podsR, "", "", true},
			{"get", nodesR, "", "node-1", true},
			{"list", nodesR, "", "", true},
			{"patch", nodesR, "", "node-1", true},
			{"update", nodesR, "", "node-1", false},
			{"delete", nodesR, "", "node-1", false},
			{"create", nodesR, "", "node-1", false},
			{"get", secretR, namespace, "coil-etcd-tls", false},
			{"list", secretR, "", "", false},
			{"get", cmR, namespace, "coil-config", false},
			{"create", podsR, "default", "p", false},
			{"delete", podsR, "default", "p", false},
			{"create", depR, "default", "d", false},
			{"patch", nsR, "", "default", false},
			{"create", leaseR, namespace, "x", false},
			{"patch", dsR, namespace, "coild", false},
			// --etcd-endpoints=@NAMESPACE/NAME.
			{"list", epsR, "kube-system", "", true},
			{"watch", epsR, "kube-system", "", true},
			{"create", epsR, "kube-system", "x", false},
			{"delete", epsR, "kube-system", "x", false},
		}},
		{sa: controllerSA, checks: []access{
			{"list", nodesR, "", "", true},
			{"watch", nodesR, "", "", true},
			{"get", nodesR, "", "node-1", true},
			{"list", podsR, "", "", true},
			{"watch", podsR, "", "", true},
			{"get", podsR, "default", "p", true},
			{"create", eventsR, "default", "e", true},
			{"patch", eventsR, "default", "e", true},
			{"create", leaseR, namespace, "coil-controller", true},
			{"get", leaseR, namespace, "coil-controller", true},
			{"update", leaseR, namespace, "coil-controller", true},
			{"get", leaseR, namespace, "other", false},
			{"delete", leaseR, namespace, "coil-controller", false},
			{"get", leaseR, "kube-system", "coil-controller", false},
			{"patch", nodesR, "", "node-1", false},
			{"delete", nodesR, "", "node-1", false},
			{"delete", podsR, "default", "p", false},
			{"get", secretR, namespace, "coil-etcd-tls", false},
			{"list", secretR, "", "", false},
			{"list", nsR, "", "", false},
			// Managed egress gateways, in any namespace.
			{"list", depR, "", "", true},
			{"watch", depR, "", "", true},
			{"get", depR, "internet-egress", "nat-gateway", true},
			{"create", depR, "internet-egress", "nat-gateway", true},
			{"update", depR, "internet-egress", "nat-gateway", true},
			{"delete", depR, "internet-egress", "nat-gateway", true},
			{"patch", depR, "internet-egress", "nat-gateway", false},
			{"list", pdbR, "", "", true},
			{"watch", pdbR, "", "", true},
			{"create", pdbR, "internet-egress", "nat-gateway", true},
			{"update", pdbR, "internet-egress", "nat-gateway", true},
			{"delete", pdbR, "internet-egress", "nat-gateway", true},
			{"patch", pdbR, "internet-egress", "nat-gateway", false},
			{"create", podsR, "internet-egress", "p", false},
			{"patch", dsR, namespace, "coild", false},
			{"delete", dsR, namespace, "coild", false},
			{"list", epsR, "kube-system", "", true},
			{"watch", epsR, "kube-system", "", true},
			{"update", epsR, "kube-system", "x", false},
		}},
		// A service account without bindings: every allowed answer above
		// comes from the rendered RBAC.
		{sa: "nobody", checks: []access{
			{"list", nsR, "", "", false},
			{"list", nodesR, "", "", false},
			{"get", leaseR, namespace, "coil-controller", false},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.sa, func(t *testing.T) {
			cfg := rest.CopyConfig(s.Config)
			cfg.Impersonate = rest.ImpersonationConfig{
				UserName: "system:serviceaccount:" + namespace + ":" + tc.sa,
				Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
			}
			as, err := dynamic.NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range tc.checks {
				allowed, err := try(ctx, as, a)
				if err != nil {
					t.Errorf("%s %s %s/%s: %v", a.verb, a.resource.Resource, a.namespace, a.name, err)
				} else if allowed != a.allowed {
					t.Errorf("%s %s %s/%s: allowed %v, want %v", a.verb, a.resource.Resource, a.namespace, a.name, allowed, a.allowed)
				}
			}
		})
	}

	// And the real thing: coild's service account removes the bootstrap
	// taint as the untaint sidecar does.
	t.Run("untaint as coild", func(t *testing.T) {
		admin, err := kubernetes.NewForConfig(s.Config)
		if err != nil {
			t.Fatal(err)
		}
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "untaint-node"}, Spec: corev1.NodeSpec{Taints: []corev1.Taint{
			{Key: installer.BootstrapTaint, Effect: corev1.TaintEffectNoSchedule},
			{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule},
		}}}
		if _, err := admin.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		cfg := rest.CopyConfig(s.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + namespace + ":" + coildSA}
		as, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		removed, err := installer.RemoveTaint(ctx, as, node.Name, installer.BootstrapTaint)
		if err != nil || !removed {
			t.Fatalf("RemoveTaint as coild: %v, %v", removed, err)
		}
		got, err := admin.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range got.Spec.Taints {
			if tt.Key == installer.BootstrapTaint {
				t.Errorf("taint still there: %v", got.Spec.Taints)
			}
		}
	})
}

// try makes the request of a and reports whether RBAC let it through: a
// Forbidden answer means no; success, NotFound, Invalid and the like mean
// the request got past authorization. Writes are dry-run.
func try(ctx context.Context, dyn dynamic.Interface, a access) (bool, error) {
	var ri dynamic.ResourceInterface = dyn.Resource(a.resource)
	if a.namespace != "" {
		ri = dyn.Resource(a.resource).Namespace(a.namespace)
	}
	dry := []string{metav1.DryRunAll}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": a.resource.GroupVersion().String(),
		"metadata":   map[string]any{"name": a.name, "namespace": a.namespace},
	}}
	var err error
	switch a.verb {
	case "get":
		_, err = ri.Get(ctx, a.name, metav1.GetOptions{})
	case "list":
		_, err = ri.List(ctx, metav1.ListOptions{Limit: 1})
	case "watch":
		var w interface{ Stop() }
		w, err = ri.Watch(ctx, metav1.ListOptions{TimeoutSeconds: ptr(int64(1))})
		if err == nil {
			w.Stop()
		}
	case "create":
		_, err = ri.Create(ctx, obj, metav1.CreateOptions{DryRun: dry})
	case "update":
		_, err = ri.Update(ctx, obj, metav1.UpdateOptions{DryRun: dry})
	case "patch":
		_, err = ri.Patch(ctx, a.name, types.MergePatchType, []byte(`{}`), metav1.PatchOptions{DryRun: dry})
	case "delete":
		err = ri.Delete(ctx, a.name, metav1.DeleteOptions{DryRun: dry})
	default:
		return false, fmt.Errorf("unknown verb %q", a.verb)
	}
	switch {
	case apierrors.IsForbidden(err):
		return false, nil
	case err == nil, apierrors.IsNotFound(err), apierrors.IsInvalid(err), apierrors.IsBadRequest(err), apierrors.IsAlreadyExists(err), apierrors.IsConflict(err):
		return true, nil
	}
	return false, err
}

func ptr[T any](v T) *T { return &v }

// overlay is the overlay docs/setup.md and docs/usage.md show, with the
// base path filled in.
const overlay = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: coil-system
resources:
  - BASE
configMapGenerator:
  - name: coil-config
    behavior: replace
    literals:
      - etcd-endpoints=https://10.0.0.11:2379,https://10.0.0.12:2379,https://10.0.0.13:2379
images:
  - name: ghcr.io/coil-project/coil
    newName: registry.example.com/coil
    newTag: v1.0.0
patches:
  - target:
      kind: DaemonSet
      name: coild
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --flat-l2
`

// TestOverlay renders the documented overlay: endpoints, image and an
// extra coild flag arrive where they should.
func TestOverlay(t *testing.T) {
	base, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, base) // kustomize wants a relative base
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(strings.Replace(overlay, "BASE", rel, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	objs, err := renderDir(dir)
	if err != nil {
		t.Fatalf("the documented overlay: %v", err)
	}
	cm := convert[corev1.ConfigMap](t, find(t, objs, "ConfigMap", "coil-config"))
	if got := cm.Data["etcd-endpoints"]; !strings.HasPrefix(got, "https://10.0.0.11:2379,") {
		t.Errorf("etcd-endpoints %q", got)
	}
	ds, dep := workloads(t, objs)
	for _, c := range append(allContainers(&ds.Spec.Template.Spec), dep.Spec.Template.Spec.Containers...) {
		if c.Image != "registry.example.com/coil:v1.0.0" {
			t.Errorf("container %s image %s", c.Name, c.Image)
		}
		for _, e := range c.Env {
			if r := e.ValueFrom; r != nil && r.ConfigMapKeyRef != nil && r.ConfigMapKeyRef.Name != cm.Name {
				t.Errorf("container %s refers to ConfigMap %s, not %s", c.Name, r.ConfigMapKeyRef.Name, cm.Name)
			}
		}
	}
	if c := ds.Spec.Template.Spec.Containers[0]; c.Name != "coild" || !hasFlag(c.Args, "flat-l2") {
		t.Errorf("container %s args %v: want coild with --flat-l2", c.Name, c.Args)
	}
}
