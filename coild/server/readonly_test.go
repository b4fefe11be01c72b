package server_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/coild/server"
)

// TestReadOnly: the wrapper for the TCP listener passes probes, status and
// metrics through and refuses everything that could change state, without
// calling the wrapped handler.
func TestReadOnly(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		pass         bool
	}{
		{"GET", "/healthz", true},
		{"GET", "/readyz", true},
		{"GET", "/status", true},
		{"GET", "/metrics", true},
		{"HEAD", "/readyz", true},
		{"POST", "/ip", false},
		{"DELETE", "/ip/ns/pod/cid", false},
		{"GET", "/ip/ns/pod/cid", false},
		{"POST", "/gc", false},
		{"POST", "/egress", false},
		{"POST", "/status", false},
		{"GET", "/status/../gc", false},
		{"GET", "/nope", false},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			called := false
			h := server.ReadOnly(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				called = true
				w.WriteHeader(http.StatusOK)
			}))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, strings.NewReader(`{"valid-attachments":[]}`)))
			if called != tc.pass {
				t.Fatalf("wrapped handler called = %v, want %v", called, tc.pass)
			}
			if tc.pass {
				return
			}
			var e api.ErrorResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
			if rec.Code != http.StatusForbidden || e.Status != http.StatusForbidden || e.Reason != api.ReasonForbidden || !strings.Contains(e.Error, "unix socket") {
				t.Errorf("refusal = %d %+v, want 403 %s naming the unix socket", rec.Code, e, api.ReasonForbidden)
			}
		})
	}
}
