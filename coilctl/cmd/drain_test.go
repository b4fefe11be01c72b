package cmd_test

import (
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/coil-project/coil/coilctl/cmd"
	"github.com/coil-project/coil/model"
)

func TestPoolDrain(t *testing.T) {
	h := newHarness(t)
	h.ok("pool", "create", "default", "10.0.0.0/24", "5", "--ipv6", "fd00::/120")
	h.ok("pool", "add-subnet", "default", "10.0.1.0/24", "--ipv6", "fd00:0:0:1::/120")
	h.ok("pool", "create", "other", "10.9.0.0/24", "5")

	// Every block of subnet 0 is taken by a node once subnet 1 is drained.
	h.ok("pool", "drain", "default", "--subnet", "10.0.1.0/24")
	var held []model.Address
	var blocks []model.Block
	for i, node := range []string{"n1", "n2", "n1"} {
		b, a := h.acquire("default", owner(node, "p"+string(rune('a'+i))))
		if b.Subnet != 0 {
			t.Fatalf("block %s taken from the drained subnet", b)
		}
		blocks, held = append(blocks, b), append(held, a)
	}
	h.allocate(blocks[0], 1, owner("n1", "pz"))
	h.ok("pool", "undrain", "default", "--subnet", "fd00:0:0:1::/120")

	steps := []struct {
		args []string
		want string
	}{
		{[]string{"pool", "drain", "default", "--subnet", "fd00::/120"},
			`subnet fd00::/120 of pool "default" drained: no node takes a new block of it; 4 addresses in 3 blocks stay until their pods go`},
		{[]string{"pool", "drain", "default", "--subnet", "10.0.0.0/24"},
			`subnet 10.0.0.0/24 of pool "default" was already drained`},
		{[]string{"pool", "undrain", "other"}, `pool "other" was not drained`},
		{[]string{"pool", "drain", "other"},
			`pool "other" drained: no node takes a new block of it; 0 addresses in 0 blocks stay until their pods go`},
	}
	for _, s := range steps {
		if got := strings.TrimSpace(h.ok(s.args...)); got != s.want {
			t.Errorf("coilctl %s printed\n%q, want\n%q", strings.Join(s.args, " "), got, s.want)
		}
	}

	t.Run("show", func(t *testing.T) {
		out := h.ok("pool", "show", "default")
		if !strings.Contains(out, "Drained:     10.0.0.0/24,fd00::/120\n") {
			t.Errorf("pool show does not say what is drained:\n%s", out)
		}
		_, rest, _ := strings.Cut(out, "\n\n")
		subnets, _, _ := strings.Cut(rest, "\n\n")
		want := [][]string{
			{"SUBNET", "STATE", "BLOCKS", "IN-USE", "CAPACITY"},
			{"10.0.0.0/24,fd00::/120", "drained", "3/8", "4", "256"},
			{"10.0.1.0/24,fd00:0:0:1::/120", "active", "0/8", "0", "256"},
		}
		if got := tableRows(subnets); !reflect.DeepEqual(got, want) {
			t.Errorf("subnets:\n got %q\nwant %q", got, want)
		}
		list := tableRows(h.ok("pool", "list"))
		if got := list[2][6]; got != "pool" {
			t.Errorf("pool list DRAINED of the drained pool = %q, want pool", got)
		}
	})

	h.assertFailures([]failure{
		{"drain unknown pool", []string{"pool", "drain", "nope"}, cmd.ExitFailure, []string{`"nope"`, "pool not found"}},
		{"drain subnet not in pool", []string{"pool", "drain", "default", "--subnet", "10.0.2.0/24"}, cmd.ExitFailure,
			[]string{`drain subnet 10.0.2.0/24 of pool "default"`, "subnet not found"}},
		{"drain bad CIDR", []string{"pool", "drain", "default", "--subnet", "10.0.0.1/24"}, cmd.ExitFailure, []string{"not canonical"}},
		{"drain without name", []string{"pool", "drain"}, cmd.ExitUsage, []string{"missing NAME"}},
		{"remove active subnet", []string{"pool", "remove-subnet", "default", "10.0.1.0/24"}, cmd.ExitFailure,
			[]string{"subnet not drained", "coilctl pool drain default --subnet 10.0.1.0/24"}},
		{"remove subnet in use", []string{"pool", "remove-subnet", "default", "fd00::/120"}, cmd.ExitFailure,
			[]string{`remove subnet fd00::/120 from pool "default"`, "blocks in use", "n1 (2 blocks), n2 (1 block)", "coilctl pool show default"}},
		{"remove last subnet", []string{"pool", "remove-subnet", "other", "10.9.0.0/24"}, cmd.ExitFailure,
			[]string{"last subnet", "delete the pool instead"}},
		{"remove unknown subnet", []string{"pool", "remove-subnet", "default", "10.0.5.0/24"}, cmd.ExitFailure, []string{"subnet not found"}},
		{"remove bad CIDR", []string{"pool", "remove-subnet", "default", "banana"}, cmd.ExitFailure, []string{"invalid CIDR"}},
		{"remove missing CIDR", []string{"pool", "remove-subnet", "default"}, cmd.ExitUsage, []string{"missing CIDR"}},
	})

	// The pods go, the nodes return their blocks: the subnet can go.
	ctx := context.Background()
	addrs, err := h.st.ListAddresses(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if err := h.st.ReleaseAddress(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range blocks {
		if err := h.st.ReleaseBlock(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := strings.TrimSpace(h.ok("pool", "remove-subnet", "default", "10.0.0.0/24")),
		`subnet 10.0.0.0/24 removed from pool "default", which now has 8 blocks of 32 addresses`; got != want {
		t.Errorf("remove-subnet printed %q, want %q", got, want)
	}
	assertJSON(t, h.ok("pool", "list", "-o", "json"), `{"pools": [
	  {"name": "default", "family": "dual", "blockSizeBits": 5, "blockSize": 32,
	   "subnets": [{"removed": true}, {"ipv4": "10.0.1.0/24", "ipv6": "fd00:0:0:1::/120"}],
	   "blocks": {"used": 0, "total": 8},
	   "addresses": {"used": 0, "free": 256, "freeInOwnedBlocks": 0, "capacity": 256}},
	  {"name": "other", "family": "ipv4", "blockSizeBits": 5, "blockSize": 32,
	   "subnets": [{"ipv4": "10.9.0.0/24"}], "drained": true,
	   "blocks": {"used": 0, "total": 8},
	   "addresses": {"used": 0, "free": 256, "freeInOwnedBlocks": 0, "capacity": 256}}
	]}`)
	if got := strings.TrimSpace(h.ok("pool", "undrain", "other")); got != `pool "other" undrained: nodes take new blocks of it again` {
		t.Errorf("undrain printed %q", got)
	}
	// The removed prefixes are free for any pool again.
	h.ok("pool", "add-subnet", "other", "10.0.0.0/24")
}
