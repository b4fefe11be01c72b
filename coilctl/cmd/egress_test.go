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
			{"NAMESPACE", "NAME", "VNI", "DESTINATIONS"},
			{"internet", "nat", vni("internet", "nat"), "0.0.0.0/0,::/0"},
			{"partners", "api", vni("partners", "api"), "192.0.2.0/24,2001:db8::/32"},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("egress list rows:\n got %q\nwant %q", got, want)
		}
	})
	listJSON := `{"egresses": [
	  {"namespace": "internet", "name": "nat", "vni": ` + vni("internet", "nat") + `, "destinations": ["0.0.0.0/0", "::/0"]},
	  {"namespace": "partners", "name": "api", "vni": ` + vni("partners", "api") + `, "destinations": ["192.0.2.0/24", "2001:db8::/32"]}
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
			`{"namespace": "partners", "name": "api", "vni": `+vni("partners", "api")+`, "destinations": ["192.0.2.0/24", "2001:db8::/32"]}`, "createdAt")
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
		`{"namespace": "partners", "name": "api", "vni": `+vni+`, "destinations": ["192.0.2.0/24", "::/0", "2001:db8::/32"], "changed": true}`, "createdAt")
	assertJSON(t, h.ok("egress", "update", "partners", "api", "--destinations", "192.0.2.0/24,::/0,2001:db8::/32", "--json"),
		`{"namespace": "partners", "name": "api", "vni": `+vni+`, "destinations": ["192.0.2.0/24", "::/0", "2001:db8::/32"], "changed": false}`, "createdAt")

	upd := func(args ...string) []string { return append([]string{"egress", "update", "partners", "api"}, args...) }
	h.assertFailures([]failure{
		{"no change", upd(), cmd.ExitUsage, []string{"needs --destinations, --add-destination or --remove-destination"}},
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
	if got := strings.Fields(tableRows(h.ok("egress", "list"))[1][3]); len(got) != 1 || got[0] != "192.0.2.0/24,::/0,2001:db8::/32" {
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
