package edge

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/keelplatform/keel/internal/callpolicy"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/ratelimit"
	"github.com/keelplatform/keel/internal/rpcstatus"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/shed"
	"github.com/keelplatform/keel/internal/wire"
)

// proxy forwards Connect, gRPC and gRPC-Web calls to the service that owns
// them, unchanged but for the headers a proxy must rewrite: body, status
// and trailers pass through, and the caller's deadline bounds the call.
// Balancing, retries, breakers and throttling are the transport's (the
// call policy's); the proxy decides nothing of them.
type proxy struct {
	routes    *routeTable
	transport http.RoundTripper
	errors    *connect.ErrorWriter
	logger    *slog.Logger
	metrics   *proxyMetrics
	trusted   atomic.Pointer[trustedProxies]
	calls     atomic.Pointer[config.Calls]
	// maxRequest bounds one request message, as server/max_request_bytes
	// says; a unary body may be 5 bytes more (a gRPC envelope).
	maxRequest int64
	tracer     trace.Tracer // nil when tracing is off
	propagator propagation.TextMapPropagator
	auth       *authenticator // nil: every call passes anonymous

	limiter  *ratelimit.Limiter
	rates    atomic.Pointer[rateTable]          // nil: no rate limits
	canaries atomic.Pointer[map[string]*canary] // by logical service; nil map: none
	faults   atomic.Pointer[faultTable]         // nil: no faults
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// exchange is one call through the proxy, with what the access log and
// the metrics need once it ends.
type exchange struct {
	start  time.Time
	route  *route
	report callpolicy.Report
	span   trace.Span
	// rest marks a REST call the edge transcoded (see rest.go): the
	// request is a Connect one by now, but the caller spoke REST.
	rest bool
	// fault names the faults injected into the call, for the access log.
	fault string
}

// protocol names the protocol the caller spoke.
func (x *exchange) protocol(r *http.Request) string {
	if x.rest {
		return "rest"
	}
	return protocolOf(r)
}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.serve(w, r, exchange{start: time.Now()})
}

// serve forwards the call r, recorded in x.
func (p *proxy) serve(w http.ResponseWriter, r *http.Request, x exchange) {
	rt, proc, ok := p.routes.lookup(r.URL.Path)
	if !ok {
		server.WriteNotFound(w, r, p.errors)
		p.finish(r, &x, connect.CodeUnimplemented)
		return
	}
	x.route = rt
	if r.Method == http.MethodPost && !callContentType(r.Header.Get("Content-Type")) {
		unsupportedMediaType(w, "Content-Type "+quoteOrNone(r.Header.Get("Content-Type"))+" is not a call: send application/json or application/proto (Connect), "+
			"application/grpc (gRPC) or application/grpc-web (gRPC-Web)")
		p.finish(r, &x, connect.CodeInvalidArgument)
		return
	}
	if r.Method == http.MethodGet && proc != nil && proc.method.ReadOnly {
		// A method the contract marks free of side effects takes GET; for
		// the others the service's 405 says more.
		if enc := r.URL.Query().Get("encoding"); enc != "json" && enc != "proto" {
			unsupportedMediaType(w, "a Connect GET names its codec: ?connect=v1&encoding=json&message=<the request, URL-encoded> (encoding "+quoteOrNone(enc)+")")
			p.finish(r, &x, connect.CodeInvalidArgument)
			return
		}
	}

	ctx := r.Context()
	timeout, ok, err := wire.ParseTimeout(r.Header)
	if err != nil {
		p.fail(w, r, &x, connect.NewError(connect.CodeInvalidArgument, err))
		return
	}
	if !ok {
		timeout = p.calls.Load().TimeoutFor(rt.logical)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if p.tracer != nil {
		ctx, x.span = p.startSpan(ctx, r, &x)
		defer x.span.End()
	}

	unary := wire.ConnectUnary(r)
	acc := loginRequired
	if proc != nil {
		unary, acc = proc.method.Unary, proc.access
	}
	var user string
	if p.auth != nil {
		var err error
		if user, err = p.auth.check(ctx, r.Header, r.URL.Path, acc); err != nil {
			p.fail(w, r, &x, err)
			return
		}
	}
	trusted := p.trusted.Load()
	var caller string // callerKey, computed when first needed
	if rates := p.rates.Load(); rates != nil {
		if g := rates.lookup(r.URL.Path, rt.service); g != nil {
			caller = callerKey(user, r.Header, r.RemoteAddr, trusted)
			if res := p.limiter.Allow(ctx, g.state, caller, g.limit); !res.Allowed {
				g.limited.Inc()
				p.fail(w, r, &x, rateLimited(g.name, res.RetryAfter))
				return
			}
		}
	}
	if canaries := p.canaries.Load(); canaries != nil {
		if c := (*canaries)[rt.logical]; c != nil {
			if c.sticky && caller == "" {
				caller = callerKey(user, r.Header, r.RemoteAddr, trusted)
			}
			toCanary := c.side(r.Header, rt.logical, caller)
			if toCanary {
				c.calls[1].Inc()
			} else {
				c.calls[0].Inc()
			}
			ctx = callpolicy.WithPreference(ctx, c.preference(toCanary))
		}
	}
	forwardHeaders(r.Header, r.RemoteAddr, trusted)
	if faults := p.faults.Load(); faults != nil {
		if f := faults.lookup(r.URL.Path, rt.service); f != nil && !p.injectFault(ctx, w, r, &x, f) {
			return
		}
	}
	if user != "" {
		if err := p.auth.vouch(r.Header, user); err != nil {
			p.logger.ErrorContext(ctx, "vouch for caller", slog.String("error", err.Error()))
			p.fail(w, r, &x, connect.NewError(connect.CodeInternal, errors.New("internal error")))
			return
		}
	}
	if x.span != nil {
		p.propagator.Inject(ctx, propagation.HeaderCarrier(r.Header))
		if sc := x.span.SpanContext(); sc.IsSampled() {
			// Tell the caller which trace to look for (W3C Trace Context
			// Level 2's traceresponse).
			w.Header()["Traceresponse"] = []string{"00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"}
		}
	}
	ctx = callpolicy.WithReport(ctx, &x.report)
	r.URL.Scheme, r.URL.Host = "http", rt.logical

	switch {
	case unary && r.ContentLength > p.maxRequest+5:
		p.fail(w, r, &x, tooLarge(p.maxRequest))
	case unary:
		p.forwardUnary(ctx, w, r, &x)
	default:
		p.forwardStream(ctx, w, r, &x)
	}
}

// injectFault delays or aborts the call as f says, and reports whether
// it goes on. A delay ends early at the call's deadline (the call then
// fails with deadline_exceeded) or when the caller goes away; an aborted
// call is answered with f's code and never sent upstream.
func (p *proxy) injectFault(ctx context.Context, w http.ResponseWriter, r *http.Request, x *exchange, f *fault) bool {
	if f.delay > 0 && roll(f.delayPercent) {
		x.route.metrics.delayed.Inc()
		x.fault = "delay"
		t := time.NewTimer(f.delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			if r.Context().Err() != nil {
				p.finish(r, x, connect.CodeCanceled) // the caller went away; nobody to answer
			} else {
				p.fail(w, r, x, connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded during a delay injected at the edge")))
			}
			return false
		}
	}
	if roll(f.abortPercent) {
		x.route.metrics.aborted.Inc()
		x.fault = strings.TrimPrefix(x.fault+",abort", ",")
		p.fail(w, r, x, connect.NewError(f.abortCode, fmt.Errorf("fault injected at the edge into %s", strings.TrimPrefix(r.URL.Path, "/"))))
		return false
	}
	return true
}

// unaryBody is a pooled, buffered unary request body.
type unaryBody struct {
	buf     bytes.Buffer
	r       bytes.Reader
	limited io.LimitedReader
	// getBody replays the body for a retry, from a reader of its own.
	getBody func() (io.ReadCloser, error)
}

func (b *unaryBody) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *unaryBody) Close() error               { return nil }

var unaryBodies = sync.Pool{New: func() any {
	ub := new(unaryBody)
	ub.getBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(ub.buf.Bytes())), nil }
	return ub
}}

// forwardUnary forwards a call with a single request message: the body
// is read in full (so the call can be sent again), and the transport reads
// the answer in full before it is relayed, so an instance dying in the
// middle of its answer reaches the caller as a clean error or a retried
// call, never as a torn stream.
func (p *proxy) forwardUnary(ctx context.Context, w http.ResponseWriter, r *http.Request, x *exchange) {
	ub := unaryBodies.Get().(*unaryBody)
	if wire.ConnectUnary(r) {
		// Unary Connect calls go over HTTP/1.1 pools, which are done with
		// the body when RoundTrip returns; an HTTP/2 transport may still
		// read it after, so those bodies are not reused.
		defer unaryBodies.Put(ub)
	}
	ub.buf.Reset()
	if r.ContentLength > 0 {
		ub.buf.Grow(int(r.ContentLength))
	}
	if r.Body != nil && r.Body != http.NoBody {
		// A client that sends slowly cannot hold the edge past the call's
		// deadline.
		if deadline, ok := ctx.Deadline(); ok {
			_ = http.NewResponseController(w).SetReadDeadline(deadline)
		}
		ub.limited = io.LimitedReader{R: r.Body, N: p.maxRequest + 6}
		_, err := ub.buf.ReadFrom(&ub.limited)
		ub.limited.R = nil
		switch {
		case err != nil && ctx.Err() != nil:
			p.fail(w, r, x, connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded while reading the request")))
			return
		case err != nil:
			p.fail(w, r, x, connect.NewError(connect.CodeCanceled, fmt.Errorf("read request: %w", err)))
			return
		case int64(ub.buf.Len()) > p.maxRequest+5:
			p.fail(w, r, x, tooLarge(p.maxRequest))
			return
		}
	}
	if len(ub.buf.Bytes()) >= 5 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		if err := checkEnvelope(ub.buf.Bytes(), p.maxRequest); err != nil {
			p.fail(w, r, x, err)
			return
		}
	} else if int64(ub.buf.Len()) > p.maxRequest {
		p.fail(w, r, x, tooLarge(p.maxRequest))
		return
	}
	ub.r.Reset(ub.buf.Bytes())
	out := r.WithContext(ctx)
	out.RequestURI = ""
	out.Body = ub
	out.ContentLength = int64(ub.buf.Len())
	out.GetBody = ub.getBody

	res, err := p.transport.RoundTrip(out)
	if err != nil {
		p.failUpstream(w, r, ctx, x, err)
		return
	}
	defer res.Body.Close()
	body, held := res.Body.(*callpolicy.Body)
	if !held || !body.Complete() {
		// Too large to hold: relay the rest as it comes.
		p.relay(w, r, res, nil, x)
		return
	}
	length := int64(len(body.Bytes()))
	if len(res.Trailer) > 0 || length < smallBody {
		// Small answers get their Content-Length from the server itself,
		// which sees the whole body before it sends anything.
		length = -1
	}
	writeHeader(w, res, length)
	_, _ = w.Write(body.Bytes())
	writeTrailer(w, res)
	p.finish(r, x, rpcstatus.Of(res, body.Bytes()))
}

// smallBody is the size under which net/http's server sets a response's
// Content-Length itself, having buffered all of it when the handler
// returns.
const smallBody = 2048

// checkEnvelope checks the 5-byte prefix of a framed request message
// (gRPC, gRPC-Web, Connect streaming): its flags, of which a request may
// set only compression's, and the length it announces.
func checkEnvelope(prefix []byte, limit int64) error {
	if flags := prefix[0]; flags&^1 != 0 {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(
			"malformed message envelope (flags 0x%02x): each message must start with a 5-byte prefix, a flags byte of 0 or 1 and its length", flags))
	}
	if n := binary.BigEndian.Uint32(prefix[1:5]); int64(n) > limit {
		return tooLarge(limit)
	}
	return nil
}

// tooLarge is the answer to a request message over the limit.
func tooLarge(limit int64) error {
	return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("request message exceeds the limit of %d bytes", limit))
}

// forwardStream forwards a call whose messages stream: the caller's body
// is passed on as it comes and the answer relayed as it comes.
func (p *proxy) forwardStream(ctx context.Context, w http.ResponseWriter, r *http.Request, x *exchange) {
	if r.ProtoMajor == 1 {
		// Let the upstream answer before the whole request body is read
		// (streams, early errors) without Go draining and closing it.
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	var body *requestBody
	out := r.WithContext(ctx)
	out.RequestURI = ""
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		body = &requestBody{body: r.Body, limit: p.maxRequest}
		out.Body = body
		out.GetBody = nil
		out.ContentLength = -1
	}
	res, err := p.transport.RoundTrip(out)
	if err != nil {
		if body != nil {
			body.Close()
			if fault := body.fault.Load(); fault != nil {
				p.fail(w, r, x, *fault)
				return
			}
		}
		p.failUpstream(w, r, ctx, x, err)
		return
	}
	defer res.Body.Close()
	p.relay(w, r, res, body, x)
}

// relay answers the caller with an upstream response as it comes,
// flushing stream messages as they arrive, and records the call. body,
// when not nil, is the caller's request body still being forwarded: it is
// closed once the upstream has answered in full. An upstream that fails in
// the middle resets the caller's stream, so the caller sees a failure and
// not a truncated success.
func (p *proxy) relay(w http.ResponseWriter, r *http.Request, res *http.Response, body *requestBody, x *exchange) {
	length := res.ContentLength
	if len(res.Trailer) > 0 {
		length = -1
	}
	writeHeader(w, res, length)

	var sniffer rpcstatus.Sniffer
	sniffer.Reset(res)
	if err := copyResponse(w, res.Body, rpcstatus.Streams(res.Header.Get("Content-Type")), &sniffer); err != nil {
		if body != nil {
			body.Close()
		}
		code := connect.CodeCanceled
		if r.Context().Err() == nil {
			code = connect.CodeUnavailable
			p.logger.WarnContext(r.Context(), "upstream response cut short", slog.String("service", x.route.logical), slog.String("error", err.Error()))
		}
		p.finish(r, x, code)
		panic(http.ErrAbortHandler)
	}
	writeTrailer(w, res)
	if body != nil {
		// The upstream has answered in full; stop forwarding whatever the
		// caller may still send so neither side waits on the other.
		body.Close()
	}
	p.finish(r, x, sniffer.Code(res))
}

// writeHeader sends an upstream's status and headers to the caller, with
// a Content-Length when length is known (not negative).
func writeHeader(w http.ResponseWriter, res *http.Response, length int64) {
	header := w.Header()
	for key, values := range res.Header {
		if !hopHeaders[key] {
			header[key] = values
		}
	}
	if length >= 0 {
		header["Content-Length"] = []string{strconv.FormatInt(length, 10)}
	}
	w.WriteHeader(res.StatusCode)
}

// writeTrailer sends an upstream's trailers, read in full, to the caller.
func writeTrailer(w http.ResponseWriter, res *http.Response) {
	header := w.Header()
	for key, values := range res.Trailer {
		header[http.TrailerPrefix+key] = values
	}
}

// copyResponse copies an upstream body to w, flushing after every read when
// the response is a stream so messages reach the caller as they come, and
// shows what it copies to sniffer.
func copyResponse(w http.ResponseWriter, src io.Reader, flush bool, sniffer *rpcstatus.Sniffer) error {
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)
	buf := *bufp
	flusher, _ := w.(http.Flusher)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			sniffer.See(buf[:n])
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if flush && flusher != nil {
				flusher.Flush()
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// fail answers the call with err in the caller's protocol and records it.
func (p *proxy) fail(w http.ResponseWriter, r *http.Request, x *exchange, err error) {
	_ = p.errors.Write(w, r, err)
	p.finish(r, x, connect.CodeOf(err))
}

// failUpstream answers a call the transport could not complete.
func (p *proxy) failUpstream(w http.ResponseWriter, r *http.Request, ctx context.Context, x *exchange, err error) {
	service := x.route.logical
	switch {
	case r.Context().Err() != nil:
		p.finish(r, x, connect.CodeCanceled) // the caller went away; nobody to answer
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		p.fail(w, r, x, connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded before the upstream answered")))
	case errors.Is(err, discovery.ErrNoInstances):
		p.fail(w, r, x, connect.NewError(connect.CodeUnavailable, fmt.Errorf("no healthy instances of %s", service)))
	case errors.Is(err, callpolicy.ErrAllOpen):
		p.fail(w, r, x, connect.NewError(connect.CodeUnavailable, fmt.Errorf("every instance of %s is failing", service)))
	case errors.Is(err, callpolicy.ErrThrottled):
		p.fail(w, r, x, shedLike(connect.CodeUnavailable, fmt.Sprintf("%s is failing; the call was not sent", service)))
	default:
		p.logger.WarnContext(ctx, "upstream call failed", slog.String("service", service), slog.String("error", err.Error()))
		p.fail(w, r, x, connect.NewError(connect.CodeUnavailable, fmt.Errorf("service %s is unreachable", service)))
	}
}

// shedLike is an error with the retry hint of a shed call.
func shedLike(code connect.Code, msg string) *connect.Error {
	return withRetryHint(code, msg, time.Second)
}

// withRetryHint is an error with a retry hint, as a shed call's: a
// Retry-After header in whole seconds (at least 1) and a
// google.rpc.RetryInfo detail of retryAfter.
func withRetryHint(code connect.Code, msg string, retryAfter time.Duration) *connect.Error {
	err := shed.Refusal("", retryAfter)
	out := connect.NewError(code, errors.New(msg))
	for _, d := range err.Details() {
		out.AddDetail(d)
	}
	out.Meta().Set("Retry-After", err.Meta().Get("Retry-After"))
	return out
}

// finish records a call: its metrics, its span's status and the access
// log line.
func (p *proxy) finish(r *http.Request, x *exchange, code connect.Code) {
	sm := p.metrics.unrouted
	service := unrouted
	if x.route != nil {
		sm = x.route.metrics
		service = x.route.logical
	}
	sm.observe(x.start, code)
	if x.span != nil && x.span.IsRecording() {
		x.span.SetAttributes(attribute.String("rpc.connect_rpc.error_code", server.CodeLabel(code)),
			attribute.String("keel.upstream.instance", x.report.Instance),
			attribute.Int("keel.upstream.attempts", x.report.Attempts))
		if code != 0 {
			x.span.SetStatus(codes.Error, server.CodeLabel(code))
		}
	}
	ctx := r.Context()
	if x.span != nil {
		ctx = trace.ContextWithSpan(ctx, x.span)
	}
	if !p.logger.Enabled(ctx, slog.LevelInfo) {
		return
	}
	attrs := []slog.Attr{
		slog.String("procedure", r.URL.Path),
		slog.String("protocol", x.protocol(r)),
		slog.String("upstream", service),
		slog.String("code", server.CodeLabel(code)),
		slog.Duration("duration", time.Since(x.start)),
		slog.String("instance", x.report.Instance),
		slog.Int("retries", max(x.report.Attempts-1, 0)),
	}
	if x.fault != "" {
		attrs = append(attrs, slog.String("fault", x.fault))
	}
	p.logger.LogAttrs(ctx, slog.LevelInfo, "call", attrs...)
}

// serverSpan are the options of every span the edge starts.
var serverSpan = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer), trace.WithNewRoot()}

// startSpan starts the edge's span of a call. The edge is the front door:
// it starts a new trace for every call and links the caller's trace
// context, if any, rather than letting callers choose traces and their
// sampling.
func (p *proxy) startSpan(ctx context.Context, r *http.Request, x *exchange) (context.Context, trace.Span) {
	opts := serverSpan
	if _, ok := r.Header["Traceparent"]; ok {
		if remote := trace.SpanContextFromContext(p.propagator.Extract(ctx, propagation.HeaderCarrier(r.Header))); remote.IsValid() {
			opts = append(opts[:len(opts):len(opts)], trace.WithLinks(trace.Link{SpanContext: remote}))
		}
	}
	for _, h := range [...]string{"Traceparent", "Tracestate", "Baggage"} {
		delete(r.Header, h)
	}
	method := strings.TrimPrefix(r.URL.Path, "/")
	ctx, span := p.tracer.Start(ctx, "edge "+method, opts...)
	if span.IsRecording() {
		// Most calls are not sampled: only those that are pay for their
		// attributes (the sampler, parent-based or by trace id, reads
		// none).
		span.SetAttributes(
			attribute.String("rpc.system", rpcSystem(r)),
			attribute.String("rpc.method", method),
			attribute.String("keel.protocol", x.protocol(r)),
		)
	}
	return ctx, span
}

// protocolOf names the call's protocol from its content type.
func protocolOf(r *http.Request) string {
	ct := r.Header.Get("Content-Type")
	switch {
	case strings.HasPrefix(ct, "application/grpc-web"):
		return "grpc-web"
	case strings.HasPrefix(ct, "application/grpc"):
		return "grpc"
	default:
		return "connect"
	}
}

func rpcSystem(r *http.Request) string {
	if protocolOf(r) == "connect" {
		return "connect_rpc"
	}
	return "grpc"
}

// acceptPost lists the content types of calls, as connect-go's handlers
// list theirs in Accept-Post.
const acceptPost = "application/grpc, application/grpc+json, application/grpc+proto, " +
	"application/grpc-web, application/grpc-web+json, application/grpc-web+proto, " +
	"application/connect+json, application/connect+proto, application/json, application/proto"

// callContentType reports whether ct (a Content-Type header, parameters
// and all) is that of a Connect, gRPC or gRPC-Web call in some codec.
func callContentType(ct string) bool {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.ToLower(strings.TrimSpace(ct))
	rest, ok := strings.CutPrefix(ct, "application/")
	if !ok {
		return false
	}
	switch rest {
	case "json", "proto", "grpc", "grpc-web":
		return true
	}
	for _, prefix := range [...]string{"grpc+", "grpc-web+", "connect+"} {
		if codec, ok := strings.CutPrefix(rest, prefix); ok && codec != "" {
			return true
		}
	}
	return false
}

// unsupportedMediaType answers a call in no protocol the edge knows (a
// POST of another content type, a GET without a codec), as connect-go
// does (HTTP 415, the accepted types in Accept-Post), with a body saying
// what to send instead: no protocol's error format applies to a caller
// that speaks none.
func unsupportedMediaType(w http.ResponseWriter, what string) {
	h := w.Header()
	h.Set("Accept-Post", acceptPost)
	h.Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusUnsupportedMediaType)
	_, _ = io.WriteString(w, what+"\n")
}

// quoteOrNone quotes s, or says "none" for an empty one.
func quoteOrNone(s string) string {
	if s == "" {
		return "none"
	}
	return strconv.Quote(s)
}

// requestBody forwards the caller's request body and can be closed by the
// proxy once the upstream has answered, which unblocks the transport's
// body copy on full-duplex streams. It refuses a message (envelope) over
// limit, since the edge enforces the request limit itself, and one whose
// envelope is malformed ([checkEnvelope]).
type requestBody struct {
	mu     sync.Mutex
	body   io.ReadCloser
	closed bool

	limit  int64
	header [5]byte
	have   int   // bytes of the current envelope header seen
	left   int64 // payload bytes of the current envelope still to pass
	fault  atomic.Pointer[error]
}

func (b *requestBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if fault := b.watch(p[:n]); fault != nil {
		b.fault.Store(&fault)
		return 0, fault
	}
	return n, err
}

// watch follows the envelopes in p and returns the error of one that is
// malformed or over the limit.
func (b *requestBody) watch(p []byte) error {
	for len(p) > 0 {
		if b.left > 0 {
			n := min(int64(len(p)), b.left)
			b.left -= n
			p = p[n:]
			continue
		}
		n := copy(b.header[b.have:], p)
		b.have += n
		p = p[n:]
		if b.have < len(b.header) {
			return nil
		}
		b.have = 0
		if err := checkEnvelope(b.header[:], b.limit); err != nil {
			return err
		}
		b.left = int64(binary.BigEndian.Uint32(b.header[1:]))
	}
	return nil
}

func (b *requestBody) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	return b.body.Close()
}
