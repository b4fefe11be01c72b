package ipam_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/coil-project/coil/coild/ipam"
	"github.com/coil-project/coil/model"
)

// An allocation whose commit answer is lost (the request reached etcd, the
// connection broke before the answer came back) leaves etcd and the
// allocator's memory in agreement: every address and block etcd holds for
// the node is one the allocator knows, and the container asking again
// gets the address etcd holds for it.
func TestAmbiguousAllocation(t *testing.T) {
	cases := []struct {
		name string
		// prefill allocates before the lost one, so that the lost
		// transaction is an address (false) or a block acquisition (true).
		newBlock bool
	}{{name: "address in an owned block"}, {name: "new block", newBlock: true}}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			st, _ := setup(t, "default", fmt.Sprintf("10.17.%d.0/24", i), "", 2)
			kv := server.LosingKV(t)
			proxy := kv.Proxy
			pst := model.NewWithKV(kv, st.Prefix())
			rec := &recorder{}
			a := ipam.New(pst, "n1", rec)
			if err := a.Restore(ctx); err != nil {
				t.Fatal(err)
			}
			if !c.newBlock {
				if _, err := a.Allocate(ctx, "default", owner("c0")); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := st.ListAddresses(ctx, "default")

			kv.Arm()
			cut := make(chan struct{})
			go func() {
				defer close(cut)
				for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
					if now, _ := st.ListAddresses(ctx, "default"); len(now) > len(before) {
						break
					}
				}
				proxy.SetCut(true)
				proxy.SetDropResponses(false)
				proxy.SetCut(false)
			}()
			actx, cancel := context.WithTimeout(ctx, 30*time.Second)
			got, err := a.Allocate(actx, "default", owner("lost"))
			cancel()
			<-cut
			t.Logf("allocation with a lost answer = %v, %v", got.IPv4, err)

			// What etcd holds for the node, the allocator knows.
			addrs, err := st.ListAddresses(ctx, "default")
			if err != nil {
				t.Fatal(err)
			}
			known := a.Attachments()
			for _, ad := range addrs {
				if k, ok := known[att(ad.ContainerID)]; !ok || k.IPv4 != ad.IPv4 || k.Revision != ad.Revision {
					t.Errorf("etcd holds %s for %s, the allocator knows %v (%v): orphaned", ad.IPv4, ad.ContainerID, k.IPv4, ok)
				}
			}
			blocks, err := st.NodeBlocks(ctx, "n1")
			if err != nil {
				t.Fatal(err)
			}
			mine := map[string]bool{}
			for _, b := range a.Blocks()["default"] {
				mine[b.ID()] = true
			}
			for _, b := range blocks {
				if !mine[b.ID()] {
					t.Errorf("etcd holds block %s for the node, the allocator does not know it: orphaned", b.ID())
				}
			}
			if len(rec.acquired) != len(blocks) {
				t.Errorf("observer saw blocks %v acquired, etcd holds %d", rec.acquired, len(blocks))
			}
			// kubelet asks again: the container gets what etcd holds for it,
			// and etcd holds one record for it.
			again, err := a.Allocate(ctx, "default", owner("lost"))
			if err != nil {
				t.Fatal(err)
			}
			addrs, _ = st.ListAddresses(ctx, "default")
			var held []string
			for _, ad := range addrs {
				if ad.ContainerID == "lost" {
					held = append(held, ad.IPv4.String())
				}
			}
			if len(held) != 1 || held[0] != again.IPv4.String() {
				t.Errorf("retry got %s, etcd holds %v for the container", again.IPv4, held)
			}
		})
	}
}
