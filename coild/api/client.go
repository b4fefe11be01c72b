package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// DefaultTimeout bounds each request of a Client unless WithTimeout says
// otherwise. kubelet gives a CNI call minutes, but a coild that has not
// answered in 30s is stuck, and failing lets kubelet retry.
const DefaultTimeout = 30 * time.Second

// maxResponseBytes bounds how much of a response the client reads.
const maxResponseBytes = 1 << 20

// ErrInvalidEndpoint is returned by NewClient for an endpoint it cannot use.
var ErrInvalidEndpoint = errors.New("invalid coild endpoint")

// Client talks to coild over TCP or a unix socket. It is safe for
// concurrent use.
type Client struct {
	// base is the endpoint as a URL, for messages: http://coild for a
	// socket.
	base string
	// prefix is the path the endpoint URL gave, put before every path.
	prefix  string
	tr      *transport
	timeout time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout sets the time limit of each request; 0 means no limit beyond
// the caller's context.
func WithTimeout(d time.Duration) Option {
	return func(c *Client) { c.timeout = d }
}

// dialTimeout bounds connecting to coild.
const dialTimeout = 5 * time.Second

// NewClient returns a client for endpoint, which is an http:// URL such as
// "http://127.0.0.1:9383", or a unix socket as "unix:///run/coild.sock" or
// a plain absolute path. coild serves no TLS: https:// is refused.
func NewClient(endpoint string, opts ...Option) (*Client, error) {
	c := &Client{timeout: DefaultTimeout}
	for _, o := range opts {
		o(c)
	}

	socket := ""
	switch {
	case strings.HasPrefix(endpoint, "/"):
		socket = endpoint
	case strings.HasPrefix(endpoint, "unix://"):
		u, err := url.Parse(endpoint)
		if err != nil {
			return nil, fmt.Errorf("%w %q: %w", ErrInvalidEndpoint, endpoint, err)
		}
		socket = u.Path
		if u.Host != "" || socket == "" {
			return nil, fmt.Errorf("%w %q: want unix:///absolute/path", ErrInvalidEndpoint, endpoint)
		}
	default:
		u, err := url.Parse(endpoint)
		if err != nil {
			return nil, fmt.Errorf("%w %q: %w", ErrInvalidEndpoint, endpoint, err)
		}
		if u.Scheme != "http" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("%w %q: want http://host:port or unix:///path", ErrInvalidEndpoint, endpoint)
		}
		addr := u.Host
		if u.Port() == "" {
			addr = net.JoinHostPort(u.Hostname(), "80")
		}
		c.base = strings.TrimSuffix(endpoint, "/")
		c.prefix = strings.TrimSuffix(u.EscapedPath(), "/")
		c.tr = &transport{network: "tcp", addr: addr, host: u.Host, dialTimeout: dialTimeout}
		return c, nil
	}

	// The host part is ignored when dialling a socket; "coild" makes logs
	// and errors readable.
	c.base = "http://coild"
	c.tr = &transport{network: "unix", addr: socket, host: "coild", dialTimeout: dialTimeout}
	return c, nil
}

// Allocate asks for the addresses of a pod interface.
func (c *Client) Allocate(ctx context.Context, req AllocRequest) (AllocResponse, error) {
	var resp AllocResponse
	err := c.do(ctx, "POST", PathIP, req, &resp)
	return resp, err
}

// Get returns the addresses allocated to attachment att of a pod; an error
// matching ErrNotFound when there are none.
func (c *Client) Get(ctx context.Context, namespace, pod string, att Attachment) (AllocResponse, error) {
	var resp AllocResponse
	err := c.do(ctx, "GET", ipPathQuery(namespace, pod, att), nil, &resp)
	return resp, err
}

// Release frees the addresses of attachment att of a pod. coild answers
// success when there is nothing to free.
func (c *Client) Release(ctx context.Context, namespace, pod string, att Attachment) error {
	_, err := c.ReleaseLinks(ctx, namespace, pod, att)
	return err
}

// ReleaseLinks is Release, returning coild's answer: whether coild
// deletes the pod's links itself.
func (c *Client) ReleaseLinks(ctx context.Context, namespace, pod string, att Attachment) (ReleaseResponse, error) {
	var resp ReleaseResponse
	err := c.do(ctx, "DELETE", ipPathQuery(namespace, pod, att), nil, &resp)
	return resp, err
}

// Status returns what coild holds on its node.
func (c *Client) Status(ctx context.Context) (StatusResponse, error) {
	var resp StatusResponse
	err := c.do(ctx, "GET", PathStatus, nil, &resp)
	return resp, err
}

// Ready returns nil when coild is ready to serve allocations, an error
// matching ErrUnavailable when it says it is not, and one wrapping
// ErrUnreachable when it does not answer.
func (c *Client) Ready(ctx context.Context) error {
	return c.do(ctx, "GET", PathReady, nil, nil)
}

// SetupEgress asks coild to set up the egress tunnels of a pod whose
// interface is configured.
func (c *Client) SetupEgress(ctx context.Context, req EgressRequest) (EgressResponse, error) {
	var resp EgressResponse
	err := c.do(ctx, "POST", PathEgress, req, &resp)
	return resp, err
}

// GC releases the addresses on this node that belong to none of the valid
// attachments.
func (c *Client) GC(ctx context.Context, req GCRequest) (GCResponse, error) {
	var resp GCResponse
	err := c.do(ctx, "POST", PathGC, req, &resp)
	return resp, err
}

func ipPathQuery(namespace, pod string, att Attachment) string {
	att = att.Normalized()
	q := url.Values{QueryInterface: {att.Interface}}
	return IPPath(namespace, pod, att.ContainerID) + "?" + q.Encode()
}

// do sends one request and decodes a 2xx response into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("encode %s %s request: %w", method, path, err)
		}
	}
	status, data, err := c.tr.roundTrip(ctx, method, c.prefix+path, body)
	if err != nil {
		return fmt.Errorf("%w: %s %s: %w", ErrUnreachable, method, path, err)
	}
	if status < 200 || status > 299 {
		return decodeError(status, data)
	}
	if out == nil || len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode answer to %s %s: %w", method, path, err)
	}
	return nil
}

// decodeError turns an error response into an *APIError, tolerating bodies
// that are not an ErrorResponse.
func decodeError(status int, data []byte) *APIError {
	e := &APIError{Status: status}
	var er ErrorResponse
	if json.Unmarshal(data, &er) == nil && (er.Error != "" || er.Reason != "") {
		e.Reason, e.Message = er.Reason, er.Error
	} else {
		e.Message = strings.TrimSpace(string(data))
	}
	if e.Reason == "" {
		e.Reason = reasonForStatus(status)
	}
	if e.Message == "" {
		e.Message = fmt.Sprintf("HTTP status %d", status)
	}
	return e
}
