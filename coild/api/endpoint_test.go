package api

import (
	"errors"
	"testing"
)

// TestNewClientEndpoints checks the unexported base URL, so it stays in
// package api; the other client tests run from api_test because the shared
// fake coild imports this package.
func TestNewClientEndpoints(t *testing.T) {
	tests := []struct {
		endpoint string
		ok       bool
		base     string
	}{
		{"http://127.0.0.1:9383", true, "http://127.0.0.1:9383"},
		{"http://127.0.0.1:9383/", true, "http://127.0.0.1:9383"},
		{"unix:///run/coild.sock", true, "http://coild"},
		{"/run/coild.sock", true, "http://coild"},
		{"", false, ""},
		{"127.0.0.1:9383", false, ""},
		{"ftp://x", false, ""},
		{"unix://run/coild.sock", false, ""},
		{"unix://", false, ""},
	}
	for _, tt := range tests {
		c, err := NewClient(tt.endpoint)
		if !tt.ok {
			if !errors.Is(err, ErrInvalidEndpoint) {
				t.Errorf("NewClient(%q) error = %v, want ErrInvalidEndpoint", tt.endpoint, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("NewClient(%q): %v", tt.endpoint, err)
			continue
		}
		if c.base != tt.base {
			t.Errorf("NewClient(%q) base = %q, want %q", tt.endpoint, c.base, tt.base)
		}
	}
}
