package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/internal/testenv/fakecoild"
	netnstest "github.com/coil-project/coil/internal/testenv/netns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/nodenet"
)

const podArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc"

var hostAddr = netip.MustParseAddr("10.99.0.1")

// newTestNS creates a namespace for the test (see netnstest.New).
func newTestNS(t *testing.T) ns.NetNS { return netnstest.New(t) }

// inNS runs f inside n and fails the test on error.
func inNS(t *testing.T, n ns.NetNS, f func() error) { netnstest.Do(t, n, f) }

// newHost returns a netns playing the node, with an address of its own
// on lo for pods to reach.
func newHost(t *testing.T) ns.NetNS {
	t.Helper()
	host := newTestNS(t)
	inNS(t, host, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: hostAddr.AsSlice(), Mask: net.CIDRMask(32, 32)}})
	})
	return host
}

// netconf returns a network configuration; extra keys are merged in.
func netconf(cniVersion, coild string, extra map[string]any) []byte {
	m := map[string]any{"cniVersion": cniVersion, "name": "k8s", "type": "coil", "coild": coild}
	for k, v := range extra {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func cmdArgs(pod ns.NetNS, conf []byte) *skel.CmdArgs {
	return &skel.CmdArgs{
		ContainerID: "cid-1",
		Netns:       pod.Path(),
		IfName:      "eth0",
		Args:        podArgs,
		StdinData:   conf,
	}
}

// cniCode returns the CNI error code of err, failing if err is no CNI
// error.
func cniCode(t *testing.T, err error) uint {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return e.Code
}

// add runs ADD inside host and returns the raw result JSON.
func add(t *testing.T, host ns.NetNS, args *skel.CmdArgs) []byte {
	t.Helper()
	var out []byte
	inNS(t, host, func() error {
		var err error
		_, out, err = testutils.CmdAddWithArgs(args, func() error { return CmdAdd(args) })
		return err
	})
	return out
}

func TestAddCheckDel(t *testing.T) {
	tests := []struct {
		version string
		want    string // result JSON with MACs replaced by "MAC"
	}{
		{"1.1.0", `{"cniVersion":"1.1.0","interfaces":[{"name":"HOST","mac":"MAC"},{"name":"eth0","mac":"MAC","sandbox":"NETNS"}],` +
			`"ips":[{"interface":1,"address":"10.1.0.5/32","gateway":"169.254.1.1"},{"interface":1,"address":"fd00::5/128","gateway":"fe80::1"}],` +
			`"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"},{"dst":"::/0","gw":"fe80::1"}]}`},
		{"0.4.0", `{"cniVersion":"0.4.0","interfaces":[{"name":"HOST","mac":"MAC"},{"name":"eth0","mac":"MAC","sandbox":"NETNS"}],` +
			`"ips":[{"version":"4","interface":1,"address":"10.1.0.5/32","gateway":"169.254.1.1"},{"version":"6","interface":1,"address":"fd00::5/128","gateway":"fe80::1"}],` +
			`"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"},{"dst":"::/0","gw":"fe80::1"}],"dns":{}}`},
	}
	for _, tt := range tests {
		t.Run(tt.version, func(t *testing.T) {
			host := newHost(t)
			pod := newTestNS(t)
			coild := fakecoild.New("10.1.0.5", "fd00::5")
			ep := serve(t, coild)
			args := cmdArgs(pod, netconf(tt.version, ep, map[string]any{"mtu": 1450}))
			hostVeth := nodenet.HostVethName("ns1", "web-0")

			out := add(t, host, args)
			if got := coild.LastAlloc(); got == nil || !reflect.DeepEqual(*got, api.AllocRequest{PodNamespace: "ns1", PodName: "web-0", ContainerID: "cid-1", Interface: "eth0", NetNS: pod.Path(), Network: "k8s"}) {
				t.Errorf("coild got %+v", got)
			}

			// Compare the result with MACs masked: they are random.
			var res map[string]any
			if err := json.Unmarshal(out, &res); err != nil {
				t.Fatal(err)
			}
			for _, i := range res["interfaces"].([]any) {
				m := i.(map[string]any)
				if hw, err := net.ParseMAC(m["mac"].(string)); err != nil || len(hw) != 6 {
					t.Errorf("bad MAC in %v", m)
				}
				m["mac"] = "MAC"
			}
			masked, _ := json.Marshal(res)
			want := strings.NewReplacer("HOST", hostVeth, "NETNS", pod.Path()).Replace(tt.want)
			var wantRes map[string]any
			if err := json.Unmarshal([]byte(want), &wantRes); err != nil {
				t.Fatal(err)
			}
			wantJSON, _ := json.Marshal(wantRes)
			if string(masked) != string(wantJSON) {
				t.Errorf("result\n got %s\nwant %s", masked, wantJSON)
			}

			// The pod has its addresses and reaches the host.
			inNS(t, pod, func() error {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				if l.Attrs().MTU != 1450 {
					t.Errorf("pod MTU %d, want 1450", l.Attrs().MTU)
				}
				return nil
			})
			ln := listenIn(t, host, hostAddr)
			inNS(t, pod, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp", ln)
				if err != nil {
					t.Errorf("pod cannot reach host: %v", err)
					return nil
				}
				return c.Close()
			})

			// CHECK with the cached result as prevResult.
			var prev map[string]any
			if err := json.Unmarshal(out, &prev); err != nil {
				t.Fatal(err)
			}
			checkArgs := cmdArgs(pod, netconf(tt.version, ep, map[string]any{"mtu": 1450, "prevResult": prev}))
			inNS(t, host, func() error {
				return testutils.CmdCheckWithArgs(checkArgs, func() error { return CmdCheck(checkArgs) })
			})

			// DEL twice.
			for i := range 2 {
				inNS(t, host, func() error {
					return testutils.CmdDelWithArgs(args, func() error { return CmdDel(args) })
				})
				if !coild.Saw("DELETE /ip/ns1/web-0/cid-1") || coild.Holds() != 0 {
					t.Errorf("DEL %d did not release the address: %v", i+1, coild.Requests())
				}
			}
			inNS(t, host, func() error {
				if _, err := netlink.LinkByName(hostVeth); err == nil {
					t.Errorf("host veth %s left after DEL", hostVeth)
				}
				return nil
			})

			// CHECK now fails: coild holds nothing.
			err := host.Do(func(ns.NetNS) error { return CmdCheck(checkArgs) })
			if code := cniCode(t, err); code != types.ErrUnknownContainer {
				t.Errorf("CHECK after DEL: code %d (%v), want %d", code, err, types.ErrUnknownContainer)
			}
		})
	}
}

// listenIn opens a TCP listener inside n that accepts and closes
// connections; it returns the listening address.
func listenIn(t *testing.T, n ns.NetNS, addr netip.Addr) string {
	return netnstest.Listen(t, n, addr, 0).String()
}

func TestAddUnixSocketIPv4Only(t *testing.T) {
	host := newHost(t)
	pod := newTestNS(t)
	coild := fakecoild.New("10.1.0.7")
	ep, _ := coild.ServeUnix(t)
	args := cmdArgs(pod, netconf("1.0.0", ep, nil))
	var compact bytes.Buffer
	if err := json.Compact(&compact, add(t, host, args)); err != nil {
		t.Fatal(err)
	}
	out := compact.String()
	if !strings.Contains(out, `"cniVersion":"1.0.0"`) || !strings.Contains(out, `"address":"10.1.0.7/32"`) || strings.Contains(out, "::/0") {
		t.Errorf("result %s", out)
	}
	inNS(t, host, func() error {
		return nodenet.CheckPod(nodenet.PodConfig{
			NetNSPath: pod.Path(), IfName: "eth0", HostVethName: nodenet.HostVethName("ns1", "web-0"),
			IPv4: netip.MustParseAddr("10.1.0.7"),
		})
	})
}

func TestDelAfterNetNSGone(t *testing.T) {
	host := newHost(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	pod, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	coild := fakecoild.New("10.1.0.8")
	args := cmdArgs(pod, netconf("1.1.0", serve(t, coild), nil))
	add(t, host, args)

	pod.Close()
	if err := testutils.UnmountNS(pod); err != nil {
		t.Fatal(err)
	}
	for _, netnsPath := range []string{args.Netns, ""} {
		args.Netns = netnsPath
		inNS(t, host, func() error { return CmdDel(args) })
	}
	if coild.Holds() != 0 {
		t.Error("address not released")
	}
}

func TestCheckDetectsMissingRoute(t *testing.T) {
	host := newHost(t)
	pod := newTestNS(t)
	coild := fakecoild.New("10.1.0.9", "fd00::9")
	args := cmdArgs(pod, netconf("1.1.0", serve(t, coild), nil))
	add(t, host, args)
	inNS(t, pod, func() error {
		return netlink.RouteDel(&netlink.Route{
			Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
			Gw:  net.ParseIP("fe80::1"),
		})
	})
	err := host.Do(func(ns.NetNS) error { return CmdCheck(args) })
	if err == nil || !strings.Contains(err.Error(), "route ::/0 via fe80::1 dev eth0 missing") {
		t.Errorf("CHECK = %v, want the missing route named", err)
	}
}

func TestAddRollback(t *testing.T) {
	host := newHost(t)
	pod := newTestNS(t)
	// Something already holds eth0 in the pod, so SetupPod fails after
	// coild has allocated.
	inNS(t, pod, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "other"})
	})
	coild := fakecoild.New("10.1.0.10")
	args := cmdArgs(pod, netconf("1.1.0", serve(t, coild), nil))
	err := host.Do(func(ns.NetNS) error { return CmdAdd(args) })
	if code := cniCode(t, err); code != types.ErrInternal {
		t.Errorf("code %d, want %d: %v", code, types.ErrInternal, err)
	}
	if !strings.Contains(err.Error(), "set up network of pod ns1/web-0") {
		t.Errorf("error does not say what failed: %v", err)
	}
	if !coild.Saw("DELETE /ip/ns1/web-0/cid-1") || coild.Holds() != 0 {
		t.Errorf("address not released on rollback: %v", coild.Requests())
	}
	inNS(t, host, func() error {
		if _, err := netlink.LinkByName(nodenet.HostVethName("ns1", "web-0")); err == nil {
			t.Error("host veth left after failed ADD")
		}
		return nil
	})
	// The pre-existing interface is not ours and stays.
	inNS(t, pod, func() error {
		_, err := netlink.LinkByName("eth0")
		return err
	})
}

// TestAddSkipsEgressOnlyWhenCoildSaysSo: ADD sends POST /egress unless
// coild's allocation answer says there is nothing to set up, and the pod
// is wired up the same either way.
func TestAddSkipsEgressOnlyWhenCoildSaysSo(t *testing.T) {
	for _, skip := range []bool{false, true} {
		t.Run(fmt.Sprintf("skip-egress=%v", skip), func(t *testing.T) {
			host := newHost(t)
			pod := newTestNS(t)
			coild := fakecoild.New("10.1.0.13")
			coild.SkipEgress = skip
			args := cmdArgs(pod, netconf("1.1.0", serve(t, coild), nil))
			add(t, host, args)
			if sent := coild.Saw("POST /egress"); sent == skip {
				t.Errorf("POST /egress sent = %v with skip-egress %v: %v", sent, skip, coild.Requests())
			}
			inNS(t, pod, func() error {
				l, err := netlink.LinkByName("eth0")
				if err != nil {
					t.Fatalf("pod interface: %v", err)
				}
				addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
				if err != nil || len(addrs) != 1 || addrs[0].IP.String() != "10.1.0.13" {
					t.Errorf("pod addresses = %v, %v", addrs, err)
				}
				return nil
			})
		})
	}
}

// TestAddPassesTheRuntimesEgressAnnotations: the pod annotations the
// runtime passes (containerd's io.kubernetes.cri.pod-annotations) reach
// coild's POST /ip, only those of egress, and as "none" rather than
// "unknown" when the runtime passed annotations without any.
func TestAddPassesTheRuntimesEgressAnnotations(t *testing.T) {
	tests := []struct {
		name          string
		runtimeConfig map[string]any
		want          map[string]string
	}{
		{"no runtimeConfig", nil, nil},
		{"other capabilities only", map[string]any{"portMappings": []any{}}, nil},
		{"annotations, no egress", map[string]any{api.PodAnnotationsCapability: map[string]string{"kubernetes.io/config.seen": "2026-12-01T00:00:00Z"}}, map[string]string{}},
		{"a client", map[string]any{api.PodAnnotationsCapability: map[string]string{
			"kubernetes.io/config.seen":       "2026-12-01T00:00:00Z",
			"egress.coil.cybozu.com/internet": "nat",
			"egress.coil.cybozu.com/":         "not a namespace",
			"other.example/egress":            "x",
		}}, map[string]string{"egress.coil.cybozu.com/internet": "nat"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newHost(t)
			pod := newTestNS(t)
			coild := fakecoild.New("10.1.0.14")
			var extra map[string]any
			if tt.runtimeConfig != nil {
				extra = map[string]any{"runtimeConfig": tt.runtimeConfig}
			}
			add(t, host, cmdArgs(pod, netconf("1.1.0", serve(t, coild), extra)))
			got := coild.LastAlloc()
			if got == nil {
				t.Fatal("no POST /ip")
			}
			// DeepEqual tells a nil map (unknown) from an empty one (none).
			if !reflect.DeepEqual(got.EgressAnnotations, tt.want) {
				t.Errorf("egress-annotations = %#v, want %#v", got.EgressAnnotations, tt.want)
			}
		})
	}
}

// TestAddEgressRollback: when coild cannot set up the pod's egress, ADD
// fails and leaves nothing behind, so that the pod never runs with its
// egress traffic on the wrong path.
func TestAddEgressRollback(t *testing.T) {
	tests := []struct {
		name     string
		fail     *api.ErrorResponse
		wantCode uint
	}{
		{"not ready", &api.ErrorResponse{Status: 503, Error: "egress state not loaded yet", Reason: api.ReasonUnavailable}, types.ErrTryAgainLater},
		{"programming failed", &api.ErrorResponse{Status: 500, Error: "create vxlan: boom", Reason: api.ReasonInternal}, types.ErrInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newHost(t)
			pod := newTestNS(t)
			coild := fakecoild.New("10.1.0.12")
			coild.FailEgress = tt.fail
			args := cmdArgs(pod, netconf("1.1.0", serve(t, coild), nil))
			err := host.Do(func(ns.NetNS) error { return CmdAdd(args) })
			if code := cniCode(t, err); code != tt.wantCode {
				t.Errorf("code %d, want %d: %v", code, tt.wantCode, err)
			}
			if !strings.Contains(err.Error(), "set up egress of pod ns1/web-0") || !strings.Contains(err.Error(), tt.fail.Error) {
				t.Errorf("error does not say what failed: %v", err)
			}
			if e := coild.LastEgress(); e == nil || e.NetNS != pod.Path() || e.ContainerID != "cid-1" || e.PodName != "web-0" {
				t.Errorf("POST /egress body = %+v", e)
			}
			if !coild.Saw("DELETE /ip/ns1/web-0/cid-1") || coild.Holds() != 0 {
				t.Errorf("address not released on rollback: %v", coild.Requests())
			}
			inNS(t, host, func() error {
				if _, err := netlink.LinkByName(nodenet.HostVethName("ns1", "web-0")); err == nil {
					t.Error("host veth left after failed ADD")
				}
				return nil
			})
			inNS(t, pod, func() error {
				if _, err := netlink.LinkByName("eth0"); err == nil {
					t.Error("pod interface left after failed ADD")
				}
				return nil
			})
		})
	}
}

func TestAddErrors(t *testing.T) {
	tests := []struct {
		name     string
		fail     *api.ErrorResponse
		down     bool
		wantCode uint
		wantMsg  string
	}{
		{name: "coild down", down: true, wantCode: types.ErrTryAgainLater, wantMsg: "coild is unreachable"},
		{name: "etcd down", fail: &api.ErrorResponse{Status: 503, Error: "etcd: context deadline exceeded", Reason: api.ReasonUnavailable},
			wantCode: types.ErrTryAgainLater, wantMsg: "etcd: context deadline exceeded"},
		{name: "pool exhausted", fail: &api.ErrorResponse{Status: 503, Error: "pool default has no free address", Reason: api.ReasonPoolExhausted},
			wantCode: ErrCodePoolExhausted, wantMsg: "pool exhausted: "},
		{name: "bad request", fail: &api.ErrorResponse{Status: 400, Error: "unknown pool", Reason: api.ReasonBadRequest},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "unknown pool"},
		{name: "read-only listener", fail: &api.ErrorResponse{Status: 403, Error: "POST /ip: coild's TCP listener is read-only", Reason: api.ReasonForbidden},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "unix:///run/coild.sock"},
		{name: "forbidden without a reason", fail: &api.ErrorResponse{Status: 403, Error: "forbidden"},
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "coild's unix socket"},
		{name: "internal", fail: &api.ErrorResponse{Status: 500, Error: "boom", Reason: api.ReasonInternal},
			wantCode: types.ErrInternal, wantMsg: "boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			host := newHost(t)
			pod := newTestNS(t)
			coild := fakecoild.New("10.1.0.11")
			coild.FailAlloc = tt.fail
			ep := fakecoild.DownEndpoint(t)
			if !tt.down {
				ep = serve(t, coild)
			}
			args := cmdArgs(pod, netconf("1.1.0", ep, nil))
			err := host.Do(func(ns.NetNS) error { return CmdAdd(args) })
			if code := cniCode(t, err); code != tt.wantCode {
				t.Errorf("code %d, want %d: %v", code, tt.wantCode, err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) || !strings.Contains(err.Error(), "ns1/web-0") {
				t.Errorf("message %q lacks %q or the pod", err, tt.wantMsg)
			}
			// The links built while coild allocated are gone again.
			inNS(t, host, func() error {
				if _, err := netlink.LinkByName(nodenet.HostVethName("ns1", "web-0")); err == nil {
					t.Error("host veth left after a failed allocation")
				}
				return nil
			})
			inNS(t, pod, func() error {
				if _, err := netlink.LinkByName("eth0"); err == nil {
					t.Error("pod interface left after a failed allocation")
				}
				return nil
			})
		})
	}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		name     string
		down     bool
		notReady bool
		wantCode uint
	}{
		{name: "ready"},
		{name: "not ready", notReady: true, wantCode: types.ErrPluginNotAvailable},
		{name: "down", down: true, wantCode: types.ErrPluginNotAvailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			coild := fakecoild.New("10.1.0.12")
			coild.NotReady = tt.notReady
			ep := fakecoild.DownEndpoint(t)
			if !tt.down {
				ep = serve(t, coild)
			}
			args := &skel.CmdArgs{StdinData: netconf("1.1.0", ep, nil)}
			err := testutils.CmdStatus(func() error { return CmdStatus(args) })
			if tt.wantCode == 0 {
				if err != nil {
					t.Fatalf("STATUS: %v", err)
				}
				return
			}
			if code := cniCode(t, err); code != tt.wantCode {
				t.Errorf("code %d, want %d: %v", code, tt.wantCode, err)
			}
			if !strings.Contains(err.Error(), "plugin not available") {
				t.Errorf("message %q", err)
			}
		})
	}
}

func TestGC(t *testing.T) {
	coild := fakecoild.New("10.1.0.13")
	conf := netconf("1.1.0", serve(t, coild), map[string]any{
		"cni.dev/valid-attachments": []map[string]string{
			{"containerID": "a", "ifname": "eth0"},
			{"containerID": "b", "ifname": "net1"},
		},
	})
	if err := CmdGC(&skel.CmdArgs{StdinData: conf}); err != nil {
		t.Fatal(err)
	}
	want := []api.Attachment{{ContainerID: "a", Interface: "eth0"}, {ContainerID: "b", Interface: "net1"}}
	if gc := coild.LastGC(); gc == nil || len(gc.ValidAttachments) != 2 ||
		gc.ValidAttachments[0] != want[0] || gc.ValidAttachments[1] != want[1] || gc.Network != "k8s" {
		t.Errorf("coild got GC %+v, want network k8s and %+v", gc, want)
	}

	// Without a name coild could not tell this network's addresses from
	// another's: the plugin refuses rather than collect them all.
	var nameless map[string]any
	if err := json.Unmarshal(conf, &nameless); err != nil {
		t.Fatal(err)
	}
	delete(nameless, "name")
	raw, _ := json.Marshal(nameless)
	if code := cniCode(t, CmdGC(&skel.CmdArgs{StdinData: raw})); code != types.ErrInvalidNetworkConfig {
		t.Errorf("GC without a network name: code %d, want %d", code, types.ErrInvalidNetworkConfig)
	}

	err := CmdGC(&skel.CmdArgs{StdinData: netconf("1.1.0", fakecoild.DownEndpoint(t), nil)})
	if code := cniCode(t, err); code != types.ErrTryAgainLater {
		t.Errorf("GC with coild down: code %d, want %d", code, types.ErrTryAgainLater)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name     string
		conf     string
		args     string
		wantCode uint
		wantMsg  string
	}{
		{"malformed JSON", `{"cniVersion":"1.1.0",`, podArgs, types.ErrInvalidNetworkConfig, "cannot decode network config"},
		{"mtu not a number", `{"cniVersion":"1.1.0","type":"coil","mtu":"big"}`, podArgs, types.ErrInvalidNetworkConfig, "cannot decode"},
		{"negative mtu", `{"cniVersion":"1.1.0","type":"coil","mtu":-1}`, podArgs, types.ErrInvalidNetworkConfig, `invalid "mtu"`},
		{"bad endpoint", `{"cniVersion":"1.1.0","type":"coil","coild":"tcp://x"}`, podArgs, types.ErrInvalidNetworkConfig, `invalid "coild" endpoint`},
		{"bad network name", `{"cniVersion":"1.1.0","name":"a/b","type":"coil"}`, podArgs, types.ErrInvalidNetworkConfig, `invalid "name"`},
		{"no pod name", `{"cniVersion":"1.1.0","type":"coil"}`, "K8S_POD_NAMESPACE=a", types.ErrInvalidEnvironmentVariables, "K8S_POD_NAME"},
		{"no args", `{"cniVersion":"1.1.0","type":"coil"}`, "", types.ErrInvalidEnvironmentVariables, "K8S_POD_NAMESPACE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := &skel.CmdArgs{ContainerID: "c", Netns: "/nonexistent", IfName: "eth0", Args: tt.args, StdinData: []byte(tt.conf)}
			for name, cmd := range map[string]func(*skel.CmdArgs) error{"ADD": CmdAdd, "DEL": CmdDel, "CHECK": CmdCheck} {
				err := cmd(args)
				if code := cniCode(t, err); code != tt.wantCode {
					t.Errorf("%s: code %d, want %d: %v", name, code, tt.wantCode, err)
				}
				if !strings.Contains(err.Error(), tt.wantMsg) {
					t.Errorf("%s: message %q lacks %q", name, err, tt.wantMsg)
				}
			}
		})
	}
}

func TestParseNetConfDefaults(t *testing.T) {
	conf, err := parseNetConf([]byte(`{"cniVersion":"1.1.0","name":"k8s","type":"coil"}`))
	if err != nil {
		t.Fatal(err)
	}
	if conf.Coild != api.DefaultEndpoint || conf.MTU != 0 {
		t.Errorf("defaults: %+v", conf)
	}
}

func TestSplitAddresses(t *testing.T) {
	tests := []struct {
		name   string
		resp   api.AllocResponse
		v4, v6 string
		ok     bool
	}{
		{"dual", api.AllocResponse{Addresses: []string{"10.0.0.1", "fd00::1"}}, "10.0.0.1", "fd00::1", true},
		{"v6 first", api.AllocResponse{Addresses: []string{"fd00::1", "10.0.0.1"}}, "10.0.0.1", "fd00::1", true},
		{"v1 single address", api.AllocResponse{Address: "10.0.0.1"}, "10.0.0.1", "", true},
		{"empty", api.AllocResponse{}, "", "", false},
		{"garbage", api.AllocResponse{Addresses: []string{"10.0.0.300"}}, "", "", false},
		{"two v4", api.AllocResponse{Addresses: []string{"10.0.0.1", "10.0.0.2"}}, "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v4, v6, err := splitAddresses(tt.resp)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v", err)
			}
			if !tt.ok {
				return
			}
			if s(v4) != tt.v4 || s(v6) != tt.v6 {
				t.Errorf("got %v %v", v4, v6)
			}
		})
	}
}

func s(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func TestParsePodArgs(t *testing.T) {
	cases := []struct {
		args    string
		want    podRef
		wantErr bool
	}{
		{"K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web", podRef{Namespace: "ns", Name: "web"}, false},
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_UID=1234-abcd", podRef{Namespace: "ns", Name: "web", UID: "1234-abcd"}, false},
		{"K8S_POD_NAME=web", podRef{}, true},
		{"", podRef{}, true},
	}
	for _, c := range cases {
		got, err := parsePodArgs(c.args)
		if (err != nil) != c.wantErr || got != c.want {
			t.Errorf("parsePodArgs(%q) = %+v, %v; want %+v (error %v)", c.args, got, err, c.want, c.wantErr)
		}
	}
}

// serve serves the fake coild on a unix socket, as coild serves the
// plugin, and returns the endpoint. A socket path is reached from any
// network namespace, as from the node's one that the tests enter.
func serve(t *testing.T, f *fakecoild.Coild) string {
	t.Helper()
	ep, _ := f.ServeUnix(t)
	return ep
}
