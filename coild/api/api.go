// Package api is the REST protocol between the Coil CNI plugin and coild:
// its types, paths, error reasons and a client. It knows nothing of etcd or
// netlink, so that both sides can import it; the endpoints are described in
// docs/rest-api.md.
package api

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Defaults shared by coild and its clients.
const (
	// DefaultEndpoint is coild's unix socket unless configured otherwise:
	// the only listener that serves allocations (the TCP one is read-only).
	DefaultEndpoint = "unix:///run/coild.sock"
	// DefaultInterface is the pod interface when a request names none.
	DefaultInterface = "eth0"
	// MaxRequestBytes is the largest request body coild accepts; requests
	// are small, so anything bigger is a mistake or an attack.
	MaxRequestBytes = 64 << 10
	// EgressAnnotationPrefix starts the keys of the pod annotations that
	// opt a pod into egresses (egress.coil.cybozu.com/<namespace>).
	EgressAnnotationPrefix = "egress.coil.cybozu.com/"
	// PodAnnotationsCapability is the CNI capability under which
	// containerd passes a pod's annotations to plugins that declare it.
	PodAnnotationsCapability = "io.kubernetes.cri.pod-annotations"
)

// Paths of the endpoints.
const (
	PathIP     = "/ip"
	PathStatus = "/status"
	PathReady  = "/readyz"
	PathGC     = "/gc"
	PathEgress = "/egress"
)

// QueryInterface is the query parameter naming the pod interface in GET and
// DELETE /ip/... requests.
const QueryInterface = "interface"

// Reasons carried by ErrorResponse.Reason, for callers to branch on.
const (
	ReasonBadRequest    = "bad-request"
	ReasonNotFound      = "not-found"
	ReasonPoolExhausted = "pool-exhausted"
	// ReasonUnavailable means etcd is unreachable or coild is not ready
	// yet: the request may succeed if repeated later.
	ReasonUnavailable = "unavailable"
	ReasonInternal    = "internal"
	// ReasonForbidden: the request reached a listener that does not serve
	// it (the loopback TCP listener is read-only; use the unix socket).
	ReasonForbidden = "forbidden"
)

// Attachment names one interface of a container: the key under which coild
// holds an allocation, in the API, the allocator and the plugin alike. The
// JSON names are those of CNI's GC valid attachments.
type Attachment struct {
	ContainerID string `json:"containerID"`
	// Interface is the interface name inside the container; empty means
	// DefaultInterface (see Normalized).
	Interface string `json:"ifname"`
}

// Normalized returns a with DefaultInterface for an empty Interface, the
// form coild keys its allocations by.
func (a Attachment) Normalized() Attachment {
	if a.Interface == "" {
		a.Interface = DefaultInterface
	}
	return a
}

// AllocRequest asks coild for the addresses of one pod interface. A repeated
// request for the same container id and interface returns the same
// addresses.
type AllocRequest struct {
	PodNamespace string `json:"pod-namespace"`
	PodName      string `json:"pod-name"`
	ContainerID  string `json:"container-id"`
	// Interface is the pod interface; empty means DefaultInterface.
	Interface string `json:"interface,omitempty"`
	// NetNS is the path of the pod's network namespace, if known.
	NetNS string `json:"netns,omitempty"`
	// PodUID is the pod's UID (K8S_POD_UID in CNI_ARGS), if the runtime
	// passed it.
	PodUID string `json:"pod-uid,omitempty"`
	// Network is the name of the CNI network configuration the interface
	// belongs to; a GC of that network may free the address, a GC of
	// another network never does. Empty (v1 clients) means unknown: no GC
	// frees the address.
	Network string `json:"network,omitempty"`
	// EgressAnnotations are the pod's annotations whose keys start with
	// EgressAnnotationPrefix, out of those the container runtime passed
	// (PodAnnotationsCapability). nil means the runtime passed none: coild
	// cannot tell. Non-nil, even empty, lets coild judge a pod its cache
	// does not hold yet without asking the API server.
	EgressAnnotations map[string]string `json:"egress-annotations,omitzero"`
}

// Attachment returns the (normalized) attachment the request is for.
func (r AllocRequest) Attachment() Attachment {
	return Attachment{ContainerID: r.ContainerID, Interface: r.Interface}.Normalized()
}

// Validate reports a request coild must refuse.
func (r AllocRequest) Validate() error {
	if err := validatePod(r.PodNamespace, r.PodName, r.ContainerID); err != nil {
		return err
	}
	if r.Network != "" {
		if err := ValidateNetwork(r.Network); err != nil {
			return err
		}
	}
	return validateEgressAnnotations(r.EgressAnnotations)
}

// EgressAnnotations returns, out of a pod's annotations as the runtime
// passed them, those AllocRequest.EgressAnnotations carries: non-nil
// (possibly empty) when all is, nil when all is nil.
func EgressAnnotations(all map[string]string) map[string]string {
	if all == nil {
		return nil
	}
	out := map[string]string{}
	for k, v := range all {
		if isEgressAnnotation(k) {
			out[k] = v
		}
	}
	return out
}

func isEgressAnnotation(key string) bool {
	return strings.HasPrefix(key, EgressAnnotationPrefix) && len(key) > len(EgressAnnotationPrefix)
}

// validateEgressAnnotations refuses annotations other than egress ones:
// a client that sends them has not filtered what the runtime passed.
func validateEgressAnnotations(a map[string]string) error {
	for k := range a {
		if !isEgressAnnotation(k) {
			return fmt.Errorf("egress-annotations: key %q is not %s<namespace>", k, EgressAnnotationPrefix)
		}
	}
	return nil
}

// EgressRequest asks coild to set up the egress tunnels of a pod interface
// that holds an allocation. Its fields are those of AllocRequest, so a
// client may send the body of its allocation.
type EgressRequest struct {
	PodNamespace string `json:"pod-namespace"`
	PodName      string `json:"pod-name"`
	ContainerID  string `json:"container-id"`
	// Interface is the pod interface; empty means DefaultInterface.
	Interface string `json:"interface,omitempty"`
	// NetNS is the path of the pod's network namespace; empty means the
	// one recorded at allocation.
	NetNS string `json:"netns,omitempty"`
	// PodUID is accepted, as in AllocRequest, and ignored.
	PodUID string `json:"pod-uid,omitempty"`
	// Network and EgressAnnotations are accepted, as in AllocRequest, and
	// ignored: POST /egress reads the pod from coild's cache or the API.
	Network           string            `json:"network,omitempty"`
	EgressAnnotations map[string]string `json:"egress-annotations,omitzero"`
}

// Attachment returns the (normalized) attachment the request is for.
func (r EgressRequest) Attachment() Attachment {
	return Attachment{ContainerID: r.ContainerID, Interface: r.Interface}.Normalized()
}

// Validate reports a request coild must refuse.
func (r EgressRequest) Validate() error {
	return validatePod(r.PodNamespace, r.PodName, r.ContainerID)
}

func validatePod(namespace, pod, containerID string) error {
	var missing []string
	if namespace == "" {
		missing = append(missing, "pod-namespace")
	}
	if pod == "" {
		missing = append(missing, "pod-name")
	}
	if containerID == "" {
		missing = append(missing, "container-id")
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s", strings.Join(missing, ", "))
	}
	return nil
}

// AllocResponse carries the addresses of a pod interface.
type AllocResponse struct {
	Status int `json:"status"`
	// Address is the first of Addresses, for v1 clients.
	Address string `json:"address"`
	// Addresses are plain IPs ("10.1.0.5", "fd00::5"), IPv4 first.
	Addresses []string `json:"addresses"`
	// SkipEgress is set when coild knows, as it allocates, that POST
	// /egress would set nothing up for this pod (no egress exists, or the
	// pod, which coild's cache holds, is no egress client or gateway), so
	// the plugin can spare the round trip. Absent (an older coild, or a
	// pod coild cannot judge yet) means the plugin must ask.
	SkipEgress bool `json:"skip-egress,omitempty"`
}

// ErrorResponse is the body of every failed request.
type ErrorResponse struct {
	Status int    `json:"status"`
	Error  string `json:"error"`
	Reason string `json:"reason,omitempty"`
}

// StatusResponse describes what coild holds on its node.
type StatusResponse struct {
	Status int `json:"status"`
	// AddressBlocks maps pool names to the blocks this node owns.
	AddressBlocks map[string][]string `json:"address-blocks"`
	// Pods maps container ids ("<container-id>/<interface>" for
	// interfaces other than DefaultInterface) to their addresses, joined
	// by commas.
	Pods map[string]string `json:"pods"`
}

// GCRequest carries the CNI GC valid attachments of one network: coild
// releases every address on its node allocated for that network that
// belongs to none of them. Addresses of other networks, and addresses of
// unknown network, are left alone: a runtime lists only the attachments
// of the network it collects.
type GCRequest struct {
	// Network is the name of the CNI network configuration being
	// collected; required.
	Network          string       `json:"network"`
	ValidAttachments []Attachment `json:"valid-attachments"`
}

// Validate reports a request coild must refuse.
func (r GCRequest) Validate() error {
	if r.Network == "" {
		return errors.New("missing network: a GC must name the CNI network it collects, or it would free other networks' addresses")
	}
	return ValidateNetwork(r.Network)
}

// maxNetworkName bounds a CNI network name; names are short identifiers.
const maxNetworkName = 253

// ValidateNetwork checks a CNI network name as the CNI library does:
// letters, digits, '-', '_' and '.', starting with a letter or digit.
func ValidateNetwork(name string) error {
	if name == "" || len(name) > maxNetworkName {
		return fmt.Errorf("network name %q must be 1-%d characters", name, maxNetworkName)
	}
	for i, c := range name {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '-' || c == '_' || c == '.')
		if !ok {
			return fmt.Errorf("network name %q: invalid character %q at %d", name, c, i)
		}
	}
	return nil
}

// ReleaseResponse answers DELETE /ip/...: RemovesLinks is set when coild
// released an address and deletes the pod's links itself, after
// answering; otherwise the caller removes them (nothing was held, or an
// older coild).
type ReleaseResponse struct {
	Status       int  `json:"status"`
	RemovesLinks bool `json:"removesLinks,omitempty"`
}

// GCResponse says how many addresses a GC released.
type GCResponse struct {
	Status   int `json:"status"`
	Released int `json:"released"`
}

// EgressResponse says how coild set up the egress tunnels of a pod during
// its CNI ADD (POST /egress).
type EgressResponse struct {
	Status int `json:"status"`
	// Client lists the egresses the pod is a client of.
	Client []EgressRoute `json:"client,omitempty"`
	// Gateway is the egress ("namespace/name") the pod is a gateway of.
	Gateway string `json:"gateway,omitempty"`
	// Missing lists egresses the pod is annotated for that do not exist;
	// its traffic to them takes the normal path.
	Missing []string `json:"missing,omitempty"`
}

// EgressRoute is one egress of a client pod and the gateway it goes
// through now.
type EgressRoute struct {
	// Egress is "namespace/name".
	Egress string `json:"egress"`
	// GatewayPod is the gateway pod ("namespace/name") and Gateway its
	// address the tunnel leads to; both empty while the egress has no
	// running gateway (its destinations are then unreachable).
	GatewayPod string `json:"gateway-pod,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
}

// IPPath returns the path of one pod interface's allocation, without the
// interface query.
func IPPath(namespace, pod, containerID string) string {
	return PathIP + "/" + url.PathEscape(namespace) + "/" + url.PathEscape(pod) + "/" + url.PathEscape(containerID)
}

// ParseIPPath splits a /ip/<ns>/<pod>/<container-id> path (already
// unescaped, as http.Request.URL.Path is) into its parts.
func ParseIPPath(p string) (namespace, pod, containerID string, err error) {
	rest, ok := strings.CutPrefix(p, PathIP+"/")
	parts := strings.Split(rest, "/")
	if !ok || len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return "", "", "", fmt.Errorf("path %q is not %s/<namespace>/<pod>/<container-id>", p, PathIP)
	}
	return parts[0], parts[1], parts[2], nil
}

// APIError is a failure reported by coild.
type APIError struct {
	// Status is the HTTP status code.
	Status int
	// Reason is one of the Reason constants; derived from Status when
	// coild sent none.
	Reason string
	// Message is coild's error text.
	Message string
}

// Error says what coild answered.
func (e *APIError) Error() string {
	return fmt.Sprintf("coild answered %d (%s): %s", e.Status, e.Reason, e.Message)
}

// Is lets errors.Is(err, ErrNotFound) and the like match an APIError by
// its reason.
func (e *APIError) Is(target error) bool {
	r, ok := target.(reasonError)
	return ok && string(r) == e.Reason
}

// reasonError is the type of the reason sentinels below.
type reasonError string

// Error returns the reason with a "coild: " prefix.
func (r reasonError) Error() string { return "coild: " + string(r) }

// Sentinels matching an *APIError of the same reason with errors.Is.
var (
	ErrBadRequest    error = reasonError(ReasonBadRequest)
	ErrNotFound      error = reasonError(ReasonNotFound)
	ErrPoolExhausted error = reasonError(ReasonPoolExhausted)
	ErrUnavailable   error = reasonError(ReasonUnavailable)
	ErrInternal      error = reasonError(ReasonInternal)
	ErrForbidden     error = reasonError(ReasonForbidden)
)

// WithReason returns an error with the text of err that coild answers with
// reason (one of the Reason constants), however deeply it is wrapped. It
// matches err with errors.Is, and the sentinel of the reason as well
// (ErrUnavailable for ReasonUnavailable...). The packages behind coild's
// server mark their errors with it, so that the server need not know them.
func WithReason(err error, reason string) error {
	return &reasonedError{err: err, reason: reason}
}

// ReasonOf returns the reason that WithReason gave err or an error it wraps,
// "" if none did.
func ReasonOf(err error) string {
	var r *reasonedError
	if errors.As(err, &r) {
		return r.reason
	}
	return ""
}

// reasonedError is an error marked by WithReason.
type reasonedError struct {
	err    error
	reason string
}

func (e *reasonedError) Error() string { return e.err.Error() }
func (e *reasonedError) Unwrap() error { return e.err }

// Is matches the sentinel of the error's reason.
func (e *reasonedError) Is(target error) bool { return target == reasonError(e.reason) }

// ErrUnreachable is wrapped by client errors where no answer came from
// coild: it is not running, its socket is missing, or it timed out.
var ErrUnreachable = errors.New("coild unreachable")

// reasonForStatus guesses the reason of an error response without one, for
// example from a proxy or an older coild.
func reasonForStatus(status int) string {
	switch {
	case status == 400 || status == 413 || status == 415 || status == 422:
		return ReasonBadRequest
	case status == 404:
		return ReasonNotFound
	case status == 403:
		return ReasonForbidden
	case status == 503 || status == 429 || status == 504 || status == 502:
		return ReasonUnavailable
	default:
		return ReasonInternal
	}
}
