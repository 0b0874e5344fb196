package edge

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keelplatform/keel/internal/server"
)

// unrouted is the service label of calls the edge routes nowhere (a bad
// path, an unknown service). Service names from the path are never used
// as labels: callers must not be able to grow the label set.
const unrouted = "unrouted"

// proxyMetrics are the edge's per-service call metrics. The set of
// services is fixed at construction, so lookups need no lock.
type proxyMetrics struct {
	services map[string]*serviceMetrics // by logical service
	unrouted *serviceMetrics
}

// serviceMetrics are one label value's resolved series.
type serviceMetrics struct {
	codes    *server.CodeCounters
	duration prometheus.Observer
}

func newProxyMetrics(reg prometheus.Registerer, routes *routeTable) (*proxyMetrics, error) {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keel_edge_requests_total",
		Help: `Calls the edge proxied or answered itself, by logical service ("unrouted" when none) and Connect code as the upstream returned it.`,
	}, []string{"service", "code"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "keel_edge_duration_seconds",
		Help:    "Time from a call's arrival at the edge to the end of its response, by logical service.",
		Buckets: server.LatencyBuckets,
	}, []string{"service"})
	for _, c := range []prometheus.Collector{requests, duration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	resolve := func(service string) *serviceMetrics {
		return &serviceMetrics{codes: server.NewCodeCounters(requests, service), duration: duration.WithLabelValues(service)}
	}
	m := &proxyMetrics{services: make(map[string]*serviceMetrics), unrouted: resolve(unrouted)}
	for _, logical := range routes.upstream {
		if _, ok := m.services[logical]; !ok {
			m.services[logical] = resolve(logical)
		}
	}
	return m, nil
}

func (m *serviceMetrics) observe(start time.Time, code connect.Code) {
	m.duration.Observe(time.Since(start).Seconds())
	m.codes.Inc(code)
}

// Envelope flags of the final message of a stream.
const (
	grpcWebTrailerFlag   = 0x80
	connectEndStreamFlag = 0x02
	compressedFlag       = 0x01
)

// maxSniffed bounds what a [bodySniffer] keeps of a response.
const maxSniffed = 4 << 10

// bodySniffer watches a response body as the proxy copies it and keeps
// the part that carries the call's status: the final envelope of a
// gRPC-Web or Connect stream (skipping message payloads), or the start of
// a unary error body. The zero value watches nothing.
type bodySniffer struct {
	endFlag byte // 0: keep the body's start instead of following envelopes
	active  bool

	header     [5]byte
	headerLen  int
	remaining  int  // payload bytes of the current envelope not seen yet
	final      bool // the current envelope is the final one
	compressed bool // the final envelope is compressed
	kept       []byte
}

func (s *bodySniffer) see(p []byte) {
	if !s.active {
		return
	}
	if s.endFlag == 0 {
		s.keep(p)
		return
	}
	for len(p) > 0 {
		if s.remaining == 0 {
			n := copy(s.header[s.headerLen:], p)
			s.headerLen += n
			p = p[n:]
			if s.headerLen < len(s.header) {
				return
			}
			s.headerLen = 0
			s.remaining = int(binary.BigEndian.Uint32(s.header[1:]))
			s.final = s.header[0]&s.endFlag != 0
			if s.final {
				s.compressed = s.header[0]&compressedFlag != 0
				s.kept = s.kept[:0]
			}
			continue
		}
		n := min(s.remaining, len(p))
		if s.final {
			s.keep(p[:n])
		}
		s.remaining -= n
		p = p[n:]
	}
}

func (s *bodySniffer) keep(p []byte) {
	if room := maxSniffed - len(s.kept); room > 0 {
		s.kept = append(s.kept, p[:min(room, len(p))]...)
	}
}

// sniffFor prepares s for a response: envelopes for gRPC-Web and Connect
// streams, the body's start for unary errors, nothing otherwise (gRPC
// carries its status in HTTP headers or trailers).
func (s *bodySniffer) sniffFor(res *http.Response, contentType string) {
	switch {
	case strings.HasPrefix(contentType, "application/grpc-web"):
		s.active, s.endFlag = res.Header.Get("Grpc-Status") == "", grpcWebTrailerFlag
	case strings.HasPrefix(contentType, "application/grpc"):
	case strings.HasPrefix(contentType, "application/connect+"):
		s.active, s.endFlag = true, connectEndStreamFlag
	default:
		s.active = res.StatusCode != http.StatusOK && res.Header.Get("Content-Encoding") == ""
	}
}

// responseCode reads the call's code from an upstream response copied in
// full, with s having watched its body.
func responseCode(res *http.Response, contentType string, s *bodySniffer) connect.Code {
	switch {
	case strings.HasPrefix(contentType, "application/grpc-web"):
		if v := res.Header.Get("Grpc-Status"); v != "" {
			return grpcCode(v)
		}
		trailers := s.kept
		if s.compressed {
			trailers = gunzipped(res.Header.Get("Grpc-Encoding"), trailers)
		}
		if v, ok := grpcWebStatus(trailers); ok {
			return grpcCode(v)
		}
		return grpcHTTPCode(res.StatusCode)
	case strings.HasPrefix(contentType, "application/grpc"):
		if v := res.Trailer.Get("Grpc-Status"); v != "" {
			return grpcCode(v)
		}
		if v := res.Header.Get("Grpc-Status"); v != "" {
			return grpcCode(v)
		}
		return grpcHTTPCode(res.StatusCode)
	case strings.HasPrefix(contentType, "application/connect+"):
		if res.StatusCode != http.StatusOK {
			return connectHTTPCode(res.StatusCode)
		}
		end := s.kept
		if s.compressed {
			end = gunzipped(res.Header.Get("Connect-Content-Encoding"), end)
		}
		if !bytes.Contains(end, []byte(`"error"`)) {
			return 0
		}
		if code, ok := jsonCode(end); ok {
			return code
		}
		return connect.CodeUnknown
	default:
		if res.StatusCode == http.StatusOK {
			return 0
		}
		if code, ok := jsonCode(s.kept); ok {
			return code
		}
		return connectHTTPCode(res.StatusCode)
	}
}

// grpcWebStatus finds grpc-status in a gRPC-Web trailer block
// ("key: value\r\n" lines, keys in any case).
func grpcWebStatus(trailers []byte) (string, bool) {
	for len(trailers) > 0 {
		line, rest, _ := bytes.Cut(trailers, []byte("\n"))
		trailers = rest
		key, value, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(key), []byte("grpc-status")) {
			return string(bytes.TrimSpace(value)), true
		}
	}
	return "", false
}

// jsonCode finds the Connect error code in a Connect error body or
// end-stream message: the first "code":"..." member, which connect-go
// writes first in its error object. It is a scan, not a parse, so that
// a body cut at [maxSniffed] still yields its code.
func jsonCode(body []byte) (connect.Code, bool) {
	const member = `"code":"`
	i := bytes.Index(body, []byte(member))
	if i < 0 {
		return 0, false
	}
	name, _, ok := bytes.Cut(body[i+len(member):], []byte(`"`))
	if !ok {
		return 0, false
	}
	var code connect.Code
	if err := code.UnmarshalText(name); err != nil || code == 0 {
		return connect.CodeUnknown, true
	}
	return code, true
}

// gunzipped decompresses a gzip final envelope (connect-go compresses
// gRPC-Web trailers and Connect end-stream messages like any message);
// other encodings give nil, which reads as an unknown code.
func gunzipped(encoding string, data []byte) []byte {
	if encoding != "gzip" {
		return nil
	}
	r, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return nil
	}
	out, _ := io.ReadAll(io.LimitReader(r, maxSniffed))
	return out
}

// grpcCode reads a grpc-status value; the numbers are Connect's codes.
func grpcCode(v string) connect.Code {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n > uint64(connect.CodeUnauthenticated) {
		return connect.CodeUnknown
	}
	return connect.Code(n)
}

// grpcHTTPCode maps the HTTP status of a gRPC response without
// grpc-status, as the gRPC spec's HTTP-to-gRPC table does.
func grpcHTTPCode(status int) connect.Code {
	switch status {
	case http.StatusBadRequest:
		return connect.CodeInternal
	case http.StatusUnauthorized:
		return connect.CodeUnauthenticated
	case http.StatusForbidden:
		return connect.CodePermissionDenied
	case http.StatusNotFound:
		return connect.CodeUnimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return connect.CodeUnavailable
	}
	return connect.CodeUnknown
}

// connectHTTPCode maps the HTTP status of a Connect error whose body gave
// no code back to the code most likely to have produced it (the Connect
// protocol maps several codes to one status).
func connectHTTPCode(status int) connect.Code {
	switch status {
	case http.StatusOK:
		return 0
	case http.StatusBadRequest:
		return connect.CodeInvalidArgument
	case http.StatusUnauthorized:
		return connect.CodeUnauthenticated
	case http.StatusForbidden:
		return connect.CodePermissionDenied
	case http.StatusNotFound:
		return connect.CodeNotFound
	case http.StatusConflict:
		return connect.CodeAlreadyExists
	case http.StatusTooManyRequests:
		return connect.CodeResourceExhausted
	case 499:
		return connect.CodeCanceled
	case http.StatusNotImplemented:
		return connect.CodeUnimplemented
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return connect.CodeUnavailable
	case http.StatusGatewayTimeout:
		return connect.CodeDeadlineExceeded
	}
	return connect.CodeUnknown
}
