package server

import (
	"reflect"
	"testing"

	"github.com/coil-project/coil/coild/api"
)

// allocBodies are POST /ip bodies for the fast path's tests: what the
// plugin sends, and what it must leave to encoding/json.
var allocBodies = []struct {
	body string
	fast bool
}{
	{`{"pod-namespace":"ns","pod-name":"p","container-id":"c","interface":"eth0","netns":"/var/run/netns/x","pod-uid":"u","network":"k8s"}`, true},
	{` { "pod-namespace" : "ns" ,"pod-name":"p","container-id":"c"} ` + "\n", true},
	{`{"pod-namespace":"ns","pod-name":"p","container-id":"c","egress-annotations":{}}`, true},
	{`{"pod-namespace":"ns","pod-name":"p","container-id":"c","egress-annotations":null}`, true},
	{`{"pod-namespace":"ns","pod-name":"p","container-id":"c","egress-annotations":{"egress.coil.cybozu.com/a":"x","egress.coil.cybozu.com/a":"y"}}`, true},
	{`{"pod-namespace":"ñs","pod-name":"p","container-id":"c"}`, true},
	{`{}`, true},
	// Left to encoding/json:
	{`{"Pod-Namespace":"ns"}`, false},                     // another spelling of a field
	{`{"pod-namespace":"n\u0073"}`, false},                // an escape
	{`{"pod-namespace":"ns","pod-namespace":"x"}`, false}, // a repeated field
	{`{"pod-namespace":5}`, false},                        // another type
	{`{"pod-namespace":null}`, false},
	{`{"pod-namespace":"ns"} {}`, false}, // trailing data
	{`{"pod-namespace":"ns",}`, false},
	{`{"unknown":"x"}`, false},
	{"{\"pod-namespace\":\"n\xffs\"}", false}, // invalid UTF-8
	{"{\"pod-namespace\":\"n\ts\"}", false},   // a control character
	{`null`, false},
	{`{"pod-namespace":"ns"`, false},
	{``, false},
}

// TestDecodeAllocFast: the fast path takes the bodies clients write,
// decoded exactly as encoding/json does, and leaves the rest to it.
func TestDecodeAllocFast(t *testing.T) {
	for _, tt := range allocBodies {
		var got api.AllocRequest
		if ok := decodeAllocFast([]byte(tt.body), &got); ok != tt.fast {
			t.Errorf("decodeAllocFast(%q) = %v, want %v", tt.body, ok, tt.fast)
			continue
		}
		if tt.fast {
			sameAsJSON(t, tt.body, got)
		}
	}
}

// FuzzDecodeAllocFast: whatever the fast path accepts, encoding/json
// accepts too, into the same request.
func FuzzDecodeAllocFast(f *testing.F) {
	for _, tt := range allocBodies {
		f.Add(tt.body)
	}
	f.Fuzz(func(t *testing.T, body string) {
		var got api.AllocRequest
		if decodeAllocFast([]byte(body), &got) {
			sameAsJSON(t, body, got)
		}
	})
}

func sameAsJSON(t *testing.T, body string, got api.AllocRequest) {
	t.Helper()
	var want api.AllocRequest
	if err := decodeJSON([]byte(body), &want); err != nil {
		t.Fatalf("fast path accepted %q, encoding/json refuses it: %v", body, err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: fast path %#v, encoding/json %#v", body, got, want)
	}
}

func BenchmarkDecodeAllocRequest(b *testing.B) {
	body := []byte(`{"pod-namespace":"default","pod-name":"web-7d4b9c6f8-x2k9p","container-id":"3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f","interface":"eth0","netns":"/var/run/netns/cni-1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e","pod-uid":"0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e","network":"k8s-pod-network","egress-annotations":{}}`)
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			var r api.AllocRequest
			if !decodeAllocFast(body, &r) {
				b.Fatal("not fast")
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for b.Loop() {
			var r api.AllocRequest
			if err := decodeJSON(body, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
}
