// Package h1pool sends HTTP/1.1 requests over a pool of keep-alive
// connections to one address, synchronously on the caller's goroutine.
//
// net/http's Transport hands every request and response between the
// caller's goroutine and two goroutines per connection; for a small unary
// call that hand-off, not the network, is most of the cost of a proxy hop.
// A [Pool] writes the request and reads the response on the goroutine that
// asked, and parses the response with [http.ReadResponse], so a unary call
// costs two system calls and no goroutine switch. It is meant for unary
// RPCs (a request body of known length, a response read to its end);
// streams belong on an HTTP/2 transport.
package h1pool

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// ErrNotSent wraps the errors of requests that never reached the server:
// the connection could not be made, or a pooled connection turned out to
// be closed before anything was written. Such a request can be sent again
// anywhere, whatever it does.
var ErrNotSent = errors.New("request not sent")

// Options tune a [Pool]. The zero value of each field means its documented
// default.
type Options struct {
	// MaxIdle is how many idle connections the pool keeps. Default 256.
	MaxIdle int
	// IdleTimeout closes a connection idle this long instead of reusing
	// it; keep it below the server's own idle timeout. Default 90s.
	IdleTimeout time.Duration
	// DialTimeout bounds connecting. Default 5s.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the response's headers
	// after the request was written, within the request's deadline.
	// Default 0: the request's deadline alone.
	ResponseHeaderTimeout time.Duration
}

// Pool holds the keep-alive connections to one address. It is safe for
// concurrent use.
type Pool struct {
	addr string
	opts Options
	dial func(ctx context.Context, network, addr string) (net.Conn, error)

	mu     sync.Mutex
	idle   []*conn // most recently used last
	closed bool
}

// New returns a pool of connections to addr (host:port).
func New(addr string, opts Options) *Pool {
	if opts.MaxIdle <= 0 {
		opts.MaxIdle = 256
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 90 * time.Second
	}
	if opts.DialTimeout <= 0 {
		opts.DialTimeout = 5 * time.Second
	}
	d := &net.Dialer{Timeout: opts.DialTimeout, KeepAlive: 30 * time.Second}
	return &Pool{addr: addr, opts: opts, dial: d.DialContext}
}

// Addr is the address the pool connects to.
func (p *Pool) Addr() string { return p.addr }

// conn is one pooled connection.
type conn struct {
	pool      *Pool
	nc        net.Conn
	raw       syscall.RawConn // for the liveness check; nil if unavailable
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
}

// probeAfter is how long a connection may sit idle before it is checked
// for a close by the server on reuse. Under load connections come back
// within microseconds and are not checked; an idle one costs one
// non-blocking read to check.
const probeAfter = time.Millisecond

// get returns an idle connection that still looks open, or dials one.
// reused tells which.
func (p *Pool) get(ctx context.Context) (c *conn, reused bool, err error) {
	now := time.Now()
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, false, fmt.Errorf("%w: pool for %s is closed", ErrNotSent, p.addr)
		}
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			break
		}
		c = p.idle[n-1]
		p.idle[n-1] = nil
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		idle := now.Sub(c.idleSince)
		if idle >= p.opts.IdleTimeout || (idle >= probeAfter && !c.open()) {
			_ = c.nc.Close()
			continue
		}
		return c, true, nil
	}
	nc, err := p.dial(ctx, "tcp", p.addr)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	c = &conn{pool: p, nc: nc, br: bufio.NewReaderSize(nc, 16<<10), bw: bufio.NewWriterSize(nc, 8<<10)}
	if sc, ok := nc.(syscall.Conn); ok {
		c.raw, _ = sc.SyscallConn()
	}
	return c, false, nil
}

// open reports whether the server has not closed an idle connection: a
// non-blocking peek finds no EOF, no error and no unexpected bytes.
func (c *conn) open() bool {
	if c.raw == nil {
		return true
	}
	var buf [1]byte
	alive := true
	err := c.raw.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK:
		case err != nil, n == 0, n > 0:
			// Closed, failed, or bytes nobody asked for: not reusable.
			alive = false
		}
		return true
	})
	return err == nil && alive
}

// put returns c to the pool, or closes it when the pool is full or closed.
func (p *Pool) put(c *conn) {
	if c.br.Buffered() > 0 {
		_ = c.nc.Close()
		return
	}
	c.idleSince = time.Now()
	p.mu.Lock()
	if p.closed || len(p.idle) >= p.opts.MaxIdle {
		p.mu.Unlock()
		_ = c.nc.Close()
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// Close closes the idle connections and makes the pool refuse new
// requests; responses being read finish and close their connection.
func (p *Pool) Close() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.closed = true
	p.mu.Unlock()
	for _, c := range idle {
		_ = c.nc.Close()
	}
}

// CloseIdle closes the idle connections; the pool stays usable.
func (p *Pool) CloseIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, c := range idle {
		_ = c.nc.Close()
	}
}

// aLongTimeAgo is a deadline in the past, which makes blocked reads and
// writes return at once.
var aLongTimeAgo = time.Unix(1, 0)

// RoundTrip sends req and reads the response's headers, on the caller's
// goroutine. req must have a body of known length (ContentLength, or no
// body); req.URL's host is ignored in favour of the pool's address, and
// req.Host (or the URL's host) is sent as Host. The response body reads
// from the connection; closing it after reading it to the end returns the
// connection to the pool.
//
// req's context bounds the whole exchange, body included: when it ends,
// the connection is closed under any read or write in progress. An error
// wrapping [ErrNotSent] means the server cannot have seen the request.
func (p *Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil && req.Body != http.NoBody && req.ContentLength < 0 {
		return nil, errors.New("h1pool: request body of unknown length")
	}
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNotSent, err)
	}
	c, reused, err := p.get(ctx)
	if err != nil {
		return nil, err
	}
	// One deadline for the whole exchange, set once: connection deadlines
	// are timers, and each change costs.
	deadline, hasDeadline := ctx.Deadline()
	readDeadline := deadline
	if t := p.opts.ResponseHeaderTimeout; t > 0 {
		if d := time.Now().Add(t); !hasDeadline || d.Before(readDeadline) {
			readDeadline = d
		}
	}
	_ = c.nc.SetWriteDeadline(deadline)
	_ = c.nc.SetReadDeadline(readDeadline)
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(aLongTimeAgo) })
	if ctx.Err() != nil {
		// Cancelled before the hook was in place to see it.
		_ = c.nc.SetDeadline(aLongTimeAgo)
	}

	sent := time.Now()
	if err := c.writeRequest(req); err != nil {
		stop()
		_ = c.nc.Close()
		if reused && isClosedByPeer(err) {
			// The server closed the connection before the request got
			// there: nothing was processed.
			return nil, fmt.Errorf("%w: %w", ErrNotSent, err)
		}
		if hasDeadline && !time.Now().Before(deadline) {
			return nil, fmt.Errorf("write request to %s: %w", p.addr, context.DeadlineExceeded)
		}
		return nil, fmt.Errorf("write request to %s: %w", p.addr, err)
	}

	res, err := http.ReadResponse(c.br, req)
	if err != nil {
		stop()
		_ = c.nc.Close()
		switch {
		case ctx.Err() != nil:
			return nil, fmt.Errorf("read response from %s: %w", p.addr, ctx.Err())
		case hasDeadline && !time.Now().Before(deadline):
			// The connection's deadline is the context's: it may fire a
			// moment before the context says so.
			return nil, fmt.Errorf("read response from %s: %w", p.addr, context.DeadlineExceeded)
		}
		return nil, fmt.Errorf("read response from %s: %w", p.addr, err)
	}
	if !readDeadline.Equal(deadline) {
		_ = c.nc.SetReadDeadline(deadline)
		if ctx.Err() != nil {
			_ = c.nc.SetDeadline(aLongTimeAgo)
		}
	}
	res.Body = &body{ReadCloser: res.Body, c: c, stop: stop, ctx: ctx, keep: !res.Close, eof: res.Body == http.NoBody, sent: sent}
	return res, nil
}

// SentAt returns when the request of res, a response from a [Pool], was
// sent: after its connection was ready, so a latency measured from it
// leaves out connecting. It reports false for other responses.
func SentAt(res *http.Response) (time.Time, bool) {
	if b, ok := res.Body.(*body); ok {
		return b.sent, true
	}
	return time.Time{}, false
}

// isClosedByPeer reports whether a write failed because the server had
// closed the connection (reset or broken pipe) rather than for a deadline.
func isClosedByPeer(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)
}

// writeRequest writes req's request line, headers and body, and flushes.
func (c *conn) writeRequest(req *http.Request) error {
	w := c.bw
	method := req.Method
	if method == "" {
		method = http.MethodPost
	}
	uri := req.URL.RequestURI()
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !validField(uri) || !validField(host) {
		return errors.New("h1pool: invalid request line or host")
	}
	w.WriteString(method)
	w.WriteByte(' ')
	w.WriteString(uri)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(host)
	w.WriteString("\r\n")
	hasBody := req.Body != nil && req.Body != http.NoBody && req.ContentLength > 0
	if hasBody || method == http.MethodPost || method == http.MethodPut {
		w.WriteString("Content-Length: ")
		var num [20]byte
		w.Write(strconv.AppendInt(num[:0], max(req.ContentLength, 0), 10))
		w.WriteString("\r\n")
	}
	for key, values := range req.Header {
		switch key {
		case "Host", "Content-Length", "Transfer-Encoding", "Connection", "Trailer":
			continue
		}
		if !validField(key) {
			return fmt.Errorf("h1pool: invalid header name %q", key)
		}
		for _, v := range values {
			if !validField(v) {
				return fmt.Errorf("h1pool: invalid value for header %s", key)
			}
			w.WriteString(key)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	w.WriteString("\r\n")
	if hasBody {
		n, err := io.Copy(w, req.Body)
		if err != nil {
			return fmt.Errorf("copy request body: %w", err)
		}
		if n != req.ContentLength {
			return fmt.Errorf("h1pool: request body has %d bytes, Content-Length says %d", n, req.ContentLength)
		}
	}
	return w.Flush()
}

// validField reports whether s may appear in a request line or header
// without ending it: no CR, LF or NUL.
func validField(s string) bool {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b == '\r' || b == '\n' || b == 0 {
			return false
		}
	}
	return true
}

// body is a response body that gives its connection back to the pool once
// read to the end and closed.
type body struct {
	io.ReadCloser
	c    *conn
	stop func() bool
	ctx  context.Context
	keep bool // the connection may be reused
	sent time.Time
	eof  bool
	err  bool
	done bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil:
		b.err = true
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The connection's deadline stands for the context: a
			// cancellation, or the context's own deadline.
			cause := context.DeadlineExceeded
			if errors.Is(b.ctx.Err(), context.Canceled) {
				cause = context.Canceled
			}
			err = fmt.Errorf("%w: %w", cause, err)
		}
	}
	return n, err
}

// Close releases the connection: to the pool when the body was read to its
// end on a connection the server keeps open, closed otherwise.
func (b *body) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	// stop fails when the context already ended and poisoned the
	// connection's deadline: such a connection is not reused.
	if b.stop() && b.keep && b.eof && !b.err {
		// The next exchange sets its own deadlines.
		b.c.pool.put(b.c)
		return nil
	}
	return b.c.nc.Close()
}
