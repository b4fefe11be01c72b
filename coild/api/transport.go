package api

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// transport sends coild's requests as HTTP/1.1 over a unix socket or TCP,
// keeping a few connections open between requests. coild's server is
// net/http's; its client needs only what coild's requests and answers
// use: no TLS, no proxies, no redirects, no compression, one request at a
// time per connection. Without net/http, the plugin, a process per CNI
// command, does not pay net/http's and crypto's initialisation on every
// pod start and stop (0.4 ms of CPU on the benchmark machine), and a
// request costs no goroutine hand-offs.
type transport struct {
	network, addr string // for net.Dialer: "unix" and a path, or "tcp" and host:port
	host          string // the Host header
	dialTimeout   time.Duration

	mu   sync.Mutex
	idle []*clientConn
}

// maxIdleConns bounds the connections kept open for later requests.
const maxIdleConns = 4

// maxHeaderLine bounds one line of an answer's head; coild's are short.
const maxHeaderLine = 4096

// clientConn is one connection to coild and its read buffer.
type clientConn struct {
	c net.Conn
	r *bufio.Reader
}

// errAnswerTooLarge ends an answer over maxResponseBytes.
var errAnswerTooLarge = fmt.Errorf("answer larger than %d bytes", maxResponseBytes)

// roundTrip sends one request and returns the status and body of the
// answer. A connection kept from an earlier request that turns out to be
// closed before any answer arrives (coild closed it while idle, or
// restarted) is replaced once by a new one: every request coild serves is
// idempotent (allocations and set-ups answer again what they did, releases
// succeed when there is nothing left), so sending it again is safe.
func (t *transport) roundTrip(ctx context.Context, method, target string, body []byte) (int, []byte, error) {
	for attempt := 0; ; attempt++ {
		cc, reused, err := t.conn(ctx)
		if err != nil {
			return 0, nil, err
		}
		status, data, keep, answered, err := t.exchange(ctx, cc, method, target, body)
		if err == nil {
			if keep {
				t.release(cc)
			} else {
				cc.c.Close()
			}
			return status, data, nil
		}
		cc.c.Close()
		if reused && !answered && attempt == 0 && ctx.Err() == nil {
			continue
		}
		return 0, nil, err
	}
}

// conn returns an idle connection, or dials a new one.
func (t *transport) conn(ctx context.Context) (cc *clientConn, reused bool, err error) {
	t.mu.Lock()
	if n := len(t.idle); n > 0 {
		cc = t.idle[n-1]
		t.idle[n-1] = nil
		t.idle = t.idle[:n-1]
		t.mu.Unlock()
		return cc, true, nil
	}
	t.mu.Unlock()
	d := net.Dialer{Timeout: t.dialTimeout}
	c, err := d.DialContext(ctx, t.network, t.addr)
	if err != nil {
		return nil, false, err
	}
	return &clientConn{c: c, r: bufio.NewReaderSize(c, maxHeaderLine)}, false, nil
}

// release keeps cc for a later request, or closes it when enough are kept.
func (t *transport) release(cc *clientConn) {
	t.mu.Lock()
	if len(t.idle) < maxIdleConns {
		t.idle = append(t.idle, cc)
		cc = nil
	}
	t.mu.Unlock()
	if cc != nil {
		cc.c.Close()
	}
}

// exchange writes the request on cc and reads the answer. keep reports
// whether cc may serve another request; answered whether any byte of an
// answer came.
func (t *transport) exchange(ctx context.Context, cc *clientConn, method, target string, body []byte) (status int, data []byte, keep, answered bool, err error) {
	deadline, _ := ctx.Deadline() // zero: none
	if err := cc.c.SetDeadline(deadline); err != nil {
		return 0, nil, false, false, err
	}
	// Cancelling ctx interrupts a blocked read or write at once.
	stop := context.AfterFunc(ctx, func() { cc.c.SetDeadline(time.Unix(1, 0)) })
	defer func() {
		if !stop() {
			// The interruption ran, or runs now: the connection's
			// deadline is not this request's to reset for the next.
			keep = false
		}
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
	}()

	var req bytes.Buffer
	req.Grow(256 + len(body))
	req.WriteString(method)
	req.WriteByte(' ')
	req.WriteString(target)
	req.WriteString(" HTTP/1.1\r\nHost: ")
	req.WriteString(t.host)
	req.WriteString("\r\nAccept: application/json\r\n")
	if body != nil || method == "POST" {
		req.WriteString("Content-Type: application/json\r\nContent-Length: ")
		req.WriteString(strconv.Itoa(len(body)))
		req.WriteString("\r\n")
	}
	req.WriteString("\r\n")
	req.Write(body)
	if _, err := cc.c.Write(req.Bytes()); err != nil {
		return 0, nil, false, false, err
	}

	line, err := readLine(cc.r)
	if err != nil {
		return 0, nil, false, len(line) > 0, err
	}
	status, err = parseStatusLine(line)
	if err != nil {
		return 0, nil, false, true, err
	}
	length, chunked, keep := int64(-1), false, true
	for {
		line, err := readLine(cc.r)
		if err != nil {
			return 0, nil, false, true, err
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, nil, false, true, fmt.Errorf("malformed header line %q", line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case asciiEqualFold(name, "Content-Length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 {
				return 0, nil, false, true, fmt.Errorf("malformed Content-Length %q", value)
			}
			length = n
		case asciiEqualFold(name, "Transfer-Encoding"):
			if !asciiEqualFold(value, "chunked") {
				return 0, nil, false, true, fmt.Errorf("unsupported Transfer-Encoding %q", value)
			}
			chunked = true
		case asciiEqualFold(name, "Connection"):
			if asciiEqualFold(value, "close") {
				keep = false
			}
		}
	}
	switch {
	case method == "HEAD" || status == 204 || status == 304:
		return status, nil, keep, true, nil
	case chunked:
		data, err = readChunked(cc.r)
	case length >= 0:
		if length > maxResponseBytes {
			return 0, nil, false, true, errAnswerTooLarge
		}
		data = make([]byte, length)
		_, err = io.ReadFull(cc.r, data)
	default:
		// No length: the answer ends with the connection.
		data, err = io.ReadAll(io.LimitReader(cc.r, maxResponseBytes+1))
		if err == nil && len(data) > maxResponseBytes {
			err = errAnswerTooLarge
		}
		keep = false
	}
	if err != nil {
		return 0, nil, false, true, err
	}
	return status, data, keep, true, nil
}

// readLine reads one CRLF- (or LF-) terminated line, without its end.
func readLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return line, fmt.Errorf("answer line longer than %d bytes", maxHeaderLine)
	}
	if err != nil {
		if errors.Is(err, io.EOF) && len(line) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return line, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// parseStatusLine returns the status code of "HTTP/1.x NNN reason".
func parseStatusLine(line []byte) (int, error) {
	proto, rest, ok := bytes.Cut(line, []byte(" "))
	if !ok || !bytes.HasPrefix(proto, []byte("HTTP/1.")) || len(rest) < 3 {
		return 0, fmt.Errorf("malformed status line %q", line)
	}
	code, err := strconv.Atoi(string(rest[:3]))
	if err != nil || code < 100 || code > 999 || len(rest) > 3 && rest[3] != ' ' {
		return 0, fmt.Errorf("malformed status line %q", line)
	}
	if code < 200 {
		// coild sends no informational answers (nothing asks for one).
		return 0, fmt.Errorf("unexpected informational status %d", code)
	}
	return code, nil
}

// readChunked reads a chunked body, up to maxResponseBytes.
func readChunked(r *bufio.Reader) ([]byte, error) {
	var out []byte
	for {
		line, err := readLine(r)
		if err != nil {
			return nil, noEOF(err)
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i] // chunk extensions
		}
		n, err := strconv.ParseUint(string(bytes.TrimSpace(line)), 16, 32)
		if err != nil {
			return nil, fmt.Errorf("malformed chunk size %q", line)
		}
		if n == 0 {
			// Trailers, then the blank line.
			for {
				line, err := readLine(r)
				if err != nil {
					return nil, noEOF(err)
				}
				if len(line) == 0 {
					return out, nil
				}
			}
		}
		if uint64(len(out))+n > maxResponseBytes {
			return nil, errAnswerTooLarge
		}
		start := len(out)
		out = append(out, make([]byte, n)...)
		if _, err := io.ReadFull(r, out[start:]); err != nil {
			return nil, noEOF(err)
		}
		if line, err := readLine(r); err != nil || len(line) != 0 {
			return nil, errors.Join(errors.New("malformed chunk end"), noEOF(err))
		}
	}
}

// noEOF turns an end of stream inside an answer into an unexpected one.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// asciiEqualFold compares a header name or value with s, ignoring ASCII
// case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
