package nodenet

import (
	"errors"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestRetryDump(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name       string
		interrupts int
		finalErr   error
		wantCalls  int
		wantErr    error
		wantResult int
	}{
		{"first try", 0, nil, 1, nil, 42},
		{"retried", 2, nil, 3, nil, 42},
		{"other error not retried", 0, boom, 1, boom, 0},
		{"gives up", 100, nil, maxDumpAttempts, netlink.ErrDumpInterrupted, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			got, err := retryDump("things", func() (int, error) {
				calls++
				if calls <= tt.interrupts {
					return 1, netlink.ErrDumpInterrupted
				}
				if tt.finalErr != nil {
					return 0, tt.finalErr
				}
				return 42, nil
			})
			if calls != tt.wantCalls {
				t.Errorf("calls = %d, want %d", calls, tt.wantCalls)
			}
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if got != tt.wantResult {
				t.Errorf("result = %d, want %d", got, tt.wantResult)
			}
		})
	}
}
