package callpolicy

// Internal tests of the transport's parts whose effect on a call cannot
// be told from outside: how a response is held, which outcomes are
// released, what an attempt's outcome says, and what is counted.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
)

// closeErrBody is a response body whose Close fails.
type closeErrBody struct{ io.Reader }

func (closeErrBody) Close() error { return errors.New("close failed") }

// failingBody is a response body whose Read fails.
type failingBody struct{ closed bool }

func (*failingBody) Read([]byte) (int, error) { return 0, errors.New("connection reset") }
func (b *failingBody) Close() error           { b.closed = true; return nil }

// trackedBody is a response body that records its Close.
type trackedBody struct {
	io.Reader
	closed bool
}

func (b *trackedBody) Close() error { b.closed = true; return nil }

// readAll reads r to its end, as io.ReadAll does, but fails on a read
// that returns neither bytes nor an error, where io.ReadAll would spin.
func readAll(r io.Reader) ([]byte, error) {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		switch {
		case err == io.EOF:
			return out, nil
		case err != nil:
			return out, err
		case n == 0:
			return out, errors.New("read returned nothing and no error")
		}
	}
}

func response(body io.ReadCloser, length int64) *http.Response {
	return &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: body, ContentLength: length}
}

func TestReadBodyHoldsUpToMaxUnary(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), (maxUnary+64)/16)
	for _, tc := range []struct {
		name   string
		size   int
		length int64 // Content-Length: -1 unknown
	}{
		{name: "empty", size: 0, length: 0},
		{name: "small, length unknown", size: 100, length: -1},
		{name: "small", size: 100, length: 100},
		{name: "exactly maxUnary", size: maxUnary, length: maxUnary},
		{name: "exactly maxUnary, length unknown", size: maxUnary, length: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &trackedBody{Reader: bytes.NewReader(payload[:tc.size])}
			b, err := readBody(response(src, tc.length))
			if err != nil {
				t.Fatal(err)
			}
			if !src.closed {
				t.Fatal("the response body was not closed once read")
			}
			if !b.Complete() || len(b.Bytes()) != tc.size || !bytes.Equal(b.Bytes(), payload[:tc.size]) {
				t.Fatalf("held %d bytes (complete %v), want all %d", len(b.Bytes()), b.Complete(), tc.size)
			}
			got, err := readAll(b)
			if err != nil || !bytes.Equal(got, payload[:tc.size]) {
				t.Fatalf("read %d bytes back (%v), want %d", len(got), err, tc.size)
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			if b.Bytes() != nil {
				t.Fatal("Bytes after Close, from a buffer returned to the pool")
			}
		})
	}

	t.Run("larger than maxUnary", func(t *testing.T) {
		const size = maxUnary + 40
		src := &trackedBody{Reader: bytes.NewReader(payload[:size])}
		b, err := readBody(response(src, size))
		if !errors.Is(err, errTooLarge) || b == nil {
			t.Fatalf("readBody = (body %v), %v; want the part read and errTooLarge", b != nil, err)
		}
		if b.Complete() || len(b.Bytes()) != maxUnary+1 || src.closed {
			t.Fatalf("held %d bytes (complete %v, source closed %v), want maxUnary+1 and the rest to read", len(b.Bytes()), b.Complete(), src.closed)
		}
		got, err := readAll(b)
		if err != nil || !bytes.Equal(got, payload[:size]) {
			t.Fatalf("read %d bytes in all (%v), want the whole %d", len(got), err, size)
		}
		if err := b.Close(); err != nil || !src.closed {
			t.Fatalf("Close = %v, source closed %v; want the rest closed", err, src.closed)
		}
	})

	t.Run("read fails", func(t *testing.T) {
		src := &failingBody{}
		if b, err := readBody(response(src, -1)); err == nil || b != nil {
			t.Fatalf("readBody = (body %v), %v; want the read's error", b != nil, err)
		}
		if !src.closed {
			t.Fatal("a body that failed was not closed")
		}
	})

	t.Run("close fails", func(t *testing.T) {
		if b, err := readBody(response(closeErrBody{strings.NewReader("x")}, 1)); err == nil || b != nil {
			t.Fatalf("readBody = (body %v), %v; want Close's error", b != nil, err)
		}
	})

	t.Run("length announced past reason", func(t *testing.T) {
		// A response claiming exabytes is not allocated for up front.
		b, err := readBody(response(io.NopCloser(strings.NewReader("short")), 1<<62))
		if err != nil || string(b.Bytes()) != "short" {
			t.Fatalf("readBody = %v; want the five bytes sent", err)
		}
		b.Close()
	})

	t.Run("large buffers are not pooled", func(t *testing.T) {
		// A buffer grown past 1MiB to hold a large answer is dropped when
		// closed, not handed to the next small answer.
		for range 5 {
			big, err := readBody(response(io.NopCloser(bytes.NewReader(payload[:2<<20])), 2<<20))
			if err != nil {
				t.Fatal(err)
			}
			big.Close()
			small, err := readBody(response(io.NopCloser(strings.NewReader("x")), 1))
			if err != nil {
				t.Fatal(err)
			}
			if c := small.buf.Cap(); c > 1<<20 {
				t.Fatalf("a 1-byte answer held in a buffer of %d bytes, one a large answer was read into", c)
			}
			small.Close()
		}
	})

	var nilBody *Body
	if nilBody.Bytes() != nil {
		t.Fatal("Bytes of no body")
	}
}

func TestKeepReleasesTheOutcomesNotReturned(t *testing.T) {
	held := func() *outcome {
		b, err := readBody(response(io.NopCloser(strings.NewReader("answer")), 6))
		if err != nil {
			t.Fatal(err)
		}
		return &outcome{body: b}
	}
	c := &call{}
	first, second := held(), held()
	c.keep(first)
	c.keep(second)
	if first.body != nil {
		t.Fatal("the outcome replaced was not released")
	}
	c.keep(second)
	if second.body == nil || string(second.body.Bytes()) != "answer" {
		t.Fatal("keeping the latest outcome again released it")
	}
	noBody := &outcome{err: errors.New("refused")}
	c.keep(noBody)
	if second.body != nil || c.last != noBody {
		t.Fatal("an outcome without a body did not replace the one before")
	}
	noBody.release()

	// An outcome arriving after the call returned (a hedge that lost) is
	// released at once.
	c.done = true
	late := held()
	c.keep(late)
	if late.body != nil || c.last != noBody {
		t.Fatal("an outcome arriving after the call returned was kept")
	}
}

func TestVerdictAndThrottleReadTheOutcome(t *testing.T) {
	errReset := errors.New("connection reset")
	withBody := &Body{}
	for _, tc := range []struct {
		name       string
		o          outcome
		canceled   bool
		verdict    verdict
		overloaded bool
	}{
		{name: "success", o: outcome{}, verdict: verdictAnswered},
		{name: "an error answered", o: outcome{code: connect.CodeNotFound}, verdict: verdictAnswered},
		{name: "unavailable", o: outcome{code: connect.CodeUnavailable}, verdict: verdictRefused, overloaded: true},
		{name: "resource exhausted", o: outcome{code: connect.CodeResourceExhausted}, verdict: verdictRefused, overloaded: true},
		{name: "no answer", o: outcome{err: errReset, code: connect.CodeUnavailable}, verdict: verdictSick, overloaded: true},
		{name: "answer too large, passed on", o: outcome{body: withBody}, verdict: verdictAnswered},
		{name: "caller gave up", o: outcome{err: context.Canceled, code: connect.CodeCanceled, gaveUp: true}, canceled: true, verdict: verdictCanceled},
		{name: "caller ran out of time", o: outcome{err: context.DeadlineExceeded, code: connect.CodeDeadlineExceeded, gaveUp: true}, canceled: true, verdict: verdictCanceled},
		{name: "attempt timed out", o: outcome{err: context.DeadlineExceeded, code: connect.CodeDeadlineExceeded}, verdict: verdictSick, overloaded: true},
	} {
		if got := verdictOf(&tc.o, tc.canceled); got != tc.verdict {
			t.Errorf("%s: verdict %d, want %d", tc.name, got, tc.verdict)
		}
		if got := tc.o.overloaded(); got != tc.overloaded {
			t.Errorf("%s: overloaded %v, want %v", tc.name, got, tc.overloaded)
		}
	}
}

func TestAttemptErrorSaysWhatBecameOfTheCall(t *testing.T) {
	live := context.Background()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	ep := &endpoint{addr: "10.0.0.7:8080"}
	errReset := errors.New("connection reset by peer")

	err := attemptError("user", &outcome{ep: ep, err: errReset, code: connect.CodeUnavailable}, live)
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "user at 10.0.0.7:8080: connection reset by peer") {
		t.Fatalf("no answer from an instance: %v, want unavailable naming the instance", err)
	}
	err = attemptError("user", &outcome{err: errReset, code: connect.CodeUnavailable}, live)
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "user: connection reset by peer") || strings.Contains(err.Error(), " at ") {
		t.Fatalf("no instance: %v, want unavailable naming the service", err)
	}
	err = attemptError("user", &outcome{ep: ep, err: context.DeadlineExceeded, code: connect.CodeDeadlineExceeded}, live)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("attempt out of time: %v, want deadline exceeded", err)
	}
	err = attemptError("user", &outcome{ep: ep, err: context.Canceled, code: connect.CodeCanceled}, canceled)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("caller gone: %v, want canceled", err)
	}
	for _, want := range []error{ErrAllOpen, discovery.ErrNoInstances} {
		if err := attemptError("user", &outcome{err: want}, live); err != want {
			t.Fatalf("%v came back as %v", want, err)
		}
	}
}

func TestIsDialError(t *testing.T) {
	dial := &net.OpError{Op: "dial", Err: errors.New("connection refused")}
	read := &net.OpError{Op: "read", Err: errors.New("connection reset")}
	if !isDialError(dial) || !isDialError(fmt.Errorf("attempt: %w", dial)) {
		t.Fatal("a dial error is not one")
	}
	if isDialError(read) || isDialError(errors.New("dial")) {
		t.Fatal("a read error is a dial error")
	}
}

func TestMethodOfARequest(t *testing.T) {
	get := func(path string) *http.Request {
		r, _ := http.NewRequest(http.MethodGet, "http://user"+path, nil)
		return r
	}
	post := func(path, contentType string) *http.Request {
		r, _ := http.NewRequest(http.MethodPost, "http://user"+path, strings.NewReader("x"))
		r.Header.Set("Content-Type", contentType)
		return r
	}
	for _, tc := range []struct {
		name string
		req  *http.Request
		want Method
	}{
		{name: "registered read", req: post("/shop.user.v1.UserService/GetUser", "application/grpc"),
			want: Method{Name: "shop.user.v1.UserService.GetUser", Unary: true, Idempotent: true, ReadOnly: true}},
		{name: "registered idempotent", req: post("/shop.user.v1.UserService/UpdateProfile", "application/proto"),
			want: Method{Name: "shop.user.v1.UserService.UpdateProfile", Unary: true, Idempotent: true}},
		{name: "registered with side effects", req: post("/shop.user.v1.UserService/Register", "application/proto"),
			want: Method{Name: "shop.user.v1.UserService.Register", Unary: true}},
		{name: "unknown, Connect unary", req: post("/x.v1.Unknown/Do", "application/proto"), want: Method{Unary: true}},
		{name: "unknown, gRPC", req: post("/x.v1.Unknown/Do", "application/grpc"), want: Method{}},
		{name: "unknown GET", req: get("/x.v1.Unknown/Do"), want: Method{Unary: true, Idempotent: true, ReadOnly: true}},
		{name: "unknown method of a known service", req: post("/shop.user.v1.UserService/Nope", "application/grpc"), want: Method{}},
		{name: "a message, not a service", req: post("/shop.user.v1.User/GetUser", "application/grpc"), want: Method{}},
		{name: "given by the caller", req: post("/x.v1.Unknown/Do", "application/grpc").WithContext(WithMethod(context.Background(), Method{Name: "x", Idempotent: true})),
			want: Method{Name: "x", Idempotent: true}},
	} {
		for range 2 { // the second answer may come from the cache
			if got := methodOf(tc.req); got != tc.want {
				t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
			}
		}
	}
}

func TestPolicyKeepsAThrottlePerMethodUpToABound(t *testing.T) {
	tr, err := NewTransport(&listResolver{}, config.DefaultCalls(), nil)
	if err != nil {
		t.Fatal(err)
	}
	p := tr.upstream("user").policy.Load()
	first := p.method(Method{Name: "m0"})
	if first == &p.other || p.method(Method{Name: "m0"}) != first {
		t.Fatal("a method does not keep its own executor")
	}
	for i := 1; i < maxThrottled; i++ {
		if mp := p.method(Method{Name: "m" + string(rune(0x10000+i))}); mp == &p.other {
			t.Fatalf("method %d of %d shares the executor of the methods past the bound", i+1, maxThrottled)
		}
	}
	if mp := p.method(Method{Name: "past"}); mp != &p.other {
		t.Fatalf("method %d has an executor of its own, past the bound of %d", maxThrottled+1, maxThrottled)
	}
}

func TestBudgetSlotsTurnExactlyOnTime(t *testing.T) {
	const window = 10 * time.Second
	b := NewBudget(0.5, 2, window, nil)
	if b.slot != time.Second || b.floor != 20 {
		t.Fatalf("slot %v, floor %v; want 1s and 2/s over 10s", b.slot, b.floor)
	}
	start := b.start
	b.advance(start.Add(b.slot - 1))
	if b.current != 0 || !b.start.Equal(start) {
		t.Fatal("the slot turned before its end")
	}
	b.advance(start.Add(b.slot))
	if b.current != 1 || !b.start.Equal(start.Add(b.slot)) {
		t.Fatalf("at the end of the slot: slot %d starting %v, want slot 1 starting one slot later", b.current, b.start.Sub(start))
	}
	// Part way into a later slot: the slot starts on the slot boundary.
	b.advance(start.Add(3*b.slot + b.slot/2))
	if b.current != 3 || !b.start.Equal(start.Add(3*b.slot)) {
		t.Fatalf("3.5 slots on: slot %d starting %v, want slot 3 starting 3 slots on", b.current, b.start.Sub(start))
	}
	// The window wraps round its slots.
	b.advance(start.Add(12 * b.slot))
	if b.current != 2 || !b.start.Equal(start.Add(12*b.slot)) {
		t.Fatalf("12 slots on: slot %d starting %v, want slot 2 starting 12 slots on", b.current, b.start.Sub(start))
	}
	// After more than a window, every slot was cleared once, and the
	// current one starts on its boundary.
	b.advance(start.Add(27*b.slot + 1))
	if b.current != 2 || !b.start.Equal(start.Add(27*b.slot)) {
		t.Fatalf("27 slots on: slot %d starting %v, want slot 2 starting 27 slots on", b.current, b.start.Sub(start))
	}
}

// onlyReader hides every method of its reader but Read, so that a
// request cannot read it again: the call is passed on as a stream.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// TestAttemptsLeaveNothingInFlight: an attempt counts against its
// instance's score while it runs and no longer once it has ended,
// whether it was answered, refused or never reached the instance, held
// or streamed.
func TestAttemptsLeaveNothingInFlight(t *testing.T) {
	serve := func(status int, body string) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = io.WriteString(w, body)
		})}
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetHTTP1(true)
		srv.Protocols.SetUnencryptedHTTP2(true)
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
		return ln.Addr().String()
	}
	ok := serve(http.StatusOK, `{}`)
	failing := serve(http.StatusServiceUnavailable, `{"code":"unavailable"}`)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	tr, err := NewTransport(&listResolver{list: []discovery.Instance{{Addr: ok}, {Addr: failing}, {Addr: dead}}}, config.DefaultCalls(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.CloseIdleConnections()
	for i := range 40 {
		var body io.Reader = strings.NewReader("{}")
		if i%2 == 1 {
			body = onlyReader{body}
		}
		req, _ := http.NewRequest(http.MethodPost, "http://user/shop.user.v1.UserService/GetUser", body)
		req.Header.Set("Content-Type", "application/json")
		res, err := tr.RoundTrip(req)
		if err != nil {
			continue // a stream whose attempts all met the dead instance, say
		}
		_, _ = io.Copy(io.Discard, res.Body)
		_ = res.Body.Close()
	}
	b := tr.upstream("user").balancer
	b.mu.Lock()
	defer b.mu.Unlock()
	for addr, e := range b.byAddr {
		if n := e.inflight.Load(); n != 0 {
			t.Fatalf("%d attempts still in flight at %s after every call ended", n, addr)
		}
		if e.lastPick.Load() == e.added.UnixNano() {
			t.Fatalf("no attempt went to %s", addr)
		}
	}
}
