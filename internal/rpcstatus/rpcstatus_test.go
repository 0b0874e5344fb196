package rpcstatus_test

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/keelplatform/keel/internal/rpcstatus"
)

// Envelope flags, as the protocols define them.
const (
	flagCompressed = 0x01
	flagEndStream  = 0x02 // Connect streaming
	flagTrailers   = 0x80 // gRPC-Web
)

// envelope frames payload as one message of a stream: a flags byte, a
// big-endian length, the payload.
func envelope(flags byte, payload []byte) []byte {
	out := make([]byte, 5, 5+len(payload))
	out[0] = flags
	binary.BigEndian.PutUint32(out[1:], uint32(len(payload)))
	return append(out, payload...)
}

// concat joins the envelopes (or any byte slices) of one body.
func concat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// gzipped compresses data with gzip, as connect-go compresses messages.
func gzipped(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// response builds the response a status is read from; header and
// trailer alternate keys and values, keys in canonical form.
func response(status int, header, trailer []string) *http.Response {
	res := &http.Response{StatusCode: status, Header: http.Header{}, Trailer: http.Header{}}
	for i := 0; i+1 < len(header); i += 2 {
		res.Header.Add(header[i], header[i+1])
	}
	for i := 0; i+1 < len(trailer); i += 2 {
		res.Trailer.Add(trailer[i], trailer[i+1])
	}
	return res
}

// chunkings returns ways to cut body into the pieces a copy loop may see:
// whole, one byte at a time, at every single boundary for small bodies,
// and in a few fixed sizes.
func chunkings(body []byte) [][][]byte {
	out := [][][]byte{{body}}
	var bytewise [][]byte
	for i := range body {
		bytewise = append(bytewise, body[i:i+1])
	}
	out = append(out, bytewise)
	if len(body) <= 512 {
		for i := 0; i <= len(body); i++ {
			out = append(out, [][]byte{body[:i], body[i:]})
		}
	}
	for _, size := range []int{3, 100, 1000} {
		var chunks [][]byte
		for rest := body; len(rest) > 0; {
			n := min(size, len(rest))
			chunks = append(chunks, rest[:n])
			rest = rest[n:]
		}
		out = append(out, chunks)
	}
	return out
}

// sniff reads res's code with a Sniffer fed chunks in order.
func sniff(s *rpcstatus.Sniffer, res *http.Response, chunks [][]byte) connect.Code {
	s.Reset(res)
	for _, c := range chunks {
		s.See(c)
	}
	return s.Code(res)
}

// codeCase is a response and the code read from it.
type codeCase struct {
	name    string
	status  int
	header  []string
	trailer []string
	body    []byte
	want    connect.Code
}

// checkCodes checks every case through Of, and through a Sniffer fed the
// body in every chunking from [chunkings].
func checkCodes(t *testing.T, cases []codeCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := response(tc.status, tc.header, tc.trailer)
			if got := rpcstatus.Of(res, tc.body); got != tc.want {
				t.Fatalf("Of = %v, want %v", got, tc.want)
			}
			var s rpcstatus.Sniffer
			for _, chunks := range chunkings(tc.body) {
				if got := sniff(&s, res, chunks); got != tc.want {
					t.Fatalf("Sniffer fed %d chunks (first %d bytes) = %v, want %v", len(chunks), len(chunks[0]), got, tc.want)
				}
			}
		})
	}
}

func TestConnectUnaryCode(t *testing.T) {
	jsonType := []string{"Content-Type", "application/json"}
	longMessage := strings.Repeat("x", 10<<10)
	checkCodes(t, []codeCase{
		{name: "success", status: 200, header: []string{"Content-Type", "application/proto"}, body: []byte("\x0a\x03abc"), want: 0},
		{name: "success body mentioning an error", status: 200, header: jsonType, body: []byte(`{"code":"internal"}`), want: 0},
		{name: "error body", status: 404, header: jsonType, body: []byte(`{"code":"not_found","message":"no user 7"}`), want: connect.CodeNotFound},
		{name: "body code beats status", status: 500, header: jsonType, body: []byte(`{"code":"aborted"}`), want: connect.CodeAborted},
		{name: "first code member wins", status: 400, header: jsonType,
			body: []byte(`{"code":"failed_precondition","message":"m","details":[{"type":"t","debug":{"code":"internal"}}]}`),
			want: connect.CodeFailedPrecondition},
		{name: "escaped code in message is not a member", status: 503, header: jsonType,
			body: []byte(`{"message":"say \"code\":\"internal\"","code":"unavailable"}`), want: connect.CodeUnavailable},
		{name: "body cut after code", status: 500, header: jsonType,
			body: []byte(`{"code":"resource_exhausted","message":"` + longMessage), want: connect.CodeResourceExhausted},
		{name: "body cut inside code", status: 429, header: jsonType, body: []byte(`{"code":"unavai`), want: connect.CodeResourceExhausted},
		{name: "unknown code name", status: 400, header: jsonType, body: []byte(`{"code":"no_such_code"}`), want: connect.CodeUnknown},
		{name: "empty code name", status: 400, header: jsonType, body: []byte(`{"code":""}`), want: connect.CodeUnknown},
		{name: "not json", status: 502, header: []string{"Content-Type", "text/html"}, body: []byte("<html>Bad Gateway</html>"), want: connect.CodeUnavailable},
	})
}

// TestConnectUnaryCodeFromHTTPStatus covers error responses without a
// code in the body: the HTTP status decides.
func TestConnectUnaryCodeFromHTTPStatus(t *testing.T) {
	for status, want := range map[int]connect.Code{
		400: connect.CodeInvalidArgument,
		401: connect.CodeUnauthenticated,
		403: connect.CodePermissionDenied,
		404: connect.CodeUnimplemented,
		409: connect.CodeAlreadyExists,
		418: connect.CodeUnknown,
		429: connect.CodeResourceExhausted,
		499: connect.CodeCanceled,
		500: connect.CodeUnknown,
		501: connect.CodeUnimplemented,
		502: connect.CodeUnavailable,
		503: connect.CodeUnavailable,
		504: connect.CodeDeadlineExceeded,
	} {
		checkCodes(t, []codeCase{
			{name: fmt.Sprintf("%d no body", status), status: status, want: want},
			{name: fmt.Sprintf("%d json without code", status), status: status,
				header: []string{"Content-Type", "application/json"}, body: []byte(`{"message":"m"}`), want: want},
		})
	}
}

func TestConnectStreamCode(t *testing.T) {
	proto := []string{"Content-Type", "application/connect+proto"}
	message := envelope(0, []byte("\x0a\x03abc"))
	// A message that reads like an error must not be taken for the end.
	errorLikeMessage := envelope(0, []byte(`{"error":{"code":"internal"}}`))
	checkCodes(t, []codeCase{
		{name: "end without error", status: 200, header: proto, body: concat(message, envelope(flagEndStream, []byte(`{}`))), want: 0},
		{name: "end with metadata only", status: 200, header: []string{"Content-Type", "application/connect+json"},
			body: concat(errorLikeMessage, envelope(flagEndStream, []byte(`{"metadata":{"X-Count":["2"]}}`))), want: 0},
		{name: "end with error", status: 200, header: proto,
			body: concat(message, message, envelope(flagEndStream, []byte(`{"error":{"code":"permission_denied","message":"no"}}`))),
			want: connect.CodePermissionDenied},
		{name: "only the end, with error", status: 200, header: proto,
			body: envelope(flagEndStream, []byte(`{"error":{"code":"data_loss"},"metadata":{}}`)), want: connect.CodeDataLoss},
		{name: "large message before the end", status: 200, header: proto,
			body: concat(envelope(0, bytes.Repeat([]byte("m"), 20<<10)), envelope(flagEndStream, []byte(`{"error":{"code":"out_of_range"}}`))),
			want: connect.CodeOutOfRange},
		{name: "error with unknown code", status: 200, header: proto,
			body: envelope(flagEndStream, []byte(`{"error":{"code":"bogus"}}`)), want: connect.CodeUnknown},
		{name: "error without code", status: 200, header: proto,
			body: envelope(flagEndStream, []byte(`{"error":{"message":"m"}}`)), want: connect.CodeUnknown},
		{name: "http error status", status: 404, header: proto, want: connect.CodeUnimplemented},
		{name: "http error status beats end", status: 503, header: proto,
			body: envelope(flagEndStream, []byte(`{}`)), want: connect.CodeUnavailable},
	})
}

func TestConnectStreamCodeCompressed(t *testing.T) {
	gzipProto := []string{"Content-Type", "application/connect+proto", "Connect-Content-Encoding", "gzip"}
	message := envelope(flagCompressed, gzipped(t, []byte("\x0a\x03abc")))
	checkCodes(t, []codeCase{
		{name: "end with error", status: 200, header: gzipProto,
			body: concat(message, envelope(flagEndStream|flagCompressed, gzipped(t, []byte(`{"error":{"code":"unauthenticated"}}`)))),
			want: connect.CodeUnauthenticated},
		{name: "end without error", status: 200, header: gzipProto,
			body: concat(message, envelope(flagEndStream|flagCompressed, gzipped(t, []byte(`{}`)))), want: 0},
		{name: "uncompressed end in a gzip stream", status: 200, header: gzipProto,
			body: concat(message, envelope(flagEndStream, []byte(`{"error":{"code":"aborted"}}`))), want: connect.CodeAborted},
	})
}

func TestGRPCCode(t *testing.T) {
	grpc := []string{"Content-Type", "application/grpc"}
	body := envelope(0, []byte("\x0a\x03abc"))
	checkCodes(t, []codeCase{
		{name: "ok in trailers", status: 200, header: grpc, trailer: []string{"Grpc-Status", "0"}, body: body, want: 0},
		{name: "error in trailers", status: 200, header: grpc, trailer: []string{"Grpc-Status", "14", "Grpc-Message", "down"}, body: body,
			want: connect.CodeUnavailable},
		{name: "trailers-only", status: 200, header: []string{"Content-Type", "application/grpc+proto", "Grpc-Status", "5"},
			want: connect.CodeNotFound},
		{name: "highest code", status: 200, header: grpc, trailer: []string{"Grpc-Status", "16"}, want: connect.CodeUnauthenticated},
		{name: "code out of range", status: 200, header: grpc, trailer: []string{"Grpc-Status", "17"}, want: connect.CodeUnknown},
		{name: "code far out of range", status: 200, header: grpc, trailer: []string{"Grpc-Status", "4294967303"}, want: connect.CodeUnknown},
		{name: "negative code", status: 200, header: grpc, trailer: []string{"Grpc-Status", "-1"}, want: connect.CodeUnknown},
		{name: "garbage code", status: 200, header: grpc, trailer: []string{"Grpc-Status", "ok"}, want: connect.CodeUnknown},
		{name: "status in body is not read", status: 200, header: grpc,
			body: envelope(flagTrailers, []byte("grpc-status: 0\r\n")), want: connect.CodeUnknown},
	})
}

// TestGRPCCodeFromHTTPStatus covers gRPC responses without grpc-status,
// mapped as the gRPC spec's HTTP-to-gRPC table says.
func TestGRPCCodeFromHTTPStatus(t *testing.T) {
	for status, want := range map[int]connect.Code{
		200: connect.CodeUnknown, // a gRPC response must carry a status
		400: connect.CodeInternal,
		401: connect.CodeUnauthenticated,
		403: connect.CodePermissionDenied,
		404: connect.CodeUnimplemented,
		429: connect.CodeUnavailable,
		500: connect.CodeUnknown,
		502: connect.CodeUnavailable,
		503: connect.CodeUnavailable,
		504: connect.CodeUnavailable,
	} {
		checkCodes(t, []codeCase{
			{name: fmt.Sprintf("grpc %d", status), status: status, header: []string{"Content-Type", "application/grpc"}, want: want},
			{name: fmt.Sprintf("grpc-web %d", status), status: status, header: []string{"Content-Type", "application/grpc-web+proto"}, want: want},
		})
	}
}

func TestGRPCWebCode(t *testing.T) {
	web := []string{"Content-Type", "application/grpc-web+proto"}
	message := envelope(0, []byte("\x0a\x03abc"))
	// A message whose payload reads like trailers must not be taken for them.
	trailerLikeMessage := envelope(0, []byte("grpc-status: 13\r\n"))
	checkCodes(t, []codeCase{
		{name: "ok", status: 200, header: web, body: concat(message, envelope(flagTrailers, []byte("grpc-status: 0\r\ngrpc-message: \r\n"))), want: 0},
		{name: "error after messages", status: 200, header: web,
			body: concat(message, trailerLikeMessage, envelope(flagTrailers, []byte("grpc-message: denied\r\ngrpc-status: 7\r\n"))),
			want: connect.CodePermissionDenied},
		{name: "key in any case, spaces around value", status: 200, header: []string{"Content-Type", "application/grpc-web"},
			body: envelope(flagTrailers, []byte("Grpc-Status:  3 \r\n")), want: connect.CodeInvalidArgument},
		{name: "large message before trailers", status: 200, header: web,
			body: concat(envelope(0, bytes.Repeat([]byte("m"), 20<<10)), envelope(flagTrailers, []byte("grpc-status: 8\r\n"))),
			want: connect.CodeResourceExhausted},
		{name: "trailers-only in headers", status: 200, header: []string{"Content-Type", "application/grpc-web+proto", "Grpc-Status", "9"},
			want: connect.CodeFailedPrecondition},
		{name: "status out of range", status: 200, header: web, body: envelope(flagTrailers, []byte("grpc-status: 99\r\n")), want: connect.CodeUnknown},
		{name: "trailers without status", status: 200, header: web, body: envelope(flagTrailers, []byte("grpc-message: x\r\n")), want: connect.CodeUnknown},
		{name: "no trailer frame", status: 200, header: web, body: concat(message, trailerLikeMessage), want: connect.CodeUnknown},
	})
}

// TestGRPCWebCodeSplitAnywhere feeds a gRPC-Web body to a Sniffer cut
// into three pieces at every pair of boundaries (empty pieces included),
// which covers every cut inside an envelope header and payload.
func TestGRPCWebCodeSplitAnywhere(t *testing.T) {
	res := response(200, []string{"Content-Type", "application/grpc-web+proto"}, nil)
	body := concat(
		envelope(0, []byte("\x0a\x03abc")),
		envelope(0, []byte("grpc-status: 13\r\n")),
		envelope(flagTrailers, []byte("grpc-status: 10\r\ngrpc-message: conflict\r\n")),
	)
	var s rpcstatus.Sniffer
	for i := 0; i <= len(body); i++ {
		for j := i; j <= len(body); j++ {
			if got := sniff(&s, res, [][]byte{body[:i], body[i:j], body[j:]}); got != connect.CodeAborted {
				t.Fatalf("cut at %d and %d: code %v, want %v", i, j, got, connect.CodeAborted)
			}
		}
	}
}

func TestGRPCWebCodeCompressed(t *testing.T) {
	gzipWeb := []string{"Content-Type", "application/grpc-web+proto", "Grpc-Encoding", "gzip"}
	message := envelope(flagCompressed, gzipped(t, []byte("\x0a\x03abc")))
	checkCodes(t, []codeCase{
		{name: "error", status: 200, header: gzipWeb,
			body: concat(message, envelope(flagTrailers|flagCompressed, gzipped(t, []byte("grpc-status: 4\r\ngrpc-message: slow\r\n")))),
			want: connect.CodeDeadlineExceeded},
		{name: "ok", status: 200, header: gzipWeb,
			body: concat(message, envelope(flagTrailers|flagCompressed, gzipped(t, []byte("grpc-status: 0\r\n")))), want: 0},
		{name: "unsupported encoding", status: 200, header: []string{"Content-Type", "application/grpc-web+proto", "Grpc-Encoding", "br"},
			body: envelope(flagTrailers|flagCompressed, []byte("grpc-status: 0\r\n")), want: connect.CodeUnknown},
		{name: "corrupt gzip", status: 200, header: gzipWeb,
			body: envelope(flagTrailers|flagCompressed, []byte("grpc-status: 0\r\n")), want: connect.CodeUnknown},
	})
}

// TestSnifferResetForgetsThePreviousResponse reuses one Sniffer, as the
// edge does, for a response whose status it kept and then for one that
// ends without any.
func TestSnifferResetForgetsThePreviousResponse(t *testing.T) {
	web := response(200, []string{"Content-Type", "application/grpc-web+proto"}, nil)
	connectStream := response(200, []string{"Content-Type", "application/connect+proto"}, nil)
	unary := response(404, []string{"Content-Type", "application/json"}, nil)
	var s rpcstatus.Sniffer
	steps := []struct {
		res  *http.Response
		body []byte
		want connect.Code
	}{
		{web, envelope(flagTrailers, []byte("grpc-status: 7\r\n")), connect.CodePermissionDenied},
		{web, envelope(0, []byte("x")), connect.CodeUnknown}, // no trailers this time
		{connectStream, envelope(flagEndStream, []byte(`{"error":{"code":"aborted"}}`)), connect.CodeAborted},
		{connectStream, envelope(0, []byte("x")), connect.CodeUnknown}, // cut off before its end-stream message
		{unary, []byte(`{"code":"not_found"}`), connect.CodeNotFound},
		{unary, nil, connect.CodeUnimplemented},
		// Half an envelope header left over must not shift the next body.
		{web, []byte{0, 0, 0}, connect.CodeUnknown},
		{web, envelope(flagTrailers, []byte("grpc-status: 11\r\n")), connect.CodeOutOfRange},
	}
	for i, step := range steps {
		if got := sniff(&s, step.res, [][]byte{step.body}); got != step.want {
			t.Fatalf("response %d: code %v, want %v", i, got, step.want)
		}
	}
}

func TestStreams(t *testing.T) {
	for _, tc := range []struct {
		contentType string
		want        bool
	}{
		{"application/grpc", true},
		{"application/grpc+proto", true},
		{"application/grpc-web", true},
		{"application/grpc-web+json", true},
		{"application/connect+proto", true},
		{"application/connect+json", true},
		{"application/proto", false},
		{"application/json", false},
		{"application/json; charset=utf-8", false},
		{"text/plain", false},
		{"", false},
	} {
		if got := rpcstatus.Streams(tc.contentType); got != tc.want {
			t.Errorf("Streams(%q) = %v, want %v", tc.contentType, got, tc.want)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		name    string
		header  []string
		trailer []string
		want    time.Duration
		ok      bool
	}{
		{name: "none"},
		{name: "header", header: []string{"Retry-After", "2"}, want: 2 * time.Second, ok: true},
		{name: "trailer", trailer: []string{"Retry-After", "3"}, want: 3 * time.Second, ok: true},
		{name: "header beats trailer", header: []string{"Retry-After", "1"}, trailer: []string{"Retry-After", "9"}, want: time.Second, ok: true},
		{name: "fraction", header: []string{"Retry-After", "0.25"}, want: 250 * time.Millisecond, ok: true},
		{name: "zero", header: []string{"Retry-After", "0"}, want: 0, ok: true},
		{name: "an hour", header: []string{"Retry-After", "3600"}, want: time.Hour, ok: true},
		{name: "over an hour", header: []string{"Retry-After", "3601"}},
		{name: "huge", header: []string{"Retry-After", "1e300"}},
		{name: "infinite", header: []string{"Retry-After", "+Inf"}},
		{name: "negative", header: []string{"Retry-After", "-1"}},
		{name: "negative fraction", header: []string{"Retry-After", "-0.5"}},
		{name: "garbage", header: []string{"Retry-After", "soon"}},
		{name: "http date", header: []string{"Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT"}},
		{name: "empty", header: []string{"Retry-After", ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := rpcstatus.RetryAfter(response(503, tc.header, tc.trailer))
			if got != tc.want || ok != tc.ok {
				t.Fatalf("RetryAfter = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}
