package cmd_test

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coil-project/coil/coilctl/cmd"
)

func TestAddressInfo(t *testing.T) {
	h := newHarness(t)
	h.ok("pool", "create", "default", "10.0.0.0/24", "5")
	h.ok("pool", "create", "dual", "10.1.0.0/24", "4", "--ipv6", "fd00:1::/120")
	b, a := h.acquire("default", owner("n1", "web"))
	db, da := h.acquire("dual", owner("n2", "db"))

	// An address of a block no node owns.
	unownedIndex := 0
	if b.Index == 0 {
		unownedIndex = 1
	}
	unowned := netip.AddrFrom4([4]byte{10, 0, 0, byte(unownedIndex*32 + 3)})
	unownedBlock := netip.PrefixFrom(unowned, 27).Masked()
	freeInOwned, _ := b.AddressAt(5)

	t.Run("allocated table", func(t *testing.T) {
		got := tableRows(h.ok("address", "info", a.IPv4.String()))
		want := [][]string{
			{"Address:", a.IPv4.String()},
			{"Pool:", "default"},
			{"Block:", b.IPv4.String(), "(" + b.ID() + ")"},
			{"Node:", "n1"},
			{"Status:", "allocated"},
			{"Namespace:", "ns-web"},
			{"Pod:", "web"},
			{"Container:", "cid-web"},
			{"Interface:", "eth0"},
			{"Created:", a.CreatedAt.UTC().Format(time.RFC3339)},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("rows:\n got %q\nwant %q", got, want)
		}
	})

	cases := []struct {
		name string
		ip   string
		want string
	}{
		{"allocated", a.IPv4.String(), fmt.Sprintf(`{"ip": %q, "pool": "default", "block": {"id": %q, "ipv4": %q},
		   "node": "n1", "status": "allocated",
		   "holder": {"ipv4": %q, "namespace": "ns-web", "pod": "web", "containerID": "cid-web", "interface": "eth0"}}`,
			a.IPv4, b.ID(), b.IPv4, a.IPv4)},
		{"free in an owned block", freeInOwned.String(), fmt.Sprintf(`{"ip": %q, "pool": "default", "block": {"id": %q, "ipv4": %q},
		   "node": "n1", "status": "free", "holder": null}`, freeInOwned, b.ID(), b.IPv4)},
		{"in a block no node owns", unowned.String(), fmt.Sprintf(`{"ip": %q, "pool": "default", "block": {"id": "default/0/%d", "ipv4": %q},
		   "node": "", "status": "free", "holder": null}`, unowned, unownedIndex, unownedBlock)},
		{"IPv6 of a dual-stack pair", da.IPv6.String(), fmt.Sprintf(`{"ip": %q, "pool": "dual", "block": {"id": %q, "ipv4": %q, "ipv6": %q},
		   "node": "n2", "status": "allocated",
		   "holder": {"ipv4": %q, "ipv6": %q, "namespace": "ns-db", "pod": "db", "containerID": "cid-db", "interface": "eth0"}}`,
			da.IPv6, db.ID(), db.IPv4, db.IPv6, da.IPv4, da.IPv6)},
	}
	for _, c := range cases {
		t.Run(c.name+" json", func(t *testing.T) {
			assertJSON(t, h.ok("address", "info", c.ip, "--json"), c.want, "createdAt")
		})
	}

	t.Run("unowned table", func(t *testing.T) {
		out := h.ok("address", "info", unowned.String())
		for _, s := range []string{"Node:", "none (no node owns the block)", "Status:", "free", unownedBlock.String()} {
			if !strings.Contains(out, s) {
				t.Errorf("output lacks %q:\n%s", s, out)
			}
		}
		if strings.Contains(out, "Pod:") {
			t.Errorf("a free address shows a holder:\n%s", out)
		}
	})

	h.assertFailures([]failure{
		{"not an address", []string{"address", "info", "10.0.0"}, cmd.ExitFailure, []string{`ADDRESS "10.0.0" is not an IP address`}},
		{"CIDR instead of address", []string{"address", "info", "10.0.0.1/24"}, cmd.ExitFailure, []string{"is not an IP address"}},
		{"zone", []string{"address", "info", "fe80::1%eth0"}, cmd.ExitFailure, []string{"has a zone"}},
		{"outside every pool", []string{"address", "info", "192.168.0.1"}, cmd.ExitFailure, []string{"192.168.0.1", "no pool contains it"}},
		{"missing argument", []string{"address", "info"}, cmd.ExitUsage, []string{"missing ADDRESS"}},
	})
}

func TestAddressFree(t *testing.T) {
	h := newHarness(t)
	h.ok("pool", "create", "default", "10.0.0.0/24", "5")
	h.ok("pool", "create", "dual", "10.1.0.0/24", "4", "--ipv6", "fd00:1::/120")
	b, a := h.acquire("default", owner("n1", "web"))
	keep := h.allocate(b, 1, owner("n1", "keep"))
	_, da := h.acquire("dual", owner("n2", "db"))
	unowned := netip.AddrFrom4([4]byte{10, 0, 0, byte((b.Index+1)%8*32 + 8)})

	t.Run("free", func(t *testing.T) {
		got := h.ok("address", "free", a.IPv4.String())
		want := fmt.Sprintf("freed %s (pool \"default\", node n1) held by pod ns-web/web, container cid-web, interface eth0, since %s\n",
			a.IPv4, a.CreatedAt.UTC().Format(time.RFC3339))
		if got != want {
			t.Errorf("printed %q, want %q", got, want)
		}
		if out := h.ok("address", "info", a.IPv4.String(), "-o", "json"); !strings.Contains(out, `"status": "free"`) {
			t.Errorf("address still allocated after free:\n%s", out)
		}
		if out := h.ok("address", "info", keep.IPv4.String(), "-o", "json"); !strings.Contains(out, `"status": "allocated"`) {
			t.Errorf("free released a neighbour too:\n%s", out)
		}
	})

	t.Run("free a dual-stack pair by its IPv6 address", func(t *testing.T) {
		got := h.ok("address", "free", da.IPv6.String())
		if !strings.HasPrefix(got, fmt.Sprintf("freed %s,%s (pool \"dual\", node n2)", da.IPv4, da.IPv6)) {
			t.Errorf("printed %q", got)
		}
		if out := h.ok("address", "info", da.IPv4.String(), "-o", "json"); !strings.Contains(out, `"status": "free"`) {
			t.Errorf("IPv4 of the pair still allocated:\n%s", out)
		}
	})

	h.assertFailures([]failure{
		{"already freed", []string{"address", "free", a.IPv4.String()}, cmd.ExitFailure,
			[]string{"free " + a.IPv4.String(), "not allocated", "block " + b.IPv4.String() + " owned by node n1", "nothing to free"}},
		{"in a block no node owns", []string{"address", "free", unowned.String()}, cmd.ExitFailure,
			[]string{"not allocated", "which no node owns"}},
		{"outside every pool", []string{"address", "free", "192.168.0.1"}, cmd.ExitFailure, []string{"no pool contains it"}},
		{"not an address", []string{"address", "free", "web"}, cmd.ExitFailure, []string{"is not an IP address"}},
		{"two addresses", []string{"address", "free", "10.0.0.1", "10.0.0.2"}, cmd.ExitUsage, []string{"takes 1 argument(s)"}},
	})
}
