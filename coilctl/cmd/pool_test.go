package cmd_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/coil-project/coil/coilctl/cmd"
)

func TestPoolRoundTrip(t *testing.T) {
	h := newHarness(t)

	creates := []struct {
		args []string
		want string
	}{
		{[]string{"pool", "create", "default", "10.0.0.0/24", "5"},
			`pool "default" created: ipv4 10.0.0.0/24, 8 blocks of 32 addresses`},
		{[]string{"pool", "create", "dual", "10.1.0.0/24", "4", "--ipv6", "fd00:1::/120"},
			`pool "dual" created: dual 10.1.0.0/24,fd00:1::/120, 16 blocks of 16 addresses`},
		{[]string{"pool", "create", "v6", "fd00:2::/120", "4"},
			`pool "v6" created: ipv6 fd00:2::/120, 16 blocks of 16 addresses`},
		{[]string{"pool", "add-subnet", "default", "10.0.1.0/24"},
			`subnet 10.0.1.0/24 added to pool "default", which now has 16 blocks of 32 addresses`},
		{[]string{"pool", "add-subnet", "dual", "10.1.1.0/24", "--ipv6", "fd00:1:0:1::/120"},
			`subnet 10.1.1.0/24,fd00:1:0:1::/120 added to pool "dual", which now has 32 blocks of 16 addresses`},
	}
	for _, c := range creates {
		if got := h.ok(c.args...); strings.TrimSpace(got) != c.want {
			t.Errorf("coilctl %s printed %q, want %q", strings.Join(c.args, " "), got, c.want)
		}
	}

	// Nodes take blocks and allocate, as coild would.
	b1, _ := h.acquire("default", owner("n1", "a"))
	h.allocate(b1, 1, owner("n1", "b"))
	h.allocate(b1, 2, owner("n1", "c"))
	b2, _ := h.acquire("default", owner("n2", "d"))
	h.acquire("dual", owner("n1", "e"))

	t.Run("list table", func(t *testing.T) {
		got := tableRows(h.ok("pool", "list"))
		want := [][]string{
			{"NAME", "BLOCK-SIZE", "FAMILY", "SUBNETS", "BLOCKS", "ADDRESSES", "DRAINED"},
			{"default", "32", "ipv4", "10.0.0.0/24;10.0.1.0/24", "2/16", "4/512", "no"},
			{"dual", "16", "dual", "10.1.0.0/24,fd00:1::/120;10.1.1.0/24,fd00:1:0:1::/120", "1/32", "1/512", "no"},
			{"v6", "16", "ipv6", "fd00:2::/120", "0/16", "0/256", "no"},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("pool list rows:\n got %q\nwant %q", got, want)
		}
	})

	listJSON := `{"pools": [
	  {"name": "default", "family": "ipv4", "blockSizeBits": 5, "blockSize": 32,
	   "subnets": [{"ipv4": "10.0.0.0/24"}, {"ipv4": "10.0.1.0/24"}],
	   "blocks": {"used": 2, "total": 16},
	   "addresses": {"used": 4, "free": 508, "freeInOwnedBlocks": 60, "capacity": 512}},
	  {"name": "dual", "family": "dual", "blockSizeBits": 4, "blockSize": 16,
	   "subnets": [{"ipv4": "10.1.0.0/24", "ipv6": "fd00:1::/120"}, {"ipv4": "10.1.1.0/24", "ipv6": "fd00:1:0:1::/120"}],
	   "blocks": {"used": 1, "total": 32},
	   "addresses": {"used": 1, "free": 511, "freeInOwnedBlocks": 15, "capacity": 512}},
	  {"name": "v6", "family": "ipv6", "blockSizeBits": 4, "blockSize": 16,
	   "subnets": [{"ipv6": "fd00:2::/120"}],
	   "blocks": {"used": 0, "total": 16},
	   "addresses": {"used": 0, "free": 256, "freeInOwnedBlocks": 0, "capacity": 256}}
	]}`
	for _, flag := range [][]string{{"-o", "json"}, {"--json"}, {"--output=json"}} {
		t.Run("list "+strings.Join(flag, " "), func(t *testing.T) {
			assertJSON(t, h.ok(append([]string{"pool", "list"}, flag...)...), listJSON)
		})
	}

	t.Run("show table", func(t *testing.T) {
		out := h.ok("pool", "show", "default")
		head, body, ok := strings.Cut(out, "\n\n")
		if !ok {
			t.Fatalf("no blank line between header and blocks:\n%s", out)
		}
		wantHead := [][]string{
			{"Name:", "default"},
			{"Family:", "ipv4"},
			{"Block", "size:", "32", "addresses", "(5", "bits)"},
			{"Subnets:", "10.0.0.0/24;10.0.1.0/24"},
			{"Drained:", "no"},
			{"Blocks:", "2", "of", "16", "owned", "by", "nodes"},
			{"Addresses:", "4", "used,", "508", "free,", "512", "in", "total"},
		}
		if got := tableRows(head); !reflect.DeepEqual(got, wantHead) {
			t.Errorf("header:\n got %q\nwant %q", got, wantHead)
		}
		subnets, body, _ := strings.Cut(body, "\n\n")
		in0, in1 := "3", "1"
		if b1.Subnet == b2.Subnet {
			t.Fatalf("both blocks in subnet %d: the test expects one in each", b1.Subnet)
		}
		if b1.Subnet == 1 {
			in0, in1 = in1, in0
		}
		wantSubnets := [][]string{
			{"SUBNET", "STATE", "BLOCKS", "IN-USE", "CAPACITY"},
			{"10.0.0.0/24", "active", "1/8", in0, "256"},
			{"10.0.1.0/24", "active", "1/8", in1, "256"},
		}
		if got := tableRows(subnets); !reflect.DeepEqual(got, wantSubnets) {
			t.Errorf("subnets:\n got %q\nwant %q", got, wantSubnets)
		}
		table, total, _ := strings.Cut(body, "\n\n")
		wantRows := [][]string{
			{"NODE", "BLOCK", "USED", "FREE"},
			{"n1", b1.IPv4.String(), "3", "29"},
			{"n2", b2.IPv4.String(), "1", "31"},
		}
		if got := tableRows(table); !reflect.DeepEqual(got, wantRows) {
			t.Errorf("blocks:\n got %q\nwant %q", got, wantRows)
		}
		if want := "Total: 4 addresses used, 60 free in the 2 owned blocks\n"; total != want {
			t.Errorf("total line = %q, want %q", total, want)
		}
	})

	t.Run("show json", func(t *testing.T) {
		used := [2]int{}
		used[b1.Subnet], used[b2.Subnet] = 3, 1
		want := fmt.Sprintf(`{"name": "default", "family": "ipv4", "blockSizeBits": 5, "blockSize": 32,
		  "subnets": [{"ipv4": "10.0.0.0/24"}, {"ipv4": "10.0.1.0/24"}],
		  "blocks": {"used": 2, "total": 16},
		  "addresses": {"used": 4, "free": 508, "freeInOwnedBlocks": 60, "capacity": 512},
		  "subnetUsage": [
		    {"index": 0, "ipv4": "10.0.0.0/24", "drained": false, "blocks": {"used": 1, "total": 8},
		     "addresses": {"used": %d, "free": %d, "freeInOwnedBlocks": %d, "capacity": 256}},
		    {"index": 1, "ipv4": "10.0.1.0/24", "drained": false, "blocks": {"used": 1, "total": 8},
		     "addresses": {"used": %d, "free": %d, "freeInOwnedBlocks": %d, "capacity": 256}}
		  ],
		  "ownedBlocks": [
		    {"id": %q, "pool": "default", "subnet": %d, "index": %d, "node": "n1", "ipv4": %q, "used": 3, "free": 29},
		    {"id": %q, "pool": "default", "subnet": %d, "index": %d, "node": "n2", "ipv4": %q, "used": 1, "free": 31}
		  ]}`,
			used[0], 256-used[0], 32-used[0], used[1], 256-used[1], 32-used[1],
			b1.ID(), b1.Subnet, b1.Index, b1.IPv4, b2.ID(), b2.Subnet, b2.Index, b2.IPv4)
		assertJSON(t, h.ok("pool", "show", "default", "--json"), want, "acquiredAt")
	})

	t.Run("delete", func(t *testing.T) {
		if got := h.ok("pool", "delete", "v6"); got != "pool \"v6\" deleted\n" {
			t.Errorf("delete printed %q", got)
		}
		var names []string
		for _, row := range tableRows(h.ok("pool", "list"))[1:] {
			names = append(names, row[0])
		}
		if want := []string{"default", "dual"}; !reflect.DeepEqual(names, want) {
			t.Errorf("pools after delete = %v, want %v", names, want)
		}
	})
}

func TestPoolBadInput(t *testing.T) {
	h := newHarness(t)
	h.ok("pool", "create", "default", "10.0.0.0/24", "5")
	h.ok("pool", "create", "dual", "10.1.0.0/24", "4", "--ipv6", "fd00:1::/120")
	h.acquire("default", owner("n1", "a"))
	h.acquire("default", owner("n2", "b"))

	create := func(args ...string) []string { return append([]string{"pool", "create"}, args...) }
	addSubnet := func(args ...string) []string { return append([]string{"pool", "add-subnet"}, args...) }
	h.assertFailures([]failure{
		{"malformed CIDR", create("x", "10.9.0/24", "5"), cmd.ExitFailure, []string{`create pool "x"`, "invalid CIDR", `"10.9.0/24"`}},
		{"not a CIDR at all", create("x", "banana", "5"), cmd.ExitFailure, []string{"invalid CIDR", `"banana"`}},
		{"address without length", create("x", "10.9.0.0", "5"), cmd.ExitFailure, []string{"invalid CIDR"}},
		{"non-canonical CIDR", create("x", "10.9.0.1/24", "5"), cmd.ExitFailure, []string{"not canonical", "did you mean 10.9.0.0/24?"}},
		{"non-canonical IPv6", create("x", "fd00:9::1/120", "4"), cmd.ExitFailure, []string{"not canonical", "fd00:9::/120"}},
		{"SIZE not a number", create("x", "10.9.0.0/24", "five"), cmd.ExitFailure, []string{`SIZE "five" is not a number`}},
		{"SIZE negative", create("x", "10.9.0.0/24", "-1"), cmd.ExitUsage, []string{"unknown shorthand flag"}},
		{"SIZE above maximum", create("x", "10.9.0.0/16", "17"), cmd.ExitFailure, []string{"invalid block size", "17 not in 0..16"}},
		{"block larger than subnet", create("x", "10.9.0.0/24", "9"), cmd.ExitFailure, []string{"invalid block size", "do not fit in 10.9.0.0/24"}},
		{"too many blocks", create("x", "10.128.0.0/9", "0"), cmd.ExitFailure, []string{"invalid block size", "more than 1048576"}},
		{"bad pool name", create("Bad_Name", "10.9.0.0/24", "5"), cmd.ExitFailure, []string{"invalid name", "DNS-1123"}},
		{"overlapping subnet", create("x", "10.0.0.128/25", "5"), cmd.ExitFailure, []string{"overlaps", `pool "default"`}},
		{"covering subnet", create("x", "10.0.0.0/8", "12"), cmd.ExitFailure, []string{"overlaps"}},
		{"overlapping IPv6 of a pair", create("x", "10.9.0.0/25", "4", "--ipv6", "fd00:1::80/121"), cmd.ExitFailure, []string{"overlaps", `pool "dual"`}},
		{"duplicate pool", create("default", "10.9.0.0/24", "5"), cmd.ExitFailure, []string{`"default"`, "already exists"}},
		{"--ipv6 after an IPv6 subnet", create("x", "fd00:9::/120", "4", "--ipv6", "fd00:a::/120"), cmd.ExitFailure, []string{"already IPv6"}},
		{"--ipv6 given IPv4", create("x", "10.9.0.0/24", "4", "--ipv6", "10.10.0.0/24"), cmd.ExitFailure, []string{"not an IPv6 subnet"}},
		{"pair of unequal sizes", create("x", "10.9.0.0/24", "4", "--ipv6", "fd00:9::/112"), cmd.ExitFailure, []string{"differ in size"}},
		{"create missing SIZE", create("x", "10.9.0.0/24"), cmd.ExitUsage, []string{"missing SIZE", "Run 'coilctl pool create --help'"}},
		{"create extra argument", create("x", "10.9.0.0/24", "5", "6"), cmd.ExitUsage, []string{"takes 3 argument(s)"}},
		{"create unknown flag", create("x", "10.9.0.0/24", "5", "--ipv7", "x"), cmd.ExitUsage, []string{"unknown flag: --ipv7"}},

		{"add-subnet unknown pool", addSubnet("nope", "10.9.0.0/24"), cmd.ExitFailure, []string{`"nope"`, "pool not found"}},
		{"add-subnet malformed", addSubnet("default", "10.9.0.0/33"), cmd.ExitFailure, []string{"invalid CIDR"}},
		{"add-subnet non-canonical", addSubnet("default", "10.9.0.1/24"), cmd.ExitFailure, []string{"did you mean 10.9.0.0/24?"}},
		{"add-subnet overlapping own", addSubnet("default", "10.0.0.64/26"), cmd.ExitFailure, []string{"overlaps"}},
		{"add-subnet overlapping other pool", addSubnet("default", "10.1.0.0/25"), cmd.ExitFailure, []string{"overlaps", `pool "dual"`}},
		{"add-subnet other family", addSubnet("default", "fd00:9::/120"), cmd.ExitFailure, []string{"same families"}},
		{"add-subnet single family to dual", addSubnet("dual", "10.9.0.0/24"), cmd.ExitFailure, []string{"same families"}},
		{"add-subnet smaller than a block", addSubnet("default", "10.9.0.0/28"), cmd.ExitFailure, []string{"do not fit"}},

		{"delete unknown pool", []string{"pool", "delete", "nope"}, cmd.ExitFailure, []string{`"nope"`, "pool not found"}},
		{"delete pool in use", []string{"pool", "delete", "default"}, cmd.ExitFailure,
			[]string{`delete pool "default"`, "blocks in use", "2 blocks still owned", "coilctl pool show default"}},
		{"show unknown pool", []string{"pool", "show", "nope"}, cmd.ExitFailure, []string{"pool not found"}},
		{"unknown subcommand", []string{"pool", "lsit"}, cmd.ExitUsage, []string{`unknown command "lsit"`, `did you mean "list"?`}},
		{"bad output format", []string{"pool", "list", "-o", "yaml"}, cmd.ExitUsage, []string{`unknown output format "yaml"`}},
		{"--json against -o table", []string{"pool", "list", "-o", "table", "--json"}, cmd.ExitUsage, []string{"--json contradicts -o table"}},
	})
}

// TestEmptyEtcd checks that read commands on an etcd without Coil data
// show empty results and write nothing (not even the schema key), and that
// write commands refused there leave it empty too.
func TestEmptyEtcd(t *testing.T) {
	h := newHarness(t)
	reads := []struct {
		args []string
		want string
	}{
		{[]string{"pool", "list"}, "NAME  BLOCK-SIZE  FAMILY  SUBNETS  BLOCKS  ADDRESSES  DRAINED\n"},
		{[]string{"pool", "list", "-o", "json"}, "{\n  \"pools\": []\n}\n"},
		{[]string{"node", "blocks", "n1"}, "POOL  BLOCK  USED  FREE\n"},
		{[]string{"node", "blocks", "n1", "--json"}, "{\n  \"node\": \"n1\",\n  \"blocks\": []\n}\n"},
	}
	for _, c := range reads {
		if got := h.ok(c.args...); got != c.want {
			t.Errorf("coilctl %s printed %q, want %q", strings.Join(c.args, " "), got, c.want)
		}
	}
	h.assertFailures([]failure{
		{"show", []string{"pool", "show", "default"}, cmd.ExitFailure, []string{"pool not found"}},
		{"add-subnet", []string{"pool", "add-subnet", "default", "10.0.0.0/24"}, cmd.ExitFailure, []string{"pool not found"}},
		{"delete", []string{"pool", "delete", "default"}, cmd.ExitFailure, []string{"pool not found"}},
		{"address info", []string{"address", "info", "10.0.0.1"}, cmd.ExitFailure, []string{"no pool contains it"}},
		{"address free", []string{"address", "free", "10.0.0.1"}, cmd.ExitFailure, []string{"no pool contains it"}},
		{"create bad CIDR", []string{"pool", "create", "default", "10.0.0.1/24", "5"}, cmd.ExitFailure, []string{"not canonical"}},
	})
	if d := h.dump(t); len(d) != 0 {
		t.Errorf("etcd under the prefix is not empty: %v", d)
	}

	// The first successful write records the schema version.
	h.ok("pool", "create", "default", "10.0.0.0/24", "5")
	if _, ok := h.dump(t)[h.prefix+"schema"]; !ok {
		t.Errorf("pool create did not write the schema key: %v", h.dump(t))
	}
}
