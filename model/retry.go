package model

import (
	"context"
	"errors"
	"fmt"
)

// maxConflictAttempts bounds how often a write decided on a read is tried
// again after another writer changed what it read. Each lost attempt means
// another writer committed, so honest contention ends long before this.
const maxConflictAttempts = 64

// errConflict is returned by an attempt of retryConflicts whose
// transaction guard failed: something it read changed before it committed.
var errConflict = errors.New("conflicting write")

// retryConflicts runs attempt until it returns anything but errConflict,
// as etcd's concurrency.STM re-runs its function after a conflict. Each
// attempt must read afresh what it decides on and commit with a guard on
// it. It stops when ctx ends, with an error wrapping ErrUnavailable and the
// context's, and after attempts conflicts, with one wrapping ErrConflict
// and ErrUnavailable.
func retryConflicts(ctx context.Context, attempts int, attempt func() error) error {
	for i := range attempts {
		if ctx.Err() != nil {
			return fmt.Errorf("stopped after %d conflicting attempts: %w: %w", i, ErrUnavailable, context.Cause(ctx))
		}
		if err := attempt(); !errors.Is(err, errConflict) {
			return err
		}
	}
	return fmt.Errorf("%w: %w: lost to concurrent writers %d times", ErrConflict, ErrUnavailable, attempts)
}
