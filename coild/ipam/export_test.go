package ipam

import "fmt"

// FreshMiscount describes how the allocator's count of blocks with
// never-used addresses differs from a recount; "" when it does not.
func FreshMiscount(a *Allocator) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	want := map[string]int{}
	for pool, list := range a.pools {
		for _, b := range list {
			if b.spentCount < b.Size() {
				want[pool]++
			}
		}
	}
	for pool, n := range a.fresh {
		if n != want[pool] {
			return fmt.Sprintf("pool %s: counted %d blocks with fresh addresses, there are %d", pool, n, want[pool])
		}
	}
	for pool, n := range want {
		if a.fresh[pool] != n {
			return fmt.Sprintf("pool %s: counted %d blocks with fresh addresses, there are %d", pool, a.fresh[pool], n)
		}
	}
	return ""
}
