package api

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// scripted serves raw answers: each accepted connection reads requests
// and gives answer(n) for the n-th request over all connections, then
// closes the connection if close(n). It counts connections.
type scripted struct {
	ln    net.Listener
	conns atomic.Int32
	reqs  atomic.Int32
}

func serveScript(t *testing.T, answer func(n int) (raw string, closeAfter bool)) *scripted {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scripted{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					req, err := http.ReadRequest(r)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					raw, closeAfter := answer(int(s.reqs.Add(1)))
					if _, err := io.WriteString(c, raw); err != nil || closeAfter {
						return
					}
				}
			}()
		}
	}()
	return s
}

func (s *scripted) client(t *testing.T, opts ...Option) *Client {
	t.Helper()
	c, err := NewClient("http://"+s.ln.Addr().String(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const okAnswer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"status\":200}\n"

// TestTransportAnswers: the answers net/http's server gives (a length, or
// chunks, or the end of the connection) all reach the caller whole.
func TestTransportAnswers(t *testing.T) {
	tests := []struct {
		name   string
		raw    string
		status int
	}{
		{"content length", okAnswer, 200},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"sta\r\na;ext=1\r\ntus\":200}\n\r\n0\r\nTrailer: x\r\n\r\n", 200},
		{"until the end", "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"status\":200}\n", 200},
		{"lower-case names, LF only", "HTTP/1.1 200 OK\ncontent-length: 15\n\n{\"status\":200}\n", 200},
		{"no content", "HTTP/1.1 204 No Content\r\n\r\n", 204},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := serveScript(t, func(int) (string, bool) { return tt.raw, strings.Contains(tt.raw, "close") })
			c := s.client(t)
			for range 3 {
				status, data, err := c.tr.roundTrip(context.Background(), "GET", "/readyz", nil)
				if err != nil || status != tt.status {
					t.Fatalf("roundTrip = %d %q, %v", status, data, err)
				}
				if tt.status == 200 && string(data) != "{\"status\":200}\n" {
					t.Errorf("body %q", data)
				}
			}
		})
	}
}

// TestTransportMalformed: an answer that is not HTTP, too big, or cut
// short is an error, never a success.
func TestTransportMalformed(t *testing.T) {
	tests := []struct{ name, raw string }{
		{"not HTTP", "SSH-2.0-OpenSSH\r\n\r\n"},
		{"no status", "HTTP/1.1 OK\r\n\r\n"},
		{"informational", "HTTP/1.1 100 Continue\r\n\r\n"},
		{"bad length", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"},
		{"too big", "HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n"},
		{"cut short", "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"status\""},
		{"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"},
		{"cut chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"},
		{"gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"},
		{"header without colon", "HTTP/1.1 200 OK\r\nbroken\r\n\r\n"},
		{"endless header", "HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", 5000) + "\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := serveScript(t, func(int) (string, bool) { return tt.raw, true })
			c := s.client(t)
			err := c.Ready(context.Background())
			if !errors.Is(err, ErrUnreachable) {
				t.Errorf("Ready = %v, want ErrUnreachable", err)
			}
		})
	}
}

// TestTransportStaleConnection: a kept connection coild closed meanwhile
// is replaced once, so the request succeeds; a new connection that breaks
// is not tried again.
func TestTransportStaleConnection(t *testing.T) {
	// Every connection serves one request, then closes: the second
	// request finds its kept connection closed.
	s := serveScript(t, func(int) (string, bool) { return okAnswer, true })
	c := s.client(t)
	for i := range 3 {
		if err := c.Ready(context.Background()); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if n := s.conns.Load(); n != 3 {
		t.Errorf("%d connections for 3 requests, want 3", n)
	}

	// A server that takes the request and closes without a word.
	mute := serveScript(t, func(int) (string, bool) { return "", true })
	c = mute.client(t)
	if err := c.Ready(context.Background()); !errors.Is(err, ErrUnreachable) {
		t.Errorf("Ready = %v, want ErrUnreachable", err)
	}
	if n := mute.reqs.Load(); n != 1 {
		t.Errorf("a request on a new connection was sent %d times, want once", n)
	}
}

// TestTransportKeepsConnections: sequential requests share one connection.
func TestTransportKeepsConnections(t *testing.T) {
	s := serveScript(t, func(int) (string, bool) { return okAnswer, false })
	c := s.client(t)
	for range 5 {
		if err := c.Ready(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.conns.Load(); n != 1 {
		t.Errorf("%d connections for 5 sequential requests, want 1", n)
	}
}

// TestTransportCancel: cancelling the caller's context ends a request
// coild does not answer, at once.
func TestTransportCancel(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL, WithTimeout(0))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	err = c.Ready(ctx)
	if !errors.Is(err, ErrUnreachable) || !errors.Is(err, context.Canceled) {
		t.Errorf("Ready = %v, want ErrUnreachable and context.Canceled", err)
	}
}

// TestTransportLargeAnswer: net/http's server sends an answer of unknown
// length in chunks; the client reads it whole.
func TestTransportLargeAnswer(t *testing.T) {
	pods := map[string]string{}
	for i := range 3000 {
		pods[strings.Repeat("c", 40)+string(rune('a'+i%26))+strings.Repeat("x", i%7)+"-"+strconv.Itoa(i)] = "10.1.0.5"
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":200,"address-blocks":{},"pods":{`))
		first := true
		for k, v := range pods {
			if !first {
				w.Write([]byte(","))
			}
			first = false
			w.Write([]byte(`"` + k + `":"` + v + `"`))
		}
		w.Write([]byte("}}\n"))
	}))
	defer srv.Close()
	c, err := NewClient(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(context.Background())
	if err != nil || len(st.Pods) != len(pods) {
		t.Errorf("Status: %d pods, %v; want %d", len(st.Pods), err, len(pods))
	}
}
