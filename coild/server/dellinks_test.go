package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coil-project/coil/coild/ipam"
	"github.com/coil-project/coil/coild/server"
	etcdtest "github.com/coil-project/coil/internal/testenv/etcd"
	"github.com/coil-project/coil/model"
	"github.com/prometheus/client_golang/prometheus"
)

// slowLinks is a PodLinks whose deletions wait until the test lets them
// go, recording the order of what the server asked.
type slowLinks struct {
	mu      sync.Mutex
	calls   []string
	pending []func()
	st      *model.Store
}

func (l *slowLinks) Detach(addr model.Address) (server.HostLink, error) {
	// The routes go first: the record must still be in etcd.
	info, err := l.st.FindAddress(context.Background(), addr.IPv4)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, fmt.Sprintf("detach %s recorded=%v", addr.IPv4, err == nil && info.Address != nil))
	return server.HostLink{Index: 7, Name: "vethx"}, nil
}

func (l *slowLinks) RemoveLater(addr model.Address, link server.HostLink, done func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, fmt.Sprintf("remove %s link %d", addr.IPv4, link.Index))
	l.pending = append(l.pending, done)
}

func (l *slowLinks) finish() {
	l.mu.Lock()
	p := l.pending
	l.pending = nil
	l.mu.Unlock()
	for _, done := range p {
		done()
	}
}

// TestDelHoldsAddressUntilLinksGone: DEL answers once the host routes are
// gone and the record is released, before the veth is deleted; until it
// is, the address is not handed out again, even in a full pool.
func TestDelHoldsAddressUntilLinksGone(t *testing.T) {
	ctx := context.Background()
	st := model.New(etcd.Client(t), etcdtest.Prefix(t))
	if err := st.Init(ctx); err != nil {
		t.Fatal(err)
	}
	sub, _ := model.ParseSubnet("10.21.0.0/30", "")
	if err := st.CreatePool(ctx, model.Pool{Name: "default", BlockSizeBits: 2, Subnets: []model.Subnet{sub}}); err != nil {
		t.Fatal(err)
	}
	alloc := ipam.New(st, "node1", nil)
	if err := alloc.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	links := &slowLinks{st: st}
	h := server.New(server.Config{Allocator: alloc, Selector: fixedPool("default"), PodLinks: links,
		RequestTimeout: 2 * time.Second, Registry: prometheus.NewRegistry()})
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)

	addrs := map[string]string{}
	for i := range 4 {
		code, body := do(t, "POST", ts.URL+"/ip", fmt.Sprintf(`{"pod-namespace":"ns","pod-name":"p%d","container-id":"c%d"}`, i, i))
		if code != 200 {
			t.Fatalf("ADD %d = %d %v", i, code, body)
		}
		addrs[fmt.Sprint(i)] = body["address"].(string)
	}
	if code, body := do(t, "DELETE", ts.URL+"/ip/ns/p2/c2", ""); code != 200 || body["removesLinks"] != true {
		t.Fatalf("DEL = %d %v, want 200 saying coild removes the links", code, body)
	}
	freed := addrs["2"]
	want := []string{"detach " + freed + " recorded=true", "remove " + freed + " link 7"}
	if fmt.Sprint(links.calls) != fmt.Sprint(want) {
		t.Fatalf("server asked %q, want %q", links.calls, want)
	}
	if recs, _ := st.ListAddresses(ctx, ""); len(recs) != 3 {
		t.Fatalf("%d records after DEL, want 3: DEL releases before it answers", len(recs))
	}
	// The pool is full but for the held address: an ADD waits for it,
	// and gets it only once the veth of its previous owner is gone.
	type answer struct {
		code int
		body map[string]any
		err  error
	}
	added := make(chan answer, 1)
	go func() {
		// Not do: t.Fatal belongs to the test's goroutine.
		resp, err := http.Post(ts.URL+"/ip", "application/json",
			strings.NewReader(`{"pod-namespace":"ns","pod-name":"p20","container-id":"c20"}`))
		if err != nil {
			added <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		var body map[string]any
		err = json.NewDecoder(resp.Body).Decode(&body)
		added <- answer{resp.StatusCode, body, err}
	}()
	select {
	case a := <-added:
		t.Fatalf("ADD answered %d %v while the veth of the address's previous owner still existed", a.code, a.body)
	case <-time.After(100 * time.Millisecond):
	}
	links.finish()
	if a := <-added; a.err != nil || a.code != 200 || a.body["address"] != freed {
		t.Fatalf("ADD after the links went = %d %v (%v), want %s", a.code, a.body, a.err, freed)
	}
	// DEL of an attachment holding nothing detaches and removes nothing.
	links.calls = nil
	// The plugin removes the links itself then.
	if code, body := do(t, "DELETE", ts.URL+"/ip/ns/p9/c9", ""); code != 200 || len(links.calls) != 0 || body["removesLinks"] != nil {
		t.Fatalf("DEL of nothing = %d %v, asked %q", code, body, links.calls)
	}
}
