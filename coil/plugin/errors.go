package plugin

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/coil-project/coil/coild/api"
)

// ErrCodePoolExhausted is the plugin-specific CNI error code for an address
// pool without free addresses. Codes from 100 up are the plugin's own.
const ErrCodePoolExhausted uint = 100

// coildError turns an error from the coild client into a CNI error. what
// says what the plugin was doing, for the message.
func coildError(what string, err error) *types.Error {
	var apiErr *api.APIError
	detail := err.Error()
	if errors.As(err, &apiErr) {
		detail = apiErr.Message
	}
	switch {
	case errors.Is(err, api.ErrUnreachable):
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("coil: %s: coild is unreachable, try again later", what), err.Error())
	case errors.Is(err, api.ErrUnavailable):
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("coil: %s: try again later: %s", what, detail), "")
	case errors.Is(err, api.ErrPoolExhausted):
		return types.NewError(ErrCodePoolExhausted,
			fmt.Sprintf("pool exhausted: %s: %s", what, detail), "")
	case errors.Is(err, api.ErrForbidden):
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("coil: %s: the \"coild\" endpoint refuses it (its TCP listener is read-only; set \"coild\" to coild's unix socket, e.g. \"unix:///run/coild.sock\"): %s", what, detail), "")
	case errors.Is(err, api.ErrBadRequest):
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("coil: %s: coild refused the request: %s", what, detail), "")
	default:
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("coil: %s: %s", what, detail), err.Error())
	}
}

// internalError reports a failure that is neither coild's nor the
// configuration's, such as a netlink error.
func internalError(what string, err error) *types.Error {
	return types.NewError(types.ErrInternal, fmt.Sprintf("coil: %s: %v", what, err), "")
}
