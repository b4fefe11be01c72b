package server

import (
	"unicode/utf8"

	"github.com/coil-project/coil/coild/api"
)

// decodeAllocFast decodes a POST /ip body without reflection when it is
// written the way clients write it: one JSON object of AllocRequest's
// fields under their exact names, each at most once, string values
// without escapes, egress-annotations an object of such strings or null,
// and nothing after the object but white space. For such a body it sets
// *req to exactly what encoding/json (with unknown fields disallowed)
// would, and reports true. For anything else (other spellings, escapes,
// other types, malformed input) it reports false and leaves the body to
// encoding/json, which decodes it or says what is wrong: this is a fast
// path, never a second grammar.
func decodeAllocFast(body []byte, req *api.AllocRequest) bool {
	d := fastDecoder{b: body}
	d.space()
	if !d.take('{') {
		return false
	}
	var out api.AllocRequest
	var seen [8]bool
	d.space()
	if d.take('}') {
		return d.end(req, out)
	}
	for {
		d.space()
		key, ok := d.str()
		if !ok {
			return false
		}
		d.space()
		if !d.take(':') {
			return false
		}
		d.space()
		var field *string
		slot := -1
		switch string(key) { // no allocation: the compiler compares in place
		case "pod-namespace":
			field, slot = &out.PodNamespace, 0
		case "pod-name":
			field, slot = &out.PodName, 1
		case "container-id":
			field, slot = &out.ContainerID, 2
		case "interface":
			field, slot = &out.Interface, 3
		case "netns":
			field, slot = &out.NetNS, 4
		case "pod-uid":
			field, slot = &out.PodUID, 5
		case "network":
			field, slot = &out.Network, 6
		case "egress-annotations":
			slot = 7
		default:
			return false
		}
		if seen[slot] {
			return false
		}
		seen[slot] = true
		if field != nil {
			v, ok := d.str()
			if !ok {
				return false
			}
			*field = string(v)
		} else {
			m, ok := d.annotations()
			if !ok {
				return false
			}
			out.EgressAnnotations = m
		}
		d.space()
		if d.take(',') {
			continue
		}
		if d.take('}') {
			return d.end(req, out)
		}
		return false
	}
}

// fastDecoder reads the subset of JSON decodeAllocFast accepts.
type fastDecoder struct {
	b []byte
	i int
}

// space skips JSON white space.
func (d *fastDecoder) space() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// take consumes c if it comes next.
func (d *fastDecoder) take(c byte) bool {
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

// str reads a string without escapes or control characters, in valid
// UTF-8 (encoding/json would replace invalid bytes), and returns its
// content, which aliases the body.
func (d *fastDecoder) str() ([]byte, bool) {
	if !d.take('"') {
		return nil, false
	}
	start := d.i
	for d.i < len(d.b) {
		c := d.b[d.i]
		switch {
		case c == '"':
			s := d.b[start:d.i]
			d.i++
			return s, utf8.Valid(s)
		case c == '\\' || c < 0x20:
			return nil, false
		}
		d.i++
	}
	return nil, false
}

// annotations reads null or an object of strings.
func (d *fastDecoder) annotations() (map[string]string, bool) {
	if d.i+4 <= len(d.b) && string(d.b[d.i:d.i+4]) == "null" {
		d.i += 4
		return nil, true
	}
	if !d.take('{') {
		return nil, false
	}
	m := map[string]string{}
	d.space()
	if d.take('}') {
		return m, true
	}
	for {
		d.space()
		k, ok := d.str()
		if !ok {
			return nil, false
		}
		d.space()
		if !d.take(':') {
			return nil, false
		}
		d.space()
		v, ok := d.str()
		if !ok {
			return nil, false
		}
		// A repeated key: the last wins, as with encoding/json.
		m[string(k)] = string(v)
		d.space()
		if d.take(',') {
			continue
		}
		if d.take('}') {
			return m, true
		}
		return nil, false
	}
}

// end accepts the object read if only white space follows it.
func (d *fastDecoder) end(req *api.AllocRequest, out api.AllocRequest) bool {
	d.space()
	if d.i != len(d.b) {
		return false
	}
	*req = out
	return true
}
