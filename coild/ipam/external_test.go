package ipam_test

import (
	"context"
	"testing"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/coild/ipam"
	"github.com/coil-project/coil/model"
)

// TestReleasedElsewhere deletes records behind the allocator's back, as
// coil-controller and coilctl do, and applies the deletions the way
// coild's watch does (ForgetAddress, ForgetBlock) or after a broken watch
// (Resync): the address is handed out again, the block is no longer
// allocated from, and a late DEL of the forgotten pod frees nothing.
func TestReleasedElsewhere(t *testing.T) {
	tests := []struct {
		name string
		// release deletes a record in etcd and makes the allocator learn
		// of it; it returns the offset that must be free again (-1: the
		// block is gone).
		release func(t *testing.T, st *model.Store, a *ipam.Allocator, b model.Block, victim model.Address) int
	}{
		{name: "address, watched", release: func(t *testing.T, st *model.Store, a *ipam.Allocator, _ model.Block, victim model.Address) int {
			mustRelease(t, st, victim)
			if _, ok := a.ForgetAddress(victim); !ok {
				t.Fatal("ForgetAddress did not forget the released record")
			}
			if _, ok := a.ForgetAddress(victim); ok {
				t.Fatal("ForgetAddress forgot the same record twice")
			}
			return victim.Offset
		}},
		{name: "address, resync", release: func(t *testing.T, st *model.Store, a *ipam.Allocator, _ model.Block, victim model.Address) int {
			mustRelease(t, st, victim)
			_, blocks, addrs, err := a.Resync(context.Background())
			if err != nil || len(blocks) != 0 || len(addrs) != 1 || addrs[0].Offset != victim.Offset {
				t.Fatalf("Resync = %v, %v, %v; want the one address", blocks, addrs, err)
			}
			return victim.Offset
		}},
		{name: "block, watched", release: func(t *testing.T, st *model.Store, a *ipam.Allocator, b model.Block, _ model.Address) int {
			mustForceRelease(t, st, b)
			lost, ok := a.ForgetBlock(b)
			if !ok || len(lost) != 4 {
				t.Fatalf("ForgetBlock = %v, %v; want the 4 addresses of the full block", lost, ok)
			}
			return -1
		}},
		{name: "block, resync", release: func(t *testing.T, st *model.Store, a *ipam.Allocator, b model.Block, _ model.Address) int {
			mustForceRelease(t, st, b)
			_, blocks, addrs, err := a.Resync(context.Background())
			if err != nil || len(blocks) != 1 || len(addrs) != 4 {
				t.Fatalf("Resync = %v, %v, %v; want the block and its 4 addresses", blocks, addrs, err)
			}
			return -1
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, _ := setup(t, "default", "10.40.0.0/29", "", 2) // 2 blocks of 4
			obs := &recorder{}
			a := restored(t, st, "n1", obs)
			ctx := context.Background()
			var held []model.Address
			for _, cid := range []string{"c0", "c1", "c2", "c3"} {
				ad, err := a.Allocate(ctx, "default", owner(cid))
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, ad)
			}
			b := a.Blocks()["default"][0]
			victim := held[2]

			free := tc.release(t, st, a, b, victim)

			next, err := a.Allocate(ctx, "default", owner("next"))
			if err != nil {
				t.Fatal(err)
			}
			if free >= 0 {
				if next.Block != b.Index || next.Offset != free {
					t.Fatalf("next address %v, want offset %d of block %s freed in etcd", next.IPs(), free, b.ID())
				}
				if _, ok := a.Lookup(api.Attachment{ContainerID: victim.ContainerID, Interface: "eth0"}); ok {
					t.Error("the attachment of the released record still holds it")
				}
			} else {
				obs.mu.Lock()
				released := append([]string(nil), obs.released...)
				obs.mu.Unlock()
				if len(released) != 1 || released[0] != b.ID() {
					t.Errorf("observer saw releases %v, want block %s withdrawn", released, b.ID())
				}
				if next.Revision <= b.Revision {
					t.Fatalf("next address %v is not from a block acquired anew", next.IPs())
				}
			}
			// A late DEL of the forgotten pod must not free what "next" holds.
			if _, _, err := a.Release(ctx, api.Attachment{ContainerID: victim.ContainerID, Interface: "eth0"}); err != nil {
				t.Fatal(err)
			}
			if _, ok := a.Lookup(api.Attachment{ContainerID: "next", Interface: "eth0"}); !ok {
				t.Fatal("next lost its address")
			}
			again, err := a.Allocate(ctx, "default", owner("again"))
			if err != nil {
				t.Fatal(err)
			}
			if again.Pool == next.Pool && again.Block == next.Block && again.Offset == next.Offset {
				t.Fatalf("%v handed out twice", again.IPs())
			}
		})
	}
}

// TestResyncKeepsNewerRecords: Resync must not take the allocator's own
// allocations made after the revision it read at for releases.
func TestResyncKeepsNewerRecords(t *testing.T) {
	st, _ := setup(t, "default", "10.41.0.0/29", "", 2)
	a := restored(t, st, "n1", nil)
	ctx := context.Background()
	if _, err := a.Allocate(ctx, "default", owner("c0")); err != nil {
		t.Fatal(err)
	}
	_, blocks, addrs, err := a.Resync(ctx)
	if err != nil || len(blocks) != 0 || len(addrs) != 0 {
		t.Fatalf("Resync of an unchanged node = %v, %v, %v; want nothing", blocks, addrs, err)
	}
	if _, ok := a.Lookup(api.Attachment{ContainerID: "c0", Interface: "eth0"}); !ok {
		t.Fatal("Resync forgot a live address")
	}
}

func mustRelease(t *testing.T, st *model.Store, a model.Address) {
	t.Helper()
	if err := st.ReleaseAddress(context.Background(), a); err != nil {
		t.Fatal(err)
	}
}

func mustForceRelease(t *testing.T, st *model.Store, b model.Block) {
	t.Helper()
	if _, err := st.ForceReleaseBlock(context.Background(), b); err != nil {
		t.Fatal(err)
	}
}
