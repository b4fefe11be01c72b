package model

// Internals the external tests exercise.
import "time"

// SetOutcomeWait shortens how long s asks etcd about a lost answer.
func SetOutcomeWait(s *Store, d time.Duration) { s.outcomeWait = d }

var (
	RetryConflicts      = retryConflicts
	ErrConflictAttempt  = errConflict
	MaxConflictAttempts = maxConflictAttempts
)

// QueuedWrites is the number of address writes waiting for the one in
// flight (batch.go).
func QueuedWrites(s *Store) int {
	s.batch.mu.Lock()
	defer s.batch.mu.Unlock()
	return len(s.batch.queue)
}

// EncodeAddress is the hand-written encoding of an address record.
var EncodeAddress = encodeAddress

// SetBlockProbes sets the sizes of the reads with which s looks for a free
// block before listing the pool's blocks; none makes it list at once.
func SetBlockProbes(s *Store, sizes ...int) { s.blockProbes = sizes }
