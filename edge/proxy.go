package edge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/keelplatform/keel/internal/client"
	"github.com/keelplatform/keel/internal/discovery"
)

// proxy forwards Connect, gRPC and gRPC-Web calls to the service that owns
// them, unchanged: headers, body, status and trailers pass through, and
// the caller's deadline bounds the upstream call.
type proxy struct {
	routes    *routeTable
	transport *client.Transport
	errors    *connect.ErrorWriter
	logger    *slog.Logger
	metrics   *proxyMetrics
	// maxBuffer is the largest unary request body buffered so that a
	// failed instance can be retried; larger bodies stream through.
	maxBuffer int64
}

// hopHeaders are connection-level headers that must not be forwarded
// (RFC 9110, section 7.6.1). TE is handled on its own: "trailers" is kept,
// since gRPC servers require it.
var hopHeaders = map[string]bool{
	"Connection":          true,
	"Proxy-Connection":    true,
	"Keep-Alive":          true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (p *proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	protoService, ok := serviceOf(r.URL.Path)
	if !ok {
		p.fail(w, r, p.metrics.unrouted, start, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("%s is not a Keel procedure; want /package.Service/Method", r.URL.Path)))
		return
	}
	upstream, ok := p.routes.lookup(protoService)
	if !ok {
		p.fail(w, r, p.metrics.unrouted, start, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("unknown service %s", protoService)))
		return
	}
	sm := p.metrics.services[upstream]
	if r.ProtoMajor == 1 {
		// Let the upstream answer before the whole request body is read
		// (streams, early errors) without Go draining and closing it.
		_ = http.NewResponseController(w).EnableFullDuplex()
	}

	ctx := r.Context()
	if timeout, ok := requestTimeout(r.Header); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}

	out := &http.Request{
		Method:        r.Method,
		URL:           &url.URL{Scheme: "http", Host: upstream, Path: r.URL.Path, RawPath: r.URL.RawPath, RawQuery: r.URL.RawQuery},
		Header:        make(http.Header, len(r.Header)+1),
		ContentLength: r.ContentLength,
	}
	for key, values := range r.Header {
		// Keel-* headers carry identity the edge vouches for (the
		// authenticated user, say); a caller must never set them itself.
		if !hopHeaders[key] && !strings.HasPrefix(key, "Keel-") {
			out.Header[key] = values
		}
	}
	if te := r.Header["Te"]; len(te) > 0 && strings.Contains(strings.ToLower(te[0]), "trailers") {
		out.Header["Te"] = []string{"trailers"}
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := r.Header["X-Forwarded-For"]; len(prior) > 0 {
			host = strings.Join(prior, ", ") + ", " + host
		}
		out.Header["X-Forwarded-For"] = []string{host}
	}
	var body *requestBody
	m := p.routes.methods[r.URL.Path]
	if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
		if m.unary && r.ContentLength <= p.maxBuffer {
			// Buffer the single request message so that the call can be
			// sent to another instance if this one turns out to be dead.
			buf, err := io.ReadAll(io.LimitReader(r.Body, p.maxBuffer+1))
			switch {
			case err != nil:
				p.fail(w, r, sm, start, connect.NewError(connect.CodeCanceled, fmt.Errorf("read request: %w", err)))
				return
			case int64(len(buf)) > p.maxBuffer:
				body = &requestBody{body: readCloser{io.MultiReader(bytes.NewReader(buf), r.Body), r.Body}}
				out.Body = body
				out.ContentLength = -1
			default:
				out.Body = io.NopCloser(bytes.NewReader(buf))
				out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
				out.ContentLength = int64(len(buf))
			}
		} else {
			body = &requestBody{body: r.Body}
			out.Body = body
		}
	}
	if m.idempotent {
		ctx = client.Idempotent(ctx)
	}
	out = out.WithContext(ctx)

	if m.unary && body == nil {
		p.forwardUnary(w, r, ctx, out, m, sm, start, upstream)
		return
	}

	res, err := p.transport.RoundTrip(out)
	if err != nil {
		if body != nil {
			body.Close()
		}
		p.failUpstream(w, r, ctx, sm, start, upstream, err)
		return
	}
	defer res.Body.Close()
	p.relay(w, r, res, res.Body, body, sm, start, upstream)
}

// relay answers the caller with an upstream response whose body is read
// from src, flushing stream messages as they come, and records the call.
// body, when not nil, is the caller's request body still being forwarded:
// it is closed once the upstream has answered in full. An upstream that
// fails in the middle resets the caller's stream, so the caller sees a
// failure and not a truncated success.
func (p *proxy) relay(w http.ResponseWriter, r *http.Request, res *http.Response, src io.Reader, body *requestBody, sm *serviceMetrics, start time.Time, upstream string) {
	length := res.ContentLength
	if len(res.Trailer) > 0 {
		length = -1
	}
	p.writeHeader(w, res, length)

	contentType := res.Header.Get("Content-Type")
	var sniffer bodySniffer
	sniffer.sniffFor(res, contentType)
	if err := copyResponse(w, src, streams(contentType), &sniffer); err != nil {
		if body != nil {
			body.Close()
		}
		if r.Context().Err() == nil {
			sm.observe(start, connect.CodeUnavailable)
			p.logger.Warn("upstream response cut short", slog.String("service", upstream), slog.String("error", err.Error()))
		} else {
			sm.observe(start, connect.CodeCanceled)
		}
		panic(http.ErrAbortHandler)
	}
	p.writeTrailer(w, res)
	if body != nil {
		// The upstream has answered in full; stop forwarding whatever the
		// caller may still send so neither side waits on the other.
		body.Close()
	}
	sm.observe(start, responseCode(res, contentType, &sniffer))
}

// forwardUnary forwards a unary call whose request is buffered, reading
// the upstream's answer in full before answering the caller. An upstream
// that dies in the middle of its answer (killed, say) has then sent the
// caller nothing: the call is sent to another instance when it is
// idempotent, and fails cleanly with unavailable otherwise, rather than
// reaching the caller as a torn stream.
func (p *proxy) forwardUnary(w http.ResponseWriter, r *http.Request, ctx context.Context, out *http.Request, m method, sm *serviceMetrics, start time.Time, upstream string) {
	for attempt := 1; ; attempt++ {
		res, err := p.transport.RoundTrip(out)
		if err != nil {
			p.failUpstream(w, r, ctx, sm, start, upstream, err)
			return
		}
		buf, err := io.ReadAll(io.LimitReader(res.Body, p.maxBuffer+1))
		if err == nil && int64(len(buf)) > p.maxBuffer {
			// Too large to hold: relay the rest as it comes.
			defer res.Body.Close()
			p.relay(w, r, res, io.MultiReader(bytes.NewReader(buf), res.Body), nil, sm, start, upstream)
			return
		}
		res.Body.Close()
		if err == nil {
			contentType := res.Header.Get("Content-Type")
			var sniffer bodySniffer
			sniffer.sniffFor(res, contentType)
			sniffer.see(buf)
			length := int64(len(buf))
			if len(res.Trailer) > 0 {
				length = -1
			}
			p.writeHeader(w, res, length)
			_, _ = w.Write(buf)
			p.writeTrailer(w, res)
			sm.observe(start, responseCode(res, contentType, &sniffer))
			return
		}
		// The instance failed while answering; the caller has seen nothing.
		if res.Request != nil {
			p.transport.Eject(res.Request.URL.Host)
		}
		retry := m.idempotent && attempt < client.MaxAttempts && ctx.Err() == nil
		p.logger.Warn("upstream failed while answering", slog.String("service", upstream), slog.Bool("retry", retry), slog.String("error", err.Error()))
		if !retry {
			p.failUpstream(w, r, ctx, sm, start, upstream, err)
			return
		}
		if out.GetBody != nil {
			if out.Body, err = out.GetBody(); err != nil {
				p.failUpstream(w, r, ctx, sm, start, upstream, err)
				return
			}
		}
	}
}

// writeHeader sends an upstream's status and headers to the caller, with
// a Content-Length when length is known (not negative).
func (p *proxy) writeHeader(w http.ResponseWriter, res *http.Response, length int64) {
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
func (p *proxy) writeTrailer(w http.ResponseWriter, res *http.Response) {
	header := w.Header()
	for key, values := range res.Trailer {
		header[http.TrailerPrefix+key] = values
	}
}

// copyResponse copies an upstream body to w, flushing after every read when
// the response is a stream so messages reach the caller as they come, and
// shows what it copies to sniffer.
func copyResponse(w http.ResponseWriter, src io.Reader, flush bool, sniffer *bodySniffer) error {
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)
	buf := *bufp
	flusher, _ := w.(http.Flusher)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			sniffer.see(buf[:n])
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

// streams reports whether a response is framed as a stream of messages
// (gRPC, gRPC-Web, Connect streaming) rather than a single unary body.
func streams(ct string) bool {
	return strings.HasPrefix(ct, "application/grpc") || strings.HasPrefix(ct, "application/connect+")
}

// fail answers the call with err in the caller's protocol and counts it
// under sm with err's code.
func (p *proxy) fail(w http.ResponseWriter, r *http.Request, sm *serviceMetrics, start time.Time, err error) {
	_ = p.errors.Write(w, r, err)
	sm.observe(start, connect.CodeOf(err))
}

func (p *proxy) failUpstream(w http.ResponseWriter, r *http.Request, ctx context.Context, sm *serviceMetrics, start time.Time, upstream string, err error) {
	switch {
	case r.Context().Err() != nil:
		sm.observe(start, connect.CodeCanceled)
		return // the caller went away; nobody to answer
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		p.fail(w, r, sm, start, connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded before the upstream answered")))
	case errors.Is(err, discovery.ErrNoInstances):
		p.fail(w, r, sm, start, connect.NewError(connect.CodeUnavailable, fmt.Errorf("no healthy instances of %s", upstream)))
	default:
		p.logger.Warn("upstream call failed", slog.String("service", upstream), slog.String("error", err.Error()))
		p.fail(w, r, sm, start, connect.NewError(connect.CodeUnavailable, fmt.Errorf("service %s is unreachable", upstream)))
	}
}

// serviceOf returns "pkg.Service" from a procedure path "/pkg.Service/Method".
func serviceOf(path string) (string, bool) {
	if len(path) < 4 || path[0] != '/' {
		return "", false
	}
	rest := path[1:]
	slash := strings.IndexByte(rest, '/')
	if slash <= 0 || slash == len(rest)-1 || strings.IndexByte(rest[slash+1:], '/') >= 0 {
		return "", false
	}
	return rest[:slash], true
}

// requestTimeout reads the caller's deadline from gRPC's grpc-timeout or
// Connect's connect-timeout-ms header.
func requestTimeout(h http.Header) (time.Duration, bool) {
	if v := h["Connect-Timeout-Ms"]; len(v) > 0 {
		ms, err := strconv.ParseInt(v[0], 10, 64)
		if err == nil && ms > 0 {
			return time.Duration(ms) * time.Millisecond, true
		}
		return 0, false
	}
	if v := h["Grpc-Timeout"]; len(v) > 0 && len(v[0]) >= 2 {
		value, err := strconv.ParseInt(v[0][:len(v[0])-1], 10, 64)
		if err != nil || value <= 0 {
			return 0, false
		}
		unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[v[0][len(v[0])-1]]
		if unit == 0 {
			return 0, false
		}
		if value > int64(time.Duration(1<<62)/unit) {
			return 0, false
		}
		return time.Duration(value) * unit, true
	}
	return 0, false
}

type readCloser struct {
	io.Reader
	io.Closer
}

// requestBody forwards the caller's request body and can be closed by the
// proxy once the upstream has answered, which unblocks the transport's
// body copy on full-duplex streams.
type requestBody struct {
	mu     sync.Mutex
	body   io.ReadCloser
	closed bool
}

func (b *requestBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return 0, io.EOF
	}
	return b.body.Read(p)
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
