package nodenet

import (
	"net/netip"
	"testing"
	"time"
)

// TestEgressProbe sends probes from the node hosting the pods to a
// programmed gateway, to a pod that is no gateway, and to the gateway
// after its teardown: only the programmed gateway stamps its VNI into the
// answer, and every pod answers (its kernel does), so "reachable but not
// programmed" is told apart from "unreachable".
func TestEgressProbe(t *testing.T) {
	b := newEgressBed(t)
	if err := SyncEgressGateway(b.gwA.Path(), EgressGateway{VNI: testVNI, IPv4: gatewayAV4, IPv6: gatewayAV6}); err != nil {
		t.Fatal(err)
	}
	var sock *ProbeSocket
	inNS(t, b.host, func() error {
		var err error
		sock, err = OpenProbeSocket()
		return err
	})
	defer sock.Close()
	replies := make(chan ProbeReply, 16)
	for _, read := range []func() (ProbeReply, error){sock.Read4, sock.Read6} {
		go func() {
			for {
				r, err := read()
				if err != nil {
					return // closed
				}
				replies <- r
			}
		}()
	}

	seq := uint16(0)
	probe := func(dst netip.Addr) ProbeReply {
		t.Helper()
		seq++
		if err := sock.Send(dst, 0x4242, seq); err != nil {
			t.Fatal(err)
		}
		deadline := time.After(3 * time.Second)
		for {
			select {
			case r := <-replies:
				if r.ID == 0x4242 && r.Seq == seq {
					if r.From != dst {
						t.Errorf("answer to %s came from %s", dst, r.From)
					}
					return r
				}
			case <-deadline:
				t.Fatalf("no answer from %s", dst)
			}
		}
	}
	tests := []struct {
		name string
		dst  netip.Addr
		want uint32
	}{
		{"programmed gateway, IPv4", gatewayAV4, testVNI},
		{"programmed gateway, IPv6", gatewayAV6, testVNI},
		{"pod that is no gateway, IPv4", gatewayBV4, 0},
		{"pod that is no gateway, IPv6", gatewayBV6, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Several in a row: a stamp must not depend on the first.
			for range 3 {
				if got := probe(tt.dst).VNI; got != tt.want {
					t.Errorf("stamp %#x, want %#x", got, tt.want)
				}
			}
		})
	}
	if err := TeardownEgressGateway(b.gwA.Path()); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []netip.Addr{gatewayAV4, gatewayAV6} {
		if got := probe(dst).VNI; got != 0 {
			t.Errorf("after teardown %s stamps %#x", dst, got)
		}
	}
}
