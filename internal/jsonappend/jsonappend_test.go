package jsonappend

import (
	"encoding/json"
	"testing"
)

func TestStringIsEncodingJSON(t *testing.T) {
	for _, s := range []string{
		"", "plain", "node-0001", "with \"quotes\" and \\", "tab\tnew\nline\rcr\bbs\fff",
		"\x00\x01\x1f\x7f", "<script>&amp;", "héllo wörld ✓ 日本", "bad \xff utf8 \xc3", "sep\u2028par\u2029",
		"/var/run/netns/cni-1234", "10.0.0.1", "fd00::1",
	} {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := String(nil, s); string(got) != string(want) {
			t.Errorf("String(%q) = %s, want %s", s, got, want)
		}
	}
}

func FuzzString(f *testing.F) {
	f.Add("a\"b\\c<d>&\u2028\xff")
	f.Fuzz(func(t *testing.T, s string) {
		want, _ := json.Marshal(s)
		if got := String(nil, s); string(got) != string(want) {
			t.Errorf("String(%q) = %s, want %s", s, got, want)
		}
	})
}
