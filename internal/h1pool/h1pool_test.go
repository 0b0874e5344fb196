package h1pool_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/h1pool"
)

// margin is how late past a deadline a bounded call may return on a busy
// machine and still count as bounded.
const margin = 750 * time.Millisecond

// httpServer is a net/http server on loopback that counts the
// connections it accepted and closed.
type httpServer struct {
	*httptest.Server
	accepted atomic.Int64
	closed   atomic.Int64
}

// newHTTPServer starts h on loopback; configure, if not nil, adjusts the
// server before it starts.
func newHTTPServer(t *testing.T, h http.Handler, configure func(*http.Server)) *httpServer {
	t.Helper()
	s := &httpServer{Server: httptest.NewUnstartedServer(h)}
	s.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		switch state {
		case http.StateNew:
			s.accepted.Add(1)
		case http.StateClosed, http.StateHijacked:
			s.closed.Add(1)
		}
	}
	if configure != nil {
		configure(s.Config)
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

// addr is the server's host:port.
func (s *httpServer) addr() string { return s.Listener.Addr().String() }

// rawServer is a TCP server on loopback that answers HTTP/1.1 by hand, so
// that it can misbehave in ways net/http will not: answer reads one
// request from a connection, writes whatever it likes, and reports
// whether to read another request from the same connection.
type rawServer struct {
	ln       net.Listener
	accepted atomic.Int64
	stop     chan struct{} // closed when the test ends
	received chan string   // the path of every request read

	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

// newRawServer starts a raw server; answer runs on the connection's
// goroutine and should return when stop is closed.
func newRawServer(t *testing.T, answer func(s *rawServer, w *bufio.Writer, req *http.Request) bool) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln, stop: make(chan struct{}), received: make(chan string, 1000)}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				br, bw := bufio.NewReader(c), bufio.NewWriter(c)
				for {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, req.Body)
					s.received <- req.URL.Path
					if !answer(s, bw, req) || bw.Flush() != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		close(s.stop)
		_ = ln.Close()
		s.mu.Lock()
		for _, c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// addr is the server's host:port.
func (s *rawServer) addr() string { return s.ln.Addr().String() }

// waitReceived waits until the server has read a request, and returns its
// path.
func (s *rawServer) waitReceived(t *testing.T) string {
	t.Helper()
	select {
	case path := <-s.received:
		return path
	case <-time.After(10 * time.Second):
		t.Fatal("the server never received the request")
		return ""
	}
}

// writeOK writes a complete 200 response with body.
func writeOK(w *bufio.Writer, body string) {
	fmt.Fprintf(w, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// newPool returns a pool to addr that is closed when the test ends.
func newPool(t *testing.T, addr string, opts h1pool.Options) *h1pool.Pool {
	t.Helper()
	p := h1pool.New(addr, opts)
	t.Cleanup(p.Close)
	return p
}

// newRequest builds a request to path on p's server; a non-empty body
// makes it a POST.
func newRequest(t *testing.T, ctx context.Context, p *h1pool.Pool, method, path, body string) *http.Request {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+p.Addr()+path, r)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// roundTrip sends a request and reads its response to the end, bounded by
// a generous deadline so that a broken pool fails instead of hanging.
func roundTrip(t *testing.T, p *h1pool.Pool, method, path, body string) (*http.Response, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := p.RoundTrip(newRequest(t, ctx, p, method, path, body))
	if err != nil {
		return nil, "", err
	}
	data, err := io.ReadAll(res.Body)
	if cerr := res.Body.Close(); err == nil {
		err = cerr
	}
	return res, string(data), err
}

// mustGet sends a GET to path and returns the response's body, failing t
// on any error.
func mustGet(t *testing.T, p *h1pool.Pool, path string) string {
	t.Helper()
	_, body, err := roundTrip(t, p, http.MethodGet, path, "")
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return body
}

// waitFor polls cond until it holds, failing t after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// returnsWithin runs f and fails t if it does not return within d.
func returnsWithin(t *testing.T, d time.Duration, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("still blocked after %v", d)
	}
}

func TestKeepAliveConnectionIsReused(t *testing.T) {
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "hello "+r.URL.Path)
	}), nil)
	p := newPool(t, srv.addr(), h1pool.Options{})
	for i := range 5 {
		path := "/" + strconv.Itoa(i)
		if got := mustGet(t, p, path); got != "hello "+path {
			t.Fatalf("body %q", got)
		}
	}
	if n := srv.accepted.Load(); n != 1 {
		t.Fatalf("server accepted %d connections for 5 sequential requests, want 1", n)
	}
}

// TestResponseBodiesAreReadInFull reads each kind of response body twice
// over one pool: intact both times, and the connection comes back to the
// pool once its body was read to the end, whatever the framing.
func TestResponseBodiesAreReadInFull(t *testing.T) {
	large := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB
	for _, tc := range []struct {
		name    string
		method  string
		handler http.HandlerFunc
		want    string
		chunked bool
	}{
		{name: "content-length", method: http.MethodGet, want: "fixed body",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Length", "10")
				_, _ = io.WriteString(w, "fixed body")
			}},
		{name: "chunked", method: http.MethodGet, want: "first chunk, second chunk", chunked: true,
			handler: func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, "first chunk, ")
				w.(http.Flusher).Flush()
				_, _ = io.WriteString(w, "second chunk")
			}},
		{name: "large content-length", method: http.MethodGet, want: large,
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Length", strconv.Itoa(len(large)))
				_, _ = io.WriteString(w, large)
			}},
		{name: "large chunked", method: http.MethodGet, want: large, chunked: true,
			handler: func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, large)
			}},
		{name: "echoed post", method: http.MethodPost, want: "request body",
			handler: func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(w, r.Body)
			}},
		{name: "no content", method: http.MethodGet, want: "",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusNoContent)
			}},
		{name: "head with a length and no body", method: http.MethodHead, want: "",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Length", "5")
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newHTTPServer(t, tc.handler, nil)
			p := newPool(t, srv.addr(), h1pool.Options{})
			var reqBody string
			if tc.method == http.MethodPost {
				reqBody = tc.want
			}
			for i := range 2 {
				res, got, err := roundTrip(t, p, tc.method, "/", reqBody)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if chunked := len(res.TransferEncoding) > 0; chunked != tc.chunked {
					t.Fatalf("response chunked = %v, the case expects %v", chunked, tc.chunked)
				}
				if got != tc.want {
					t.Fatalf("request %d: body of %d bytes, want %d (%.20q...)", i, len(got), len(tc.want), tc.want)
				}
			}
			if n := srv.accepted.Load(); n != 1 {
				t.Fatalf("server accepted %d connections, want 1: a body read in full frees its connection", n)
			}
		})
	}
}

// TestConnectionIsNotReusedAfter covers responses after which the
// connection cannot carry another request. The server answers on the
// same connection regardless, so only the pool's own decision makes the
// second request arrive on a new connection.
func TestConnectionIsNotReusedAfter(t *testing.T) {
	for _, tc := range []struct {
		name string
		// first writes the response to the first request.
		first func(s *rawServer, w *bufio.Writer)
		// read reads the first response's body before it is closed.
		read func(body io.Reader) error
	}{
		{
			name: "connection close",
			first: func(_ *rawServer, w *bufio.Writer) {
				_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
			},
			read: func(body io.Reader) error { _, err := io.ReadAll(body); return err },
		},
		{
			name: "body not read to its end",
			first: func(_ *rawServer, w *bufio.Writer) {
				writeOK(w, "0123456789")
			},
			read: func(body io.Reader) error { _, err := io.ReadFull(body, make([]byte, 3)); return err },
		},
		{
			// Nothing left in the read buffer: only the unread length tells.
			name: "body not read to its end, rest not sent yet",
			first: func(s *rawServer, w *bufio.Writer) {
				_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n012")
				_ = w.Flush()
				// The rest never comes; the next request is answered anyway.
			},
			read: func(body io.Reader) error { _, err := io.ReadFull(body, make([]byte, 3)); return err },
		},
		{
			name: "bytes after the body",
			first: func(_ *rawServer, w *bufio.Writer) {
				_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK")
			},
			read: func(body io.Reader) error { _, err := io.ReadAll(body); return err },
		},
		{
			name: "body not read at all",
			first: func(_ *rawServer, w *bufio.Writer) {
				writeOK(w, "0123456789")
			},
			read: func(io.Reader) error { return nil },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newRawServer(t, func(s *rawServer, w *bufio.Writer, req *http.Request) bool {
				if req.URL.Path == "/first" {
					tc.first(s, w)
				} else {
					writeOK(w, "second")
				}
				return true
			})
			p := newPool(t, srv.addr(), h1pool.Options{})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res, err := p.RoundTrip(newRequest(t, ctx, p, http.MethodGet, "/first", ""))
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.read(res.Body); err != nil {
				t.Fatalf("read first body: %v", err)
			}
			_ = res.Body.Close()
			if got := mustGet(t, p, "/second"); got != "second" {
				t.Fatalf("second body %q", got)
			}
			if n := srv.accepted.Load(); n != 2 {
				t.Fatalf("server accepted %d connections, want 2: the first connection must not be reused", n)
			}
		})
	}
}

// TestServerClosedIdleConnectionIsDetected lets the server close the
// pool's idle connection: the next request must go out on a new
// connection and succeed.
func TestServerClosedIdleConnectionIsDetected(t *testing.T) {
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), func(s *http.Server) { s.IdleTimeout = 50 * time.Millisecond })
	p := newPool(t, srv.addr(), h1pool.Options{})
	for i := range 3 {
		if got := mustGet(t, p, "/"); got != "ok" {
			t.Fatalf("body %q", got)
		}
		waitFor(t, "the server closed its idle connection", func() bool { return srv.closed.Load() == int64(i+1) })
	}
	if n := srv.accepted.Load(); n != 3 {
		t.Fatalf("server accepted %d connections, want 3", n)
	}
}

func TestDialFailureIsNotSent(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now
	p := newPool(t, addr, h1pool.Options{})
	_, _, err = roundTrip(t, p, http.MethodGet, "/", "")
	if !errors.Is(err, h1pool.ErrNotSent) {
		t.Fatalf("error %v, want one wrapping ErrNotSent", err)
	}
}

// TestContextDeadlineBoundsTheExchange runs requests against servers that
// stop answering at some point: each must end with an error wrapping
// context.DeadlineExceeded soon after the request's deadline.
func TestContextDeadlineBoundsTheExchange(t *testing.T) {
	const timeout = 200 * time.Millisecond
	for _, tc := range []struct {
		name   string
		answer func(s *rawServer, w *bufio.Writer)
	}{
		{name: "no answer", answer: func(s *rawServer, _ *bufio.Writer) { <-s.stop }},
		{name: "headers, then silence", answer: func(s *rawServer, w *bufio.Writer) {
			_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01")
			_ = w.Flush()
			<-s.stop
		}},
		{name: "chunked, then silence", answer: func(s *rawServer, w *bufio.Writer) {
			_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n01\r\n")
			_ = w.Flush()
			<-s.stop
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newRawServer(t, func(s *rawServer, w *bufio.Writer, _ *http.Request) bool {
				tc.answer(s, w)
				return false
			})
			p := newPool(t, srv.addr(), h1pool.Options{})
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			var err error
			returnsWithin(t, timeout+margin, func() {
				var res *http.Response
				res, err = p.RoundTrip(newRequest(t, ctx, p, http.MethodGet, "/", ""))
				if err == nil {
					_, err = io.ReadAll(res.Body)
					_ = res.Body.Close()
				}
			})
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("error %v, want one wrapping context.DeadlineExceeded", err)
			}
			if elapsed := time.Since(start); elapsed < timeout {
				t.Fatalf("gave up after %v, before the %v deadline", elapsed, timeout)
			}
		})
	}
}

// TestResponseHeaderTimeout bounds the wait for headers, but not the
// reading of a body that arrives after it.
func TestResponseHeaderTimeout(t *testing.T) {
	const headerTimeout = 100 * time.Millisecond
	srv := newRawServer(t, func(s *rawServer, w *bufio.Writer, req *http.Request) bool {
		switch req.URL.Path {
		case "/silent":
			<-s.stop
			return false
		case "/slow-body":
			_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsl")
			_ = w.Flush()
			// Longer than the header timeout: the body is not bound by it.
			select {
			case <-time.After(3 * headerTimeout):
			case <-s.stop:
			}
			_, _ = io.WriteString(w, "ow")
		}
		return true
	})
	p := newPool(t, srv.addr(), h1pool.Options{ResponseHeaderTimeout: headerTimeout})

	start := time.Now()
	var err error
	returnsWithin(t, headerTimeout+margin, func() {
		_, _, err = roundTrip(t, p, http.MethodGet, "/silent", "") // deadline 5s
	})
	if err == nil {
		t.Fatal("no error from a server that never answered")
	}
	if errors.Is(err, h1pool.ErrNotSent) {
		t.Fatalf("error %v wraps ErrNotSent, but the request was sent", err)
	}
	if elapsed := time.Since(start); elapsed < headerTimeout {
		t.Fatalf("gave up after %v, before the %v header timeout", elapsed, headerTimeout)
	}

	_, body, err := roundTrip(t, p, http.MethodGet, "/slow-body", "")
	if err != nil || body != "slow" {
		t.Fatalf("slow body: %q, %v", body, err)
	}
}

// TestCancelEndsTheExchangePromptly cancels a request's context while it
// waits for headers and while it reads the body.
func TestCancelEndsTheExchangePromptly(t *testing.T) {
	srv := newRawServer(t, func(s *rawServer, w *bufio.Writer, req *http.Request) bool {
		switch req.URL.Path {
		case "/no-headers":
			<-s.stop
			return false
		case "/half-body":
			_, _ = io.WriteString(w, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst part")
			_ = w.Flush()
			<-s.stop
			return false
		}
		writeOK(w, "ok")
		return true
	})
	p := newPool(t, srv.addr(), h1pool.Options{})

	t.Run("waiting for headers", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var err error
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, err = p.RoundTrip(newRequest(t, ctx, p, http.MethodGet, "/no-headers", ""))
		}()
		srv.waitReceived(t)
		cancel()
		select {
		case <-done:
		case <-time.After(margin):
			t.Fatalf("RoundTrip still blocked %v after cancel", margin)
		}
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want one wrapping context.Canceled", err)
		}
	})

	t.Run("reading the body", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		res, err := p.RoundTrip(newRequest(t, ctx, p, http.MethodGet, "/half-body", ""))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if _, err := io.ReadFull(res.Body, make([]byte, len("first part"))); err != nil {
			t.Fatal(err)
		}
		cancel()
		returnsWithin(t, margin, func() { _, err = io.ReadAll(res.Body) })
		if err == nil {
			t.Fatal("body read to a clean end after cancel, 90 bytes short")
		}
	})

	// The pool still works, on a fresh connection.
	if got := mustGet(t, p, "/ok"); got != "ok" {
		t.Fatalf("body %q", got)
	}
}

// TestHeaderInjectionIsRefused sends request fields with line breaks: the
// pool must refuse them rather than let them start a header or request of
// their own.
func TestHeaderInjectionIsRefused(t *testing.T) {
	var injected atomic.Int64
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Injected") != "" || r.URL.Path == "/smuggled" {
			injected.Add(1)
		}
		_, _ = io.WriteString(w, "ok")
	}), nil)
	p := newPool(t, srv.addr(), h1pool.Options{})
	for _, tc := range []struct {
		name   string
		modify func(*http.Request)
	}{
		{name: "CRLF in value", modify: func(r *http.Request) { r.Header["X-Note"] = []string{"a\r\nX-Injected: 1"} }},
		{name: "LF in value", modify: func(r *http.Request) { r.Header["X-Note"] = []string{"a\nX-Injected: 1"} }},
		{name: "CR in value", modify: func(r *http.Request) { r.Header["X-Note"] = []string{"a\rX-Injected: 1"} }},
		{name: "NUL in value", modify: func(r *http.Request) { r.Header["X-Note"] = []string{"a\x00b"} }},
		{name: "CRLF in second value", modify: func(r *http.Request) { r.Header["X-Note"] = []string{"fine", "b\r\nX-Injected: 1"} }},
		{name: "CRLF in name", modify: func(r *http.Request) { r.Header["X-Injected: 1\r\nX-Note"] = []string{"a"} }},
		{name: "CRLF in host", modify: func(r *http.Request) { r.Host = "example.com\r\nX-Injected: 1" }},
		{name: "request in host", modify: func(r *http.Request) {
			r.Host = "example.com\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			req := newRequest(t, ctx, p, http.MethodGet, "/", "")
			tc.modify(req)
			res, err := p.RoundTrip(req)
			if err == nil {
				_ = res.Body.Close()
				t.Fatalf("request sent, status %d", res.StatusCode)
			}
		})
	}
	// A request that follows goes through and finds nothing injected
	// before it on the server.
	if got := mustGet(t, p, "/"); got != "ok" {
		t.Fatalf("body %q", got)
	}
	if n := injected.Load(); n != 0 {
		t.Fatalf("server saw %d injected headers or requests", n)
	}
}

func TestClosedPoolRefusesRequests(t *testing.T) {
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), nil)
	p := h1pool.New(srv.addr(), h1pool.Options{})
	mustGet(t, p, "/")
	p.Close()
	waitFor(t, "the idle connection was closed", func() bool { return srv.closed.Load() == 1 })
	for range 2 {
		if _, _, err := roundTrip(t, p, http.MethodGet, "/", ""); !errors.Is(err, h1pool.ErrNotSent) {
			t.Fatalf("error %v after Close, want one wrapping ErrNotSent", err)
		}
	}
	if n := srv.accepted.Load(); n != 1 {
		t.Fatalf("server accepted %d connections, want 1: a closed pool dials no more", n)
	}
}

// TestConcurrentUse sends from several goroutines at once: every caller
// gets the answer to its own request, and connections never outnumber
// the callers.
func TestConcurrentUse(t *testing.T) {
	srv := newHTTPServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Path", r.URL.Path)
		_, _ = io.Copy(w, r.Body)
	}), nil)
	p := newPool(t, srv.addr(), h1pool.Options{})
	const callers, calls = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				path := fmt.Sprintf("/%d/%d", c, i)
				body := strings.Repeat(path, 1+i%7)
				res, got, err := roundTrip(t, p, http.MethodPost, path, body)
				switch {
				case err != nil:
					errs <- fmt.Errorf("%s: %w", path, err)
					return
				case got != body || res.Header.Get("X-Path") != path:
					errs <- fmt.Errorf("%s: got the answer to %s (%q)", path, res.Header.Get("X-Path"), got)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := srv.accepted.Load(); n > callers {
		t.Errorf("server accepted %d connections for %d callers", n, callers)
	}
}
