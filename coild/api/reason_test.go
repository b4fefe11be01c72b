package api

import (
	"errors"
	"fmt"
	"testing"
)

// An error marked with a reason keeps its text and identity, and is seen
// by its reason through any wrapping.
func TestWithReason(t *testing.T) {
	base := errors.New("state not loaded yet")
	marked := WithReason(base, ReasonUnavailable)
	wrapped := fmt.Errorf("set up pod: %w", marked)
	if wrapped.Error() != "set up pod: state not loaded yet" {
		t.Errorf("text = %q", wrapped)
	}
	if !errors.Is(wrapped, marked) || !errors.Is(wrapped, base) || !errors.Is(wrapped, ErrUnavailable) {
		t.Errorf("%v does not match its sentinel, its cause and ErrUnavailable", wrapped)
	}
	if errors.Is(wrapped, ErrNotFound) || errors.Is(wrapped, WithReason(base, ReasonUnavailable)) {
		t.Errorf("%v matches another reason or another marked error", wrapped)
	}
	if got := ReasonOf(wrapped); got != ReasonUnavailable {
		t.Errorf("ReasonOf = %q, want %q", got, ReasonUnavailable)
	}
	if got := ReasonOf(fmt.Errorf("x: %w", base)); got != "" {
		t.Errorf("ReasonOf of an unmarked error = %q", got)
	}
}
