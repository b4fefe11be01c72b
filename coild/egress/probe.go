package egress

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"github.com/coil-project/coil/nodenet"
)

// Defaults of the gateway health probes (coild --egress-probe-interval and
// --egress-probe-misses).
const (
	DefaultProbeInterval = 200 * time.Millisecond
	DefaultProbeMisses   = 3
)

// probeForget is how long a target nobody wants any more is still probed
// before it is forgotten: a pass that briefly does not see a client pod
// (just created, not yet in the informer) must not lose the verdict.
const probeForget = time.Minute

// probeTarget is one gateway pod address this node's clients tunnel to.
type probeTarget struct {
	gateway string // pod key
	addr    netip.Addr
}

// probeHealth is a verdict on a target.
type probeHealth int

const (
	// probePending: not probed long enough for a verdict.
	probePending probeHealth = iota
	// probeUp: answers, stamped by a gateway programmed for the egress.
	probeUp
	// probeDown: did not answer, or answered unstamped, misses times in
	// a row.
	probeDown
)

// probeSender sends one probe; nodenet.ProbeSocket is one.
type probeSender interface {
	Send(dst netip.Addr, id, seq uint16) error
}

// probeState is what the prober knows of one target.
type probeState struct {
	egress string
	vni    uint32
	health probeHealth
	// misses and oks count the unanswered (or unstamped) and the good
	// probes in a row.
	misses, oks int
	// seq is the probe in flight, if inFlight; sent when.
	seq      uint16
	inFlight bool
	sent     time.Time
	// wanted is the last time a reconcile pass asked for the target.
	wanted time.Time
}

// prober sends a probe to every target each interval and keeps a verdict
// on each: a target goes down after misses probes in a row were lost (a
// probe is lost when no stamped answer came before the next one is sent)
// and comes back up after misses good answers in a row. A new target is up
// at its first good answer, so a new gateway is used at once, but only
// once its coild has programmed it (the stamp).
type prober struct {
	interval time.Duration
	misses   int
	send     probeSender
	id       uint16
	onChange func()
	metrics  *metrics
	log      *slog.Logger

	mu      sync.Mutex
	targets map[probeTarget]*probeState
	bySeq   map[uint16]probeTarget
	seq     uint16
	// changed is closed and replaced whenever a verdict changes.
	changed chan struct{}
}

func newProber(interval time.Duration, misses int, send probeSender, m *metrics, log *slog.Logger, onChange func()) *prober {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &prober{
		log:      log,
		interval: interval,
		misses:   misses,
		send:     send,
		// Raw sockets see every echo reply of the node: the id tells
		// this coild's apart (with the magic and the sequence).
		id:       uint16(rand.Uint32()),
		onChange: onChange,
		metrics:  m,
		targets:  map[probeTarget]*probeState{},
		bySeq:    map[uint16]probeTarget{},
		changed:  make(chan struct{}),
	}
}

// want makes sure the targets are probed; each maps to its egress and VNI.
// It returns whether every one of them has a verdict.
func (p *prober) want(targets map[probeTarget]probeState, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	settled := true
	for t, info := range targets {
		st, ok := p.targets[t]
		if !ok || st.vni != info.vni {
			st = &probeState{egress: info.egress, vni: info.vni}
			p.targets[t] = st
		}
		st.wanted = now
		if st.health == probePending {
			settled = false
		}
	}
	return settled
}

// health returns the verdict on a target.
func (p *prober) health(t probeTarget) probeHealth {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st, ok := p.targets[t]; ok {
		return st.health
	}
	return probePending
}

// wait blocks until every target has a verdict, ctx ends or timeout
// passes; it reports whether they all have one.
func (p *prober) wait(ctx context.Context, targets []probeTarget, timeout time.Duration) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		p.mu.Lock()
		ch := p.changed
		done := true
		for _, t := range targets {
			if st, ok := p.targets[t]; !ok || st.health == probePending {
				done = false
			}
		}
		p.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		case <-timer.C:
			return false
		}
	}
}

// tick counts the probes of the last round that got no good answer as
// misses, forgets targets nobody wanted for a while, and sends the next
// round.
func (p *prober) tick(now time.Time) {
	p.mu.Lock()
	changed := false
	type out struct {
		dst netip.Addr
		seq uint16
	}
	var sends []out
	for t, st := range p.targets {
		if st.inFlight {
			delete(p.bySeq, st.seq)
			st.inFlight = false
			changed = p.miss(t, st, "timeout") || changed
		}
		if now.Sub(st.wanted) > probeForget {
			delete(p.targets, t)
			p.metrics.forgetTarget(st.egress, t.gateway)
			continue
		}
		p.seq++
		st.seq, st.inFlight, st.sent = p.seq, true, now
		p.bySeq[p.seq] = t
		sends = append(sends, out{t.addr, p.seq})
	}
	p.mu.Unlock()
	if changed {
		p.notify()
	}
	for _, s := range sends {
		// A send that fails (no route while a link is down) is a
		// probe that will not be answered: counted at the next tick.
		_ = p.send.Send(s.dst, p.id, s.seq)
	}
}

// receive takes an answer to a probe.
func (p *prober) receive(r nodenet.ProbeReply, now time.Time) {
	if r.ID != p.id {
		return
	}
	p.mu.Lock()
	t, ok := p.bySeq[r.Seq]
	if !ok || t.addr != r.From {
		p.mu.Unlock()
		return
	}
	st := p.targets[t]
	delete(p.bySeq, r.Seq)
	st.inFlight = false
	var changed bool
	if r.VNI != st.vni {
		// The pod is there but no coild made it this egress's gateway
		// (yet, or any more).
		changed = p.miss(t, st, "unprogrammed")
	} else {
		p.metrics.probeRTT.WithLabelValues(st.egress).Observe(now.Sub(st.sent).Seconds())
		st.misses = 0
		st.oks++
		if st.health == probePending || st.health == probeDown && st.oks >= p.misses {
			changed = st.health != probeUp
			st.health = probeUp
			p.metrics.gatewayUp.WithLabelValues(st.egress, t.gateway).Set(1)
			p.log.Info("egress gateway answers the probes: up", "egress", st.egress, "gateway", t.gateway, "address", t.addr, "rtt", now.Sub(st.sent))
		}
	}
	p.mu.Unlock()
	if changed {
		p.notify()
	}
}

// miss counts a lost probe of t; it reports whether the verdict changed.
// p.mu is held.
func (p *prober) miss(t probeTarget, st *probeState, reason string) bool {
	p.metrics.probeFailures.WithLabelValues(st.egress, reason).Inc()
	st.oks = 0
	st.misses++
	if st.misses < p.misses || st.health == probeDown {
		return false
	}
	st.health = probeDown
	p.metrics.gatewayUp.WithLabelValues(st.egress, t.gateway).Set(0)
	p.log.Warn("egress gateway missed its probes: down", "egress", st.egress, "gateway", t.gateway, "address", t.addr, "misses", st.misses, "last", reason)
	return true
}

// notify wakes whoever waits for verdicts and the reconciler.
func (p *prober) notify() {
	p.mu.Lock()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	p.onChange()
}

// run probes every interval until ctx ends; read4 and read6 deliver the
// answers until the socket closes (close, called when ctx ends).
func (p *prober) run(ctx context.Context, read4, read6 func() (nodenet.ProbeReply, error), close func() error) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, read := range []func() (nodenet.ProbeReply, error){read4, read6} {
		wg.Go(func() {
			for {
				r, err := read()
				if err != nil {
					return
				}
				p.receive(r, time.Now())
			}
		})
	}
	defer close()
	ticker := time.NewTicker(p.interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-ticker.C:
			p.tick(now)
		}
	}
}
