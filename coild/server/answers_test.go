package server

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"github.com/coil-project/coil/coild/api"
	"github.com/coil-project/coil/model"
)

// TestHandWrittenAnswers: the answers written without reflection are
// byte for byte what encoding/json writes for the API's types.
func TestHandWrittenAnswers(t *testing.T) {
	record := func(f func(w http.ResponseWriter)) string {
		rec := httptest.NewRecorder()
		f(rec)
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" || rec.Code != http.StatusOK {
			t.Errorf("status %d, Content-Type %q", rec.Code, ct)
		}
		return rec.Body.String()
	}
	for _, addr := range []model.Address{
		{IPv4: netip.MustParseAddr("10.64.0.1")},
		{IPv6: netip.MustParseAddr("fd00::1")},
		{IPv4: netip.MustParseAddr("10.64.0.2"), IPv6: netip.MustParseAddr("fd00::2")},
		{IPv6: netip.MustParseAddr("fe80::1%eth\"0")},
		{},
	} {
		for _, skip := range []bool{false, true} {
			got := record(func(w http.ResponseWriter) { writeAllocated(w, addr, skip) })
			want := record(func(w http.ResponseWriter) { writeJSON(w, http.StatusOK, allocResponse(addr, skip)) })
			if got != want {
				t.Errorf("%v, skip-egress %v: got %s, want %s", addr.IPs(), skip, got, want)
			}
		}
	}
	for _, removes := range []bool{false, true} {
		got := record(func(w http.ResponseWriter) { writeReleased(w, removes) })
		want := record(func(w http.ResponseWriter) {
			writeJSON(w, http.StatusOK, api.ReleaseResponse{Status: http.StatusOK, RemovesLinks: removes})
		})
		if got != want {
			t.Errorf("removesLinks %v: got %s, want %s", removes, got, want)
		}
	}
}
