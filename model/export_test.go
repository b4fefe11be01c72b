package model

// Internals the external tests exercise.
var (
	RetryConflicts      = retryConflicts
	ErrConflictAttempt  = errConflict
	MaxConflictAttempts = maxConflictAttempts
)
