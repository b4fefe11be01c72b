package model_test

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/coil-project/coil/model"
)

// TestEncodeAddressIsEncodingJSON: the address record written without
// reflection is byte for byte what encoding/json writes.
func TestEncodeAddressIsEncodingJSON(t *testing.T) {
	at := time.Date(2026, 11, 30, 21, 30, 1, 123456789, time.UTC)
	owner := model.Owner{Node: "node-0001", Namespace: "default", Pod: "web-0", ContainerID: "abc123", Interface: "eth0"}
	full := owner
	full.NetNS, full.PodUID, full.Network = "/var/run/netns/cni-1", "0b5e-uid", "coil"
	odd := model.Owner{Node: "n<1>", Namespace: "ns&\"q\"", Pod: "p\\\n\u2028", ContainerID: "\xff", Interface: "é"}
	cases := []struct {
		name string
		a    model.Address
	}{
		{"IPv4", model.Address{Pool: "default", Subnet: 1, Block: 1234, Offset: 17, IPv4: netip.MustParseAddr("10.64.154.81"), Owner: owner, CreatedAt: at}},
		{"IPv6 only", model.Address{Pool: "v6", Block: 3, IPv6: netip.MustParseAddr("fd00::5"), Owner: owner, CreatedAt: at}},
		{"dual stack, every field", model.Address{Pool: "dual", Subnet: 2, Block: 7, Offset: 31, IPv4: netip.MustParseAddr("10.0.0.31"), IPv6: netip.MustParseAddr("fd00::1f"), Owner: full, CreatedAt: at, Revision: 99}},
		{"characters to escape", model.Address{Pool: "p", IPv4: netip.MustParseAddr("10.0.0.1"), Owner: odd, CreatedAt: at}},
		{"zero", model.Address{}},
		{"time with a zone", model.Address{Pool: "p", CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 5*3600+30*60))}},
		{"negative numbers", model.Address{Pool: "p", Subnet: -1, Block: -2, Offset: -3, CreatedAt: at}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want, err := json.Marshal(c.a)
			if err != nil {
				t.Fatal(err)
			}
			if got := model.EncodeAddress(c.a); got != string(want) {
				t.Errorf("got  %s\nwant %s", got, want)
			}
		})
	}
}
