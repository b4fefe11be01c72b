package server_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/coild/server"
	"github.com/coil-project/coil/model"
)

// notReady is an allocator that is never ready: the fuzz target exercises
// the decoding and checks of request bodies, which come before it.
type notReady struct{}

func (notReady) Ready() bool { return false }
func (notReady) Allocate(context.Context, string, model.Owner) (model.Address, error) {
	panic("allocate on a server that is not ready")
}
func (notReady) Lookup(api.Attachment) (model.Address, bool) { return model.Address{}, false }
func (notReady) Release(context.Context, api.Attachment) (model.Address, bool, error) {
	panic("release on a server that is not ready")
}
func (notReady) ReleaseHeld(context.Context, api.Attachment) (model.Address, bool, func(), error) {
	panic("release on a server that is not ready")
}
func (notReady) Attachments() map[api.Attachment]model.Address { return nil }
func (notReady) Blocks() map[string][]model.Block              { return nil }
func (notReady) Usage() (int, int)                             { return 0, 0 }
func (notReady) FreeAddresses() map[string]int                 { return nil }

// FuzzRequestBodies sends arbitrary bodies to every endpoint that decodes
// one: coild must answer 400 or, for a well-formed request, 503 (not
// ready), never panic or anything else.
func FuzzRequestBodies(f *testing.F) {
	f.Add(0, `{"pod-namespace":"ns","pod-name":"p","container-id":"c","interface":"eth0","network":"k8s"}`)
	f.Add(1, `{"pod-namespace":"ns","pod-name":"p","container-id":"c","netns":"/var/run/netns/x"}`)
	f.Add(2, `{"network":"k8s","valid-attachments":[{"containerID":"c","ifname":"eth0"}]}`)
	f.Add(2, `{"valid-attachments":5}`)
	srv := server.New(server.Config{Allocator: notReady{}})
	paths := []string{api.PathIP, api.PathEgress, api.PathGC}
	f.Fuzz(func(t *testing.T, which int, body string) {
		path := paths[uint(which)%uint(len(paths))]
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)))
		if rec.Code != http.StatusBadRequest && rec.Code != http.StatusServiceUnavailable {
			t.Fatalf("POST %s %q = %d %s", path, body, rec.Code, rec.Body)
		}
	})
}
