package testenv

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TCPProxy forwards TCP connections to a target. Tests put it between a
// client and a server (coild and etcd) to cut the path without stopping
// the server, which the other tests of the binary may share.
type TCPProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
	// drop discards what the target sends back while it is set, so a
	// request reaches the server and takes effect but its answer never
	// arrives (a commit whose outcome the client cannot know).
	drop atomic.Bool
}

// NewTCPProxy starts a proxy to target (host:port) on loopback, stopped
// when t ends.
func NewTCPProxy(t testing.TB, target string) *TCPProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &TCPProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		ln.Close()
		p.SetCut(true)
		p.wg.Wait()
	})
	return p
}

// URL is the proxy's address as an http:// endpoint (an etcd client URL).
func (p *TCPProxy) URL() string { return "http://" + p.ln.Addr().String() }

func (p *TCPProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		pipe := func(dst io.WriteCloser, src net.Conn) {
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		p.wg.Go(func() { pipe(up, c) })
		p.wg.Go(func() { pipe(&dropWriter{w: c, drop: &p.drop}, up) })
	}
}

// SetCut cuts (true) or restores (false) the path to the target. Cutting
// closes the open connections and refuses new ones at once, as a peer that
// is gone would, rather than letting them hang.
func (p *TCPProxy) SetCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// SetDropResponses makes the proxy swallow (true) or pass (false) the bytes
// the target sends on every connection, while still forwarding what the
// clients send. A test sets it, lets a request through, and then cuts the
// connection (SetCut) so the client fails without having seen the answer.
func (p *TCPProxy) SetDropResponses(drop bool) { p.drop.Store(drop) }

// dropWriter forwards writes to w unless drop is set, in which case it
// pretends to have written them.
type dropWriter struct {
	w    net.Conn
	drop *atomic.Bool
}

func (d *dropWriter) Write(b []byte) (int, error) {
	if d.drop.Load() {
		return len(b), nil
	}
	return d.w.Write(b)
}

func (d *dropWriter) Close() error { return d.w.Close() }
