package nodenet

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// maxDumpAttempts bounds how often an interrupted netlink dump is repeated.
// A dump is interrupted when the kernel's table changes while it is being
// read; on a busy node that can happen a few times in a row, but not forever.
const maxDumpAttempts = 5

// retryDump runs a netlink dump until it completes without
// netlink.ErrDumpInterrupted. vishvananda/netlink returns possibly partial
// results together with that error, and acting on a partial route or link
// list (for example deleting "stale" routes) would be wrong, so the partial
// result is never returned with a nil error.
func retryDump[T any](what string, dump func() (T, error)) (T, error) {
	var (
		res T
		err error
	)
	for range maxDumpAttempts {
		res, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	var zero T
	return zero, fmt.Errorf("list %s: dump interrupted %d times: %w", what, maxDumpAttempts, err)
}
