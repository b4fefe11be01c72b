package daemon_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	nodetest "github.com/coil-project/coil/internal/testenv/node"
	"github.com/coil-project/coil/model"
)

// TestCorruptRecordsSkipped checks that coild restores past records it
// cannot use (a block of zero size, a block with a bad size, an address
// that does not decode, keys of the wrong shape), reports them, and keeps
// serving. Before, a zero-size block of the node panicked Restore.
func TestCorruptRecordsSkipped(t *testing.T) {
	n := env.NewNode(t, nodetest.Options{Pools: []model.Pool{pool(t, "default", 4, "10.10.0.0/24")}})
	p := nodetest.NewPod(t, "default", "before")
	before := n.Add(p)
	recs := n.AddressRecords()
	if len(recs) != 1 {
		t.Fatalf("address records: %+v", recs)
	}
	own := recs[0]
	n.Stop()

	node := n.Name
	corrupt := map[string]string{
		// A block of this node whose record has no prefix: size zero.
		"blocks/default/0/9": `{"pool":"default","subnet":0,"index":9,"node":"` + node + `"}`,
		// A block of this node claiming 2^32 addresses.
		"blocks/default/0/10": `{"pool":"default","subnet":0,"index":10,"ipv4":"0.0.0.0/0","node":"` + node + `"}`,
		// A block whose value names another block than its key.
		"blocks/default/0/11": `{"pool":"default","subnet":0,"index":3,"ipv4":"10.10.0.48/28","node":"` + node + `"}`,
		// An address of the node's own block that does not decode.
		"addresses/default/0/" + itoa(own.Block) + "/7": `{"pool":`,
		// Keys of the wrong shape.
		"blocks/default/zz":        `{}`,
		"addresses/default/0/1":    `{}`,
		"blocks/default/0/1/extra": `{}`,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for k, v := range corrupt {
		if _, err := n.EtcdClient.Put(ctx, n.Prefix+k, v); err != nil {
			t.Fatal(err)
		}
	}

	n.Start()
	if got := n.StatusAddresses(); len(got) != 1 || got[0] != before[0] {
		t.Errorf("/status after restart: %v, want %v", got, before)
	}
	q := nodetest.NewPod(t, "default", "after")
	after := n.Add(q)
	if len(after) != 1 || after[0] == before[0] {
		t.Errorf("ADD after restart got %v (the first pod holds %v)", after, before)
	}
	if m := n.Metrics(); !strings.Contains(m, "coild_corrupt_records_total") {
		t.Errorf("metrics lack coild_corrupt_records_total:\n%s", m)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
