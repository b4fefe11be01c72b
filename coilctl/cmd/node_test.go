package cmd_test

import (
	"cmp"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/coil-project/coil/model"
)

func TestNodeBlocks(t *testing.T) {
	h := newHarness(t)
	h.ok("pool", "create", "default", "10.0.0.0/24", "5")
	h.ok("pool", "create", "dual", "10.1.0.0/24", "4", "--ipv6", "fd00:1::/120")

	d1, _ := h.acquire("default", owner("n1", "a"))
	h.allocate(d1, 1, owner("n1", "b"))
	h.allocate(d1, 7, owner("n1", "c"))
	d2, _ := h.acquire("default", owner("n1", "d"))
	dual, _ := h.acquire("dual", owner("n1", "e"))
	h.acquire("default", owner("n2", "f"))

	// Expected order: by pool, then subnet and block index.
	defaults := []model.Block{d1, d2}
	slices.SortFunc(defaults, func(a, b model.Block) int { return cmp.Compare(a.Index, b.Index) })
	used := map[string]int{d1.ID(): 3, d2.ID(): 1, dual.ID(): 1}

	t.Run("table", func(t *testing.T) {
		want := [][]string{{"POOL", "BLOCK", "USED", "FREE"}}
		for _, b := range append(defaults, dual) {
			want = append(want, []string{b.Pool, b.String(), fmt.Sprint(used[b.ID()]), fmt.Sprint(b.Size() - used[b.ID()])})
		}
		if got := tableRows(h.ok("node", "blocks", "n1")); !reflect.DeepEqual(got, want) {
			t.Errorf("rows:\n got %q\nwant %q", got, want)
		}
		if !strings.Contains(want[3][1], ",fd00:1::") {
			t.Errorf("dual-stack block %q should show both CIDRs", want[3][1])
		}
	})

	t.Run("json", func(t *testing.T) {
		var items []string
		for _, b := range defaults {
			items = append(items, fmt.Sprintf(`{"id": %q, "pool": "default", "subnet": 0, "index": %d, "node": "n1", "ipv4": %q, "used": %d, "free": %d}`,
				b.ID(), b.Index, b.IPv4, used[b.ID()], 32-used[b.ID()]))
		}
		items = append(items, fmt.Sprintf(`{"id": %q, "pool": "dual", "subnet": 0, "index": %d, "node": "n1", "ipv4": %q, "ipv6": %q, "used": 1, "free": 15}`,
			dual.ID(), dual.Index, dual.IPv4, dual.IPv6))
		want := `{"node": "n1", "blocks": [` + strings.Join(items, ",") + `]}`
		assertJSON(t, h.ok("node", "blocks", "n1", "-o", "json"), want, "acquiredAt")
	})

	t.Run("node without blocks", func(t *testing.T) {
		if got := h.ok("node", "blocks", "n3"); got != "POOL  BLOCK  USED  FREE\n" {
			t.Errorf("got %q", got)
		}
	})
}
