package cmd_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/coil-project/coil/coilctl/cmd"
	"github.com/coil-project/coil/model"
)

func TestEgressRoundTrip(t *testing.T) {
	h := newHarness(t)
	vni := func(ns, name string) string { return fmt.Sprint(model.PreferredVNI(ns, name)) }

	creates := []struct {
		args []string
		want string
	}{
		{[]string{"egress", "create", "internet", "nat", "--destinations", "0.0.0.0/0,::/0"},
			`egress "internet/nat" created: VNI ` + vni("internet", "nat") + `, destinations 0.0.0.0/0,::/0`},
		{[]string{"egress", "create", "partners", "api", "--destinations", "192.0.2.0/24", "--destinations", "2001:db8::/32"},
			`egress "partners/api" created: VNI ` + vni("partners", "api") + `, destinations 192.0.2.0/24,2001:db8::/32`},
	}
	for _, c := range creates {
		if got := h.ok(c.args...); strings.TrimSpace(got) != c.want {
			t.Errorf("coilctl %s printed %q, want %q", strings.Join(c.args, " "), got, c.want)
		}
	}

	t.Run("list table", func(t *testing.T) {
		got := tableRows(h.ok("egress", "list"))
		want := [][]string{
			{"NAMESPACE", "NAME", "VNI", "GATEWAYS", "DESTINATIONS"},
			{"internet", "nat", vni("internet", "nat"), "user", "0.0.0.0/0,::/0"},
			{"partners", "api", vni("partners", "api"), "user", "192.0.2.0/24,2001:db8::/32"},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("egress list rows:\n got %q\nwant %q", got, want)
		}
	})
	listJSON := `{"egresses": [
	  {"namespace": "internet", "name": "nat", "vni": ` + vni("internet", "nat") + `, "destinations": ["0.0.0.0/0", "::/0"], "replicas": 0},
	  {"namespace": "partners", "name": "api", "vni": ` + vni("partners", "api") + `, "destinations": ["192.0.2.0/24", "2001:db8::/32"], "replicas": 0}
	]}`
	for _, flag := range [][]string{{"-o", "json"}, {"--json"}} {
		t.Run("list "+strings.Join(flag, " "), func(t *testing.T) {
			assertJSON(t, h.ok(append([]string{"egress", "list"}, flag...)...), listJSON, "createdAt")
		})
	}
	t.Run("show", func(t *testing.T) {
		out := h.ok("egress", "show", "partners", "api")
		for _, want := range []string{
			"Namespace:     partners", "Name:          api", "VNI:           " + vni("partners", "api"),
			"Destinations:  192.0.2.0/24,2001:db8::/32",
			"Gateways:      pods of namespace partners labelled coil.cybozu.com/egress=api",
			"Clients:       pods annotated egress.coil.cybozu.com/partners=api",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("egress show lacks %q:\n%s", want, out)
			}
		}
		assertJSON(t, h.ok("egress", "show", "partners", "api", "-o", "json"),
			`{"namespace": "partners", "name": "api", "vni": `+vni("partners", "api")+`, "destinations": ["192.0.2.0/24", "2001:db8::/32"], "replicas": 0}`, "createdAt")
	})

	h.assertFailures([]failure{
		{"missing destinations", []string{"egress", "create", "a", "b"}, cmd.ExitUsage, []string{"needs --destinations"}},
		{"missing name", []string{"egress", "create", "a", "--destinations", "10.0.0.0/8"}, cmd.ExitUsage, []string{"missing NAME"}},
		{"exists", []string{"egress", "create", "internet", "nat", "--destinations", "10.0.0.0/8"}, cmd.ExitFailure, []string{"egress already exists"}},
		{"not canonical", []string{"egress", "create", "a", "b", "--destinations", "10.0.0.1/8"}, cmd.ExitFailure, []string{"not canonical (did you mean 10.0.0.0/8?)"}},
		{"not a CIDR", []string{"egress", "create", "a", "b", "--destinations", "example.com"}, cmd.ExitFailure, []string{"invalid CIDR"}},
		{"duplicate", []string{"egress", "create", "a", "b", "--destinations", "10.0.0.0/8,10.0.0.0/8"}, cmd.ExitFailure, []string{"duplicate egress destination"}},
		{"bad namespace", []string{"egress", "create", "A", "b", "--destinations", "10.0.0.0/8"}, cmd.ExitFailure, []string{`namespace "A" must be a DNS-1123 label`}},
		{"bad name", []string{"egress", "create", "a", "b_c", "--destinations", "10.0.0.0/8"}, cmd.ExitFailure, []string{`egress name "b_c" must be a DNS-1123 label`}},
		{"show unknown", []string{"egress", "show", "a", "b"}, cmd.ExitFailure, []string{"egress not found"}},
		{"delete unknown", []string{"egress", "delete", "a", "b"}, cmd.ExitFailure, []string{"egress not found"}},
		{"bad output", []string{"egress", "list", "-o", "yaml"}, cmd.ExitUsage, []string{`unknown output format "yaml"`}},
		{"image without replicas", []string{"egress", "create", "a", "b", "--destinations", "10.0.0.0/8", "--image", "gw:1"}, cmd.ExitUsage, []string{"--image needs --replicas above 0"}},
		{"negative replicas", []string{"egress", "create", "a", "b", "--destinations", "10.0.0.0/8", "--replicas", "-1"}, cmd.ExitFailure, []string{"invalid egress gateways", "replicas -1 not in 0..1000"}},
		{"replicas not a number", []string{"egress", "create", "a", "b", "--destinations", "10.0.0.0/8", "--replicas", "two"}, cmd.ExitUsage, []string{"--replicas"}},
		{"bad image", []string{"egress", "create", "a", "b", "--destinations", "10.0.0.0/8", "--replicas", "1", "--image", "a b"}, cmd.ExitFailure, []string{`image "a b" is not an image reference`}},
	})

	if got := strings.TrimSpace(h.ok("egress", "delete", "internet", "nat")); got != `egress "internet/nat" deleted` {
		t.Errorf("delete printed %q", got)
	}
	if got := tableRows(h.ok("egress", "list")); len(got) != 2 || got[1][1] != "api" {
		t.Errorf("after delete egress list = %q", got)
	}
	h.ok("egress", "delete", "partners", "api")
	assertJSON(t, h.ok("egress", "list", "-o", "json"), `{"egresses": []}`)
}

func TestEgressListEmpty(t *testing.T) {
	h := newHarness(t)
	assertJSON(t, h.ok("egress", "list", "--json"), `{"egresses": []}`)
	if got := tableRows(h.ok("egress", "list")); len(got) != 1 {
		t.Errorf("empty egress list printed rows %q", got)
	}
	// Read commands never write, not even the schema key.
	if d := h.dump(t); len(d) != 0 {
		t.Errorf("egress list wrote to etcd: %v", d)
	}
}

// TestEgressUpdate: destinations change in place, keeping the VNI, and a
// refused update prints nothing and leaves etcd unchanged.
func TestEgressUpdate(t *testing.T) {
	h := newHarness(t)
	vni := fmt.Sprint(model.PreferredVNI("partners", "api"))
	h.ok("egress", "create", "partners", "api", "--destinations", "192.0.2.0/24,2001:db8::/32")

	updates := []struct {
		args []string
		want string
	}{
		{[]string{"--add-destination", "198.51.100.0/24"}, "updated: VNI " + vni + ", destinations 192.0.2.0/24,2001:db8::/32,198.51.100.0/24"},
		{[]string{"--remove-destination", "192.0.2.0/24", "--add-destination", "203.0.113.0/24", "--add-destination", "10.0.0.0/8"},
			"updated: VNI " + vni + ", destinations 2001:db8::/32,198.51.100.0/24,203.0.113.0/24,10.0.0.0/8"},
		{[]string{"--remove-destination", "10.0.0.0/8,198.51.100.0/24"}, "updated: VNI " + vni + ", destinations 2001:db8::/32,203.0.113.0/24"},
		{[]string{"--destinations", "2001:db8::/32,203.0.113.0/24"}, "unchanged: VNI " + vni + ", destinations 2001:db8::/32,203.0.113.0/24"},
		{[]string{"--destinations", "192.0.2.0/24", "--destinations", "::/0"}, "updated: VNI " + vni + ", destinations 192.0.2.0/24,::/0"},
	}
	for _, u := range updates {
		args := append([]string{"egress", "update", "partners", "api"}, u.args...)
		if got := strings.TrimSpace(h.ok(args...)); got != `egress "partners/api" `+u.want {
			t.Errorf("coilctl %s printed %q, want %q", strings.Join(args, " "), got, u.want)
		}
	}
	assertJSON(t, h.ok("egress", "update", "partners", "api", "--add-destination", "2001:db8::/32", "-o", "json"),
		`{"namespace": "partners", "name": "api", "vni": `+vni+`, "destinations": ["192.0.2.0/24", "::/0", "2001:db8::/32"], "replicas": 0, "changed": true}`, "createdAt")
	assertJSON(t, h.ok("egress", "update", "partners", "api", "--destinations", "192.0.2.0/24,::/0,2001:db8::/32", "--json"),
		`{"namespace": "partners", "name": "api", "vni": `+vni+`, "destinations": ["192.0.2.0/24", "::/0", "2001:db8::/32"], "replicas": 0, "changed": false}`, "createdAt")

	upd := func(args ...string) []string { return append([]string{"egress", "update", "partners", "api"}, args...) }
	h.assertFailures([]failure{
		{"no change", upd(), cmd.ExitUsage, []string{"needs --destinations, --add-destination, --remove-destination, --replicas or --image"}},
		{"set and add", upd("--destinations", "10.0.0.0/8", "--add-destination", "10.1.0.0/16"), cmd.ExitUsage, []string{"cannot be combined"}},
		{"missing name", []string{"egress", "update", "partners", "--add-destination", "10.0.0.0/8"}, cmd.ExitUsage, []string{"missing NAME"}},
		{"bad output", upd("--add-destination", "10.0.0.0/8", "-o", "yaml"), cmd.ExitUsage, []string{`unknown output format "yaml"`}},
		{"unknown egress", []string{"egress", "update", "partners", "nope", "--add-destination", "10.0.0.0/8"}, cmd.ExitFailure, []string{"egress not found"}},
		{"not a CIDR", upd("--add-destination", "example.com"), cmd.ExitFailure, []string{"update egress partners/api", "invalid CIDR"}},
		{"not canonical", upd("--destinations", "10.0.0.1/8"), cmd.ExitFailure, []string{"not canonical (did you mean 10.0.0.0/8?)"}},
		{"add present", upd("--add-destination", "192.0.2.0/24"), cmd.ExitFailure, []string{"duplicate egress destination: 192.0.2.0/24"}},
		{"set duplicates", upd("--destinations", "10.0.0.0/8,10.0.0.0/8"), cmd.ExitFailure, []string{"duplicate egress destination"}},
		{"remove absent", upd("--remove-destination", "10.0.0.0/8"), cmd.ExitFailure, []string{"egress has no such destination: 10.0.0.0/8 is not a destination of egress partners/api"}},
		{"remove all", upd("--remove-destination", "192.0.2.0/24,::/0,2001:db8::/32"), cmd.ExitFailure, []string{"egress has no destination"}},
		{"add and remove", upd("--add-destination", "10.0.0.0/8", "--remove-destination", "10.0.0.0/8"), cmd.ExitFailure, []string{"both added and removed"}},
	})
	if got := strings.Fields(tableRows(h.ok("egress", "list"))[1][4]); len(got) != 1 || got[0] != "192.0.2.0/24,::/0,2001:db8::/32" {
		t.Errorf("after refused updates the egress has destinations %q", got)
	}
}

// TestEgressUpdateWritesNothingOnFailure: an update refused on an etcd
// without Coil data does not even write the schema key.
func TestEgressUpdateWritesNothingOnFailure(t *testing.T) {
	h := newHarness(t)
	h.assertFailures([]failure{
		{"unknown egress", []string{"egress", "update", "a", "b", "--add-destination", "10.0.0.0/8"}, cmd.ExitFailure, []string{"egress not found"}},
	})
	if d := h.dump(t); len(d) != 0 {
		t.Errorf("a failed update wrote to etcd: %v", d)
	}
}

// TestEgressManagedGateways: --replicas and --image on create and update
// are stored, shown and refused when they make no sense, writing nothing.
func TestEgressManagedGateways(t *testing.T) {
	h := newHarness(t)
	vni := fmt.Sprint(model.PreferredVNI("internet", "nat"))
	if got := strings.TrimSpace(h.ok("egress", "create", "internet", "nat", "--destinations", "0.0.0.0/0", "--replicas", "2")); got !=
		`egress "internet/nat" created: VNI `+vni+`, destinations 0.0.0.0/0, 2 managed gateways` {
		t.Errorf("create printed %q", got)
	}
	if rows := tableRows(h.ok("egress", "list")); len(rows) != 2 || rows[1][3] != "2" || rows[1][4] != "managed" {
		t.Errorf("egress list rows %q", rows)
	}
	out := h.ok("egress", "show", "internet", "nat")
	if !strings.Contains(out, "Managed:       2 replicas (Deployment and PodDisruptionBudget nat-gateway), image default") {
		t.Errorf("egress show:\n%s", out)
	}

	upd := func(args ...string) []string { return append([]string{"egress", "update", "internet", "nat"}, args...) }
	steps := []struct {
		args []string
		want string
	}{
		{upd("--replicas", "3"), "updated: VNI " + vni + ", destinations 0.0.0.0/0, 3 managed gateways"},
		{upd("--image", "registry.example.com/pause:3.10"), "updated: VNI " + vni + ", destinations 0.0.0.0/0, 3 managed gateways of image registry.example.com/pause:3.10"},
		{upd("--replicas", "3"), "unchanged: VNI " + vni + ", destinations 0.0.0.0/0, 3 managed gateways of image registry.example.com/pause:3.10"},
		{upd("--image", ""), "updated: VNI " + vni + ", destinations 0.0.0.0/0, 3 managed gateways"},
		{upd("--replicas", "1", "--image", "gw:2", "--add-destination", "::/0"), "updated: VNI " + vni + ", destinations 0.0.0.0/0,::/0, 1 managed gateways of image gw:2"},
	}
	for _, s := range steps {
		if got := strings.TrimSpace(h.ok(s.args...)); got != `egress "internet/nat" `+s.want {
			t.Errorf("coilctl %s printed %q, want %q", strings.Join(s.args, " "), got, s.want)
		}
	}
	assertJSON(t, h.ok("egress", "show", "internet", "nat", "-o", "json"),
		`{"namespace": "internet", "name": "nat", "vni": `+vni+`, "destinations": ["0.0.0.0/0", "::/0"], "replicas": 1, "image": "gw:2"}`, "createdAt")

	before := h.dump(t)
	h.assertFailures([]failure{
		{"negative", upd("--replicas", "-1"), cmd.ExitFailure, []string{"invalid egress gateways"}},
		{"too many", upd("--replicas", "1001"), cmd.ExitFailure, []string{"replicas 1001 not in 0..1000"}},
		{"bad image", upd("--image", "gw:2 --privileged"), cmd.ExitFailure, []string{"is not an image reference"}},
		{"image with replicas 0", upd("--replicas", "0", "--image", "gw:3"), cmd.ExitFailure, []string{"an image needs replicas above 0"}},
	})
	if after := h.dump(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("refused updates changed etcd")
	}

	// Back to bring-your-own gateways: the image goes too.
	if got := strings.TrimSpace(h.ok(upd("--replicas", "0")...)); got != `egress "internet/nat" updated: VNI `+vni+`, destinations 0.0.0.0/0,::/0` {
		t.Errorf("update --replicas 0 printed %q", got)
	}
	assertJSON(t, h.ok("egress", "show", "internet", "nat", "-o", "json"),
		`{"namespace": "internet", "name": "nat", "vni": `+vni+`, "destinations": ["0.0.0.0/0", "::/0"], "replicas": 0}`, "createdAt")
	h.assertFailures([]failure{
		{"image of bring-your-own gateways", upd("--image", "gw:3"), cmd.ExitFailure, []string{"an image needs replicas above 0"}},
	})
}
