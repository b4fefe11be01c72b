package egress

import (
	"net/netip"
	"testing"
	"time"

	"github.com/coil-project/coil/nodenet"
)

// recordSender remembers the probes sent.
type recordSender struct{ sent []uint16 }

func (s *recordSender) Send(_ netip.Addr, _, seq uint16) error {
	s.sent = append(s.sent, seq)
	return nil
}

// TestProberVerdicts drives the prober's state machine with a fake socket:
// each step is one round (a tick, then the answer if any).
func TestProberVerdicts(t *testing.T) {
	const vni = 7
	target := probeTarget{gateway: "gw/a", addr: netip.MustParseAddr("10.0.0.1")}
	type answer int
	const (
		none answer = iota
		good
		unstamped
		stranger // the right sequence from another address
	)
	tests := []struct {
		name   string
		rounds []answer
		want   []probeHealth // after each round's answer
	}{
		{"first good answer brings a new gateway up",
			[]answer{good}, []probeHealth{probeUp}},
		{"misses in a row take it down",
			[]answer{good, none, none, none, none},
			[]probeHealth{probeUp, probeUp, probeUp, probeUp, probeDown}},
		{"a good answer resets the count",
			[]answer{good, none, none, good, none, none, none, none},
			[]probeHealth{probeUp, probeUp, probeUp, probeUp, probeUp, probeUp, probeUp, probeDown}},
		{"coming back takes as many good answers",
			[]answer{good, none, none, none, none, good, good, good},
			[]probeHealth{probeUp, probeUp, probeUp, probeUp, probeDown, probeDown, probeDown, probeUp}},
		{"an answer without the stamp is a miss",
			[]answer{unstamped, unstamped, unstamped},
			[]probeHealth{probePending, probePending, probeDown}},
		{"a gateway that never answers is judged after the misses",
			[]answer{none, none, none, none},
			[]probeHealth{probePending, probePending, probePending, probeDown}},
		{"an answer from another address is ignored",
			[]answer{stranger, stranger, stranger, stranger},
			[]probeHealth{probePending, probePending, probePending, probeDown}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			send := &recordSender{}
			kicks := 0
			p := newProber(time.Second, 3, send, newMetrics(nil), nil, func() { kicks++ })
			now := time.Unix(1000, 0)
			p.want(map[probeTarget]probeState{target: {egress: "gw/nat", vni: vni}}, now)
			last := probePending
			changes := 0
			for i, a := range tt.rounds {
				now = now.Add(time.Second)
				p.tick(now)
				seq := send.sent[len(send.sent)-1]
				r := nodenet.ProbeReply{From: target.addr, ID: p.id, Seq: seq, VNI: vni}
				switch a {
				case good:
					p.receive(r, now.Add(time.Millisecond))
				case unstamped:
					r.VNI = 0
					p.receive(r, now.Add(time.Millisecond))
				case stranger:
					r.From = netip.MustParseAddr("10.0.0.99")
					p.receive(r, now.Add(time.Millisecond))
				}
				if got := p.health(target); got != tt.want[i] {
					t.Fatalf("round %d: health %d, want %d", i, got, tt.want[i])
				}
				if tt.want[i] != last {
					changes++
				}
				last = tt.want[i]
			}
			if kicks != changes {
				t.Errorf("the reconciler was woken %d times for %d changes of verdict", kicks, changes)
			}
		})
	}
}

// TestProberForgets checks that a target nobody asks for is dropped after
// probeForget, and that an answer for another coild's probe (its id) is
// not taken.
func TestProberForgets(t *testing.T) {
	target := probeTarget{gateway: "gw/a", addr: netip.MustParseAddr("fd00::1")}
	send := &recordSender{}
	p := newProber(time.Second, 3, send, newMetrics(nil), nil, func() {})
	now := time.Unix(1000, 0)
	if p.want(map[probeTarget]probeState{target: {egress: "gw/nat", vni: 1}}, now) {
		t.Fatal("a target never probed counts as settled")
	}
	p.tick(now)
	p.receive(nodenet.ProbeReply{From: target.addr, ID: p.id + 1, Seq: send.sent[0], VNI: 1}, now)
	if h := p.health(target); h != probePending {
		t.Fatalf("another coild's answer changed the verdict to %d", h)
	}
	p.receive(nodenet.ProbeReply{From: target.addr, ID: p.id, Seq: send.sent[0], VNI: 1}, now)
	if !p.want(map[probeTarget]probeState{target: {egress: "gw/nat", vni: 1}}, now) {
		t.Fatal("an answered target is not settled")
	}
	p.tick(now.Add(probeForget / 2))
	if _, ok := p.targets[target]; !ok {
		t.Fatal("target forgotten too early")
	}
	p.tick(now.Add(probeForget + time.Second))
	if _, ok := p.targets[target]; ok {
		t.Fatal("target nobody wants is still probed")
	}
}

// TestUsableGateways checks which gateways a client may choose from the
// probes' verdicts, and that rendezvous hashing over what remains moves
// only the clients of the gateway that is down.
func TestUsableGateways(t *testing.T) {
	gws := []gateway{
		{key: "gw/a", addrs: addrs{v4: netip.MustParseAddr("10.0.0.1")}},
		{key: "gw/b", addrs: addrs{v4: netip.MustParseAddr("10.0.0.2")}},
		{key: "gw/c", addrs: addrs{v4: netip.MustParseAddr("10.0.0.3")}},
	}
	r := &Reconciler{probe: newProber(time.Second, 1, &recordSender{}, newMetrics(nil), nil, func() {})}
	set := func(g gateway, h probeHealth) {
		r.probe.targets[probeTarget{gateway: g.key, addr: g.addrs.v4}] = &probeState{health: h, wanted: time.Now()}
	}
	client := addrs{v4: netip.MustParseAddr("10.1.0.1")}
	set(gws[0], probeUp)
	set(gws[1], probeDown)
	set(gws[2], probePending)
	keys := func(gs []gateway) (out []string) {
		for _, g := range gs {
			out = append(out, g.key)
		}
		return out
	}
	if got := keys(r.usable(gws, client, "")); len(got) != 1 || got[0] != "gw/a" {
		t.Errorf("usable = %v, want only the gateway that is up", got)
	}
	if got := keys(r.usable(gws, client, "gw/c")); len(got) != 2 || got[1] != "gw/c" {
		t.Errorf("usable = %v, want the one up and the pending one the client uses", got)
	}
	if got := keys(r.usable(gws, addrs{v6: netip.MustParseAddr("fd00::1")}, "")); len(got) != 0 {
		t.Errorf("an IPv6-only client may use %v", got)
	}

	// Only the clients of a gateway that goes down move.
	for _, g := range gws {
		set(g, probeUp)
	}
	before := map[string]string{}
	for i := range 200 {
		k := "app/c" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		g, _ := choose(k, client, r.usable(gws, client, ""))
		before[k] = g.key
	}
	set(gws[1], probeDown)
	for k, was := range before {
		g, _ := choose(k, client, r.usable(gws, client, was))
		if was != "gw/b" && g.key != was {
			t.Errorf("client %s moved from %s to %s though its gateway is up", k, was, g.key)
		}
		if g.key == "gw/b" {
			t.Errorf("client %s kept the gateway that is down", k)
		}
	}
}
