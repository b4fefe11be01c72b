package controller

import (
	"time"

	"github.com/coil-project/coil/audit"
	"github.com/coil-project/coil/model"
)

// recordID identifies one address record: the same address allocated
// again is a new record (new creation revision) and starts a new grace
// period.
type recordID struct {
	pool                  string
	subnet, block, offset int
	revision              int64
}

func idOf(a model.Address) recordID {
	return recordID{a.Pool, a.Subnet, a.Block, a.Offset, a.Revision}
}

// graceTracker remembers since when each leak candidate has been one. It
// lives in memory only: a new leader starts counting afresh, which delays
// reclaiming but never speeds it up. It is used by the sweep loop alone.
type graceTracker struct {
	seen map[recordID]candidateState
}

type candidateState struct {
	firstSeen time.Time
	// reported is set once a report-only controller has announced the
	// leak, so it is not announced again every sweep.
	reported bool
}

func newGraceTracker() *graceTracker {
	return &graceTracker{seen: map[recordID]candidateState{}}
}

// observe records the candidates of one sweep and returns those that have
// been candidates in every sweep for at least grace. A record that stopped
// being a candidate (its pod appeared, it was released) is forgotten, so
// its clock starts again if it comes back.
func (t *graceTracker) observe(cands []audit.LeakCandidate, now time.Time, grace time.Duration) []audit.LeakCandidate {
	next := make(map[recordID]candidateState, len(cands))
	var matured []audit.LeakCandidate
	for _, c := range cands {
		id := idOf(c.Address)
		st, ok := t.seen[id]
		if !ok {
			st = candidateState{firstSeen: now}
		}
		next[id] = st
		if now.Sub(st.firstSeen) >= grace {
			matured = append(matured, c)
		}
	}
	t.seen = next
	return matured
}

// forget drops a record, after it was reclaimed or found to be in use.
func (t *graceTracker) forget(a model.Address) {
	delete(t.seen, idOf(a))
}

// markReported notes that a leak was announced and reports whether this
// is the first time.
func (t *graceTracker) markReported(a model.Address) bool {
	id := idOf(a)
	st, ok := t.seen[id]
	if !ok || st.reported {
		return false
	}
	st.reported = true
	t.seen[id] = st
	return true
}

// reset forgets every candidate. The sweep calls it when it could not
// judge (guard tripped, pods not synced), so that "a candidate in every
// sweep for the whole grace period" stays true.
func (t *graceTracker) reset() {
	t.seen = map[recordID]candidateState{}
}
