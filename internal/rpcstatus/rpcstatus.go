// Package rpcstatus reads the outcome of a Connect, gRPC or gRPC-Web call
// from its HTTP response, without decoding messages: the Connect code and
// whether the server asked to be retried later. gRPC carries its status in
// HTTP headers or trailers, gRPC-Web in a trailer frame at the end of the
// body, Connect streams in an end-stream message and Connect unary calls
// in the HTTP status and an error body; Keel decides retries, counts calls
// and logs them from this one reading, whatever the protocol.
package rpcstatus

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
)

// Envelope flags of the final message of a stream.
const (
	grpcWebTrailerFlag   = 0x80
	connectEndStreamFlag = 0x02
	compressedFlag       = 0x01
)

// maxKept bounds what a [Sniffer] keeps of a response.
const maxKept = 4 << 10

// Streams reports whether a response (or request) of content type ct is
// framed as a stream of messages (gRPC, gRPC-Web, Connect streaming)
// rather than a single unary body.
func Streams(ct string) bool {
	return strings.HasPrefix(ct, "application/grpc") || strings.HasPrefix(ct, "application/connect+")
}

// Sniffer watches a response body as it is copied and keeps the part that
// carries the call's status: the final envelope of a gRPC-Web or Connect
// stream (skipping message payloads), or the start of a unary error body.
// The zero value watches nothing; call [Sniffer.Reset] for each response.
// A Sniffer is not safe for concurrent use.
type Sniffer struct {
	endFlag byte // 0: keep the body's start instead of following envelopes
	active  bool

	header     [5]byte
	headerLen  int
	remaining  int  // payload bytes of the current envelope not seen yet
	final      bool // the current envelope is the final one
	compressed bool // the final envelope is compressed
	ended      bool // the final envelope was seen whole
	kept       []byte
}

// Reset prepares s for res: envelopes for gRPC-Web and Connect streams,
// the body's start for unary errors, nothing otherwise (gRPC carries its
// status in HTTP headers or trailers).
func (s *Sniffer) Reset(res *http.Response) {
	kept := s.kept[:0]
	*s = Sniffer{kept: kept}
	contentType := contentTypeOf(res)
	switch {
	case strings.HasPrefix(contentType, "application/grpc-web"):
		s.active, s.endFlag = headerValue(res.Header, "Grpc-Status") == "", grpcWebTrailerFlag
	case strings.HasPrefix(contentType, "application/grpc"):
	case strings.HasPrefix(contentType, "application/connect+"):
		s.active, s.endFlag = true, connectEndStreamFlag
	default:
		s.active = res.StatusCode != http.StatusOK && headerValue(res.Header, "Content-Encoding") == ""
	}
}

// See shows s the next bytes of the body.
func (s *Sniffer) See(p []byte) {
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
				s.ended = s.remaining == 0
			}
			continue
		}
		n := min(s.remaining, len(p))
		if s.final {
			s.keep(p[:n])
		}
		s.remaining -= n
		p = p[n:]
		if s.final && s.remaining == 0 {
			s.ended = true
		}
	}
}

func (s *Sniffer) keep(p []byte) {
	if room := maxKept - len(s.kept); room > 0 {
		s.kept = append(s.kept, p[:min(room, len(p))]...)
	}
}

// Code reads the call's code from res, whose body s has seen in full
// (and whose trailers, for gRPC, have arrived). It returns 0 for success.
func (s *Sniffer) Code(res *http.Response) connect.Code {
	contentType := contentTypeOf(res)
	switch {
	case strings.HasPrefix(contentType, "application/grpc-web"):
		if v := headerValue(res.Header, "Grpc-Status"); v != "" {
			return grpcCode(v)
		}
		trailers := s.kept
		if s.compressed {
			trailers = gunzipped(headerValue(res.Header, "Grpc-Encoding"), trailers)
		}
		if v, ok := grpcWebStatus(trailers); ok {
			return grpcCode(v)
		}
		return grpcHTTPCode(res.StatusCode)
	case strings.HasPrefix(contentType, "application/grpc"):
		if v := headerValue(res.Trailer, "Grpc-Status"); v != "" {
			return grpcCode(v)
		}
		if v := headerValue(res.Header, "Grpc-Status"); v != "" {
			return grpcCode(v)
		}
		return grpcHTTPCode(res.StatusCode)
	case strings.HasPrefix(contentType, "application/connect+"):
		if res.StatusCode != http.StatusOK {
			return connectHTTPCode(res.StatusCode)
		}
		if !s.ended {
			return connect.CodeUnknown // cut off before its end-stream message
		}
		end := s.kept
		if s.compressed {
			if end = gunzipped(headerValue(res.Header, "Connect-Content-Encoding"), end); end == nil {
				return connect.CodeUnknown
			}
		}
		return endStreamCode(end)
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

// Of reads the code of a response whose whole body is body (a unary call
// buffered in full, gRPC trailers included).
func Of(res *http.Response, body []byte) connect.Code {
	if res.StatusCode == http.StatusOK && !Streams(contentTypeOf(res)) {
		return 0 // a unary Connect success: no need to look at the body
	}
	var s Sniffer
	s.Reset(res)
	s.See(body)
	return s.Code(res)
}

// RetryAfter reports the delay a server asked for before the call is
// tried again, from a Retry-After header or trailer in seconds (as Keel
// servers send with resource_exhausted and unavailable when they shed
// load), and whether it asked at all.
func RetryAfter(res *http.Response) (time.Duration, bool) {
	v := headerValue(res.Header, "Retry-After")
	if v == "" {
		v = headerValue(res.Trailer, "Retry-After")
	}
	if v == "" {
		return 0, false
	}
	secs, err := strconv.ParseFloat(v, 64)
	if err != nil || !(secs >= 0 && secs <= 3600) { // refuses NaN too
		return 0, false
	}
	return time.Duration(secs * float64(time.Second)), true
}

// headerValue is h.Get for a canonical key, without canonicalizing it
// again.
func headerValue(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func contentTypeOf(res *http.Response) string { return headerValue(res.Header, "Content-Type") }

// endStreamCode reads the code of a Connect end-stream message: 0 when it
// has no error, the error's code otherwise.
func endStreamCode(end []byte) connect.Code {
	var msg struct {
		Error *struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(end, &msg); err != nil {
		return connect.CodeUnknown
	}
	if msg.Error == nil {
		return 0
	}
	var code connect.Code
	if err := code.UnmarshalText([]byte(msg.Error.Code)); err != nil || code == 0 {
		return connect.CodeUnknown
	}
	return code
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
// a body cut at [maxKept] still yields its code.
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
	out, _ := io.ReadAll(io.LimitReader(r, maxKept))
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
		return connect.CodeUnimplemented
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
