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
