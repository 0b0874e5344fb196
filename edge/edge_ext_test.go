package edge_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keelplatform/keel/edge"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/testkit"
)

const echoService = "keel.test.v1.EchoService"

// echo is an upstream with one procedure per proxying hazard: a bidi
// stream the server ends first, a server stream with trailers, a client
// stream the server rejects early, and a unary call that waits for its
// deadline.
type echo struct {
	sawDeadline atomic.Int64 // remaining time the upstream saw, in ms
	waits       atomic.Int32 // calls of Wait
}

func (e *echo) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/"+echoService+"/Bidi", connect.NewBidiStreamHandler("/"+echoService+"/Bidi",
		func(ctx context.Context, stream *connect.BidiStream[wrapperspb.StringValue, wrapperspb.StringValue]) error {
			for {
				msg, err := stream.Receive()
				if err != nil {
					return nil
				}
				if msg.GetValue() == "stop" {
					return nil // end the stream while the client still sends
				}
				if err := stream.Send(msg); err != nil {
					return err
				}
			}
		}))
	mux.Handle("/"+echoService+"/Count", connect.NewServerStreamHandler("/"+echoService+"/Count",
		func(ctx context.Context, req *connect.Request[wrapperspb.Int32Value], stream *connect.ServerStream[wrapperspb.Int32Value]) error {
			for i := range req.Msg.GetValue() {
				if err := stream.Send(wrapperspb.Int32(i)); err != nil {
					return err
				}
			}
			stream.ResponseTrailer().Set("X-Count", "done")
			return nil
		}))
	mux.Handle("/"+echoService+"/Sink", connect.NewClientStreamHandler("/"+echoService+"/Sink",
		func(ctx context.Context, stream *connect.ClientStream[wrapperspb.StringValue]) (*connect.Response[wrapperspb.Int64Value], error) {
			var n int64
			for stream.Receive() {
				if stream.Msg().GetValue() == "fail" {
					return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("rejected early"))
				}
				n += int64(len(stream.Msg().GetValue()))
			}
			return connect.NewResponse(wrapperspb.Int64(n)), stream.Err()
		}))
	mux.Handle("/"+echoService+"/Wait", connect.NewUnaryHandler("/"+echoService+"/Wait",
		func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			e.waits.Add(1)
			if deadline, ok := ctx.Deadline(); ok {
				e.sawDeadline.Store(time.Until(deadline).Milliseconds())
			}
			<-ctx.Done()
			return nil, connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
		}))
	mux.Handle("/"+echoService+"/Headers", connect.NewUnaryHandler("/"+echoService+"/Headers",
		func(ctx context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			// Answer with the request header named in the message.
			return connect.NewResponse(wrapperspb.String(strings.Join(req.Header().Values(req.Msg.GetValue()), ","))), nil
		}))
	return mux
}

type fixture struct {
	url      string
	upstream *echo
	registry *discovery.Static
}

func startEdge(t *testing.T) *fixture {
	t.Helper()
	return startEdgeWith(t, nil)
}

// startEdgeWith starts an edge in front of the echo upstream, its
// configuration changed by configure when not nil.
func startEdgeWith(t *testing.T, configure func(*edge.Config)) *fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	up := &echo{}
	upstream := server.New(server.Config{}, slog.New(slog.DiscardHandler))
	upstream.HandleHTTP("/", up.mux())
	if err := upstream.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = upstream.Serve(ctx) }()

	registry := discovery.NewStatic()
	if err := registry.Register(ctx, discovery.Instance{ID: "echo-1", Service: "echo", Addr: upstream.Addr()}); err != nil {
		t.Fatal(err)
	}
	cfg := edge.Config{
		Server:   server.Config{Addr: "127.0.0.1:0"},
		Services: []string{echoService, "keel.test.v1.EmptyService", userv1connect.UserServiceName},
		Routes:   map[string]string{echoService: "echo", "keel.test.v1.EmptyService": "empty"},
	}
	if configure != nil {
		configure(&cfg)
	}
	e, err := edge.New(cfg, registry, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = e.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return &fixture{url: "http://" + e.Addr(), upstream: up, registry: registry}
}

func TestBidiStreamEndedByServerDoesNotHang(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	for name, opts := range map[string][]connect.ClientOption{
		"grpc":    {connect.WithGRPC()},
		"connect": nil,
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](testkit.H2CClient(), f.url+"/"+echoService+"/Bidi", opts...)
			stream := c.CallBidiStream(ctx)
			if err := stream.Send(wrapperspb.String("a")); err != nil {
				t.Fatal(err)
			}
			msg, err := stream.Receive()
			if err != nil || msg.GetValue() != "a" {
				t.Fatalf("echo: %v %v", msg, err)
			}
			if err := stream.Send(wrapperspb.String("stop")); err != nil {
				t.Fatal(err)
			}
			// The client never closes its side; the server's end must still arrive.
			_, err = stream.Receive()
			if !errors.Is(err, io.EOF) {
				t.Fatalf("want clean end of stream, got %v", err)
			}
			if ctx.Err() != nil {
				t.Fatal("stream hung until the deadline")
			}
			_ = stream.CloseRequest()
			_ = stream.CloseResponse()
		})
	}
}

func TestServerStreamKeepsTrailers(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	for name, tc := range map[string]struct {
		client *http.Client
		opts   []connect.ClientOption
	}{
		"grpc over h2c":          {testkit.H2CClient(), []connect.ClientOption{connect.WithGRPC()}},
		"grpc-web over http/1.1": {http.DefaultClient, []connect.ClientOption{connect.WithGRPCWeb()}},
		"connect over http/1.1":  {http.DefaultClient, nil},
	} {
		t.Run(name, func(t *testing.T) {
			c := connect.NewClient[wrapperspb.Int32Value, wrapperspb.Int32Value](tc.client, f.url+"/"+echoService+"/Count", tc.opts...)
			stream, err := c.CallServerStream(context.Background(), connect.NewRequest(wrapperspb.Int32(500)))
			if err != nil {
				t.Fatal(err)
			}
			var got int32
			for stream.Receive() {
				if stream.Msg().GetValue() != got {
					t.Fatalf("message %d out of order: %d", got, stream.Msg().GetValue())
				}
				got++
			}
			if err := stream.Err(); err != nil {
				t.Fatal(err)
			}
			if got != 500 {
				t.Fatalf("got %d messages", got)
			}
			if v := stream.ResponseTrailer().Get("X-Count"); v != "done" {
				t.Fatalf("trailer lost: %q", v)
			}
		})
	}
}

func TestEarlyAnswerToClientStreamOverHTTP1(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	// A Connect client stream over HTTP/1.1 whose whole 8 MiB body is ready
	// to send, while the upstream answers after the first message.
	var body bytes.Buffer
	for i := range 513 {
		msg := wrapperspb.String(strings.Repeat("x", 16<<10))
		if i == 0 {
			msg = wrapperspb.String("fail")
		}
		payload, err := proto.Marshal(msg)
		if err != nil {
			t.Fatal(err)
		}
		body.WriteByte(0)
		_ = binary.Write(&body, binary.BigEndian, uint32(len(payload)))
		body.Write(payload)
	}
	req, _ := http.NewRequest(http.MethodPost, f.url+"/"+echoService+"/Sink", &body)
	req.Header.Set("Content-Type", "application/connect+proto")
	req.Header.Set("Connect-Protocol-Version", "1")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	got, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("response torn down: %v (read %q)", err, got)
	}
	if res.StatusCode != http.StatusOK || len(got) < 5 || got[0]&0x02 == 0 || !bytes.Contains(got, []byte(`"failed_precondition"`)) {
		t.Fatalf("want an end-of-stream envelope with failed_precondition, got %d %q", res.StatusCode, got)
	}
}

func TestDeadlineIsHonouredAndPropagated(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	for name, opts := range map[string][]connect.ClientOption{
		"grpc":    {connect.WithGRPC()},
		"connect": nil,
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			began := time.Now()
			c := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](testkit.H2CClient(), f.url+"/"+echoService+"/Wait", opts...)
			_, err := c.CallUnary(ctx, connect.NewRequest(wrapperspb.String("x")))
			if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
				t.Fatalf("want deadline_exceeded, got %v", err)
			}
			if took := time.Since(began); took > 2*time.Second {
				t.Fatalf("deadline not honoured: took %v", took)
			}
			if saw := f.upstream.sawDeadline.Load(); saw <= 0 || saw > 300 {
				t.Fatalf("upstream saw a deadline of %dms, want (0, 300]", saw)
			}
		})
	}
}

// TestMalformedTimeoutIsRefused: a timeout header the caller got wrong is
// invalid_argument naming the header, in the caller's protocol, as
// connect-go's own handler answers it (the upstream, called directly, is
// the reference); a zero timeout is a call with no time left.
func TestMalformedTimeoutIsRefused(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	instances, err := f.registry.Instances("echo")
	if err != nil || len(instances) != 1 {
		t.Fatalf("echo instances: %v, %v", instances, err)
	}
	direct := "http://" + instances[0].Addr
	for _, tc := range []struct {
		protocol string
		opts     []connect.ClientOption
		header   string
		values   []string
	}{
		{"connect", []connect.ClientOption{connect.WithProtoJSON()}, "Connect-Timeout-Ms", []string{"abc", "-5", "12345678901"}},
		{"grpc", []connect.ClientOption{connect.WithGRPC()}, "Grpc-Timeout", []string{"5x", "15", "100000000m", "-1S"}},
		{"grpc-web", []connect.ClientOption{connect.WithGRPCWeb()}, "Grpc-Timeout", []string{"1.5S"}},
	} {
		for _, v := range tc.values {
			t.Run(tc.protocol+"/"+v, func(t *testing.T) {
				call := func(base string) error {
					c := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](testkit.H2CClient(), base+"/"+echoService+"/Headers", tc.opts...)
					req := connect.NewRequest(wrapperspb.String("x"))
					req.Header().Set(tc.header, v)
					_, err := c.CallUnary(context.Background(), req)
					return err
				}
				want := connect.CodeOf(call(direct))
				if want != connect.CodeInvalidArgument {
					t.Fatalf("the upstream itself answered %v; the reference changed", want)
				}
				err := call(f.url)
				if connect.CodeOf(err) != want || !strings.Contains(err.Error(), tc.header) {
					t.Fatalf("through the edge: %v; want %v naming %s", err, want, tc.header)
				}
			})
		}
	}
	c := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](testkit.H2CClient(), f.url+"/"+echoService+"/Wait")
	req := connect.NewRequest(wrapperspb.String("x"))
	req.Header().Set("Connect-Timeout-Ms", "0")
	if _, err := c.CallUnary(context.Background(), req); connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Fatalf("no time left: %v, want deadline_exceeded", err)
	}
	if n := f.upstream.waits.Load(); n != 0 {
		t.Fatalf("a call with no time left reached the upstream (%d calls)", n)
	}
}

// TestCallInNoProtocolIsTold: a POST to a procedure in a content type no
// protocol uses (curl's default form encoding, plain text, none), or a
// GET that names no codec, gets HTTP 415 as from connect-go, with the
// types it takes in Accept-Post and a body saying what to send, and never
// reaches the upstream.
func TestCallInNoProtocolIsTold(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	for _, ct := range []string{"application/x-www-form-urlencoded", "text/plain", ""} {
		req, err := http.NewRequest(http.MethodPost, f.url+"/"+echoService+"/Wait", strings.NewReader(`{"value":"x"}`))
		if err != nil {
			t.Fatal(err)
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusUnsupportedMediaType || !strings.Contains(res.Header.Get("Accept-Post"), "application/json") ||
			!strings.Contains(string(body), "application/json") || (ct != "" && !strings.Contains(string(body), ct)) {
			t.Errorf("Content-Type %q: %d, Accept-Post %q, body %q; want 415 naming the type and what to send",
				ct, res.StatusCode, res.Header.Get("Accept-Post"), body)
		}
	}
	// A GET that names no codec is no Connect call either (GetUser is
	// free of side effects: it takes GET).
	for _, query := range []string{"", "?connect=v1&encoding=xml&message=%7B%7D"} {
		res, err := http.Get(f.url + userv1connect.UserServiceGetUserProcedure + query)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusUnsupportedMediaType || !strings.Contains(string(body), "encoding=json") {
			t.Errorf("GET %q: %d %q; want 415 saying how a Connect GET names its codec", query, res.StatusCode, body)
		}
	}
	// A method with side effects answers GET as connect-go does, 405.
	res, err := http.Get(f.url + "/" + echoService + "/Wait")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET of a method with side effects: %d, want 405", res.StatusCode)
	}
	if n := f.upstream.waits.Load(); n != 0 {
		t.Fatalf("%d calls in no protocol reached the upstream", n)
	}
}

// TestMalformedEnvelopeIsRefused: a framed call whose message does not
// start with a valid 5-byte prefix (a client that forgot the framing, or
// set a flag only servers send) is invalid_argument saying so, in the
// caller's protocol, for a unary call and for a stream, and not "message
// too large" from reading its first bytes as a length.
func TestMalformedEnvelopeIsRefused(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	framed := func(flags byte, msg []byte) []byte {
		return append(binary.BigEndian.AppendUint32([]byte{flags}, uint32(len(msg))), msg...)
	}
	hello, err := proto.Marshal(wrapperspb.String("hello"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, procedure, contentType string
		body                         []byte
	}{
		{"unary, unframed", "Headers", "application/grpc-web+proto", hello},
		{"unary, a server's flag", "Headers", "application/grpc-web+proto", framed(0x80, hello)},
		{"stream, second message unframed", "Sink", "application/grpc-web+proto", append(framed(0, hello), hello...)},
		{"connect stream, end-stream flag", "Sink", "application/connect+proto", framed(2, hello)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := http.Post(f.url+"/"+echoService+"/"+tc.procedure, tc.contentType, bytes.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			code, msg := res.Header.Get("Grpc-Status"), res.Header.Get("Grpc-Message")
			if strings.HasPrefix(tc.contentType, "application/connect") {
				code, msg = "", string(body)
				if strings.Contains(msg, `"code":"invalid_argument"`) {
					code = "3"
				}
			}
			if code != "3" || !strings.Contains(msg, "envelope") {
				t.Fatalf("status %d, grpc-status %q, message %q, body %q; want invalid_argument about the envelope", res.StatusCode, code, msg, body)
			}
		})
	}
}

// TestUnknownProcedureAnswersLikeConnectMux: a path that is no procedure
// of a routed service gets what connect-go's own mux answers, HTTP 404,
// which Connect clients read as unimplemented; gRPC and gRPC-Web callers
// get unimplemented naming the path in their protocol. Unknown methods of
// a routed service whose contract is known are answered by the edge too.
func TestUnknownProcedureAnswersLikeConnectMux(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	for _, path := range []string{"/keel.test.v1.NoSuchService/Call", "/shop.user.v1.UserService/NoSuchMethod"} {
		for name, opts := range map[string][]connect.ClientOption{
			"grpc":         {connect.WithGRPC()},
			"grpc-web":     {connect.WithGRPCWeb()},
			"connect-json": {connect.WithProtoJSON()},
		} {
			t.Run(name+path, func(t *testing.T) {
				c := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](testkit.H2CClient(), f.url+path, opts...)
				_, err := c.CallUnary(context.Background(), connect.NewRequest(wrapperspb.String("x")))
				if connect.CodeOf(err) != connect.CodeUnimplemented {
					t.Fatalf("want unimplemented, got %v", err)
				}
				if name != "connect-json" && !strings.Contains(err.Error(), path) {
					t.Fatalf("want the path named, got %v", err)
				}
			})
		}
	}
	res, err := http.Post(f.url+"/not-a-procedure", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound {
		t.Fatalf("plain POST to a bad path: %d, want 404", res.StatusCode)
	}
}

func TestServiceWithoutInstancesIsUnavailable(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	c := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](testkit.H2CClient(), f.url+"/keel.test.v1.EmptyService/Call", connect.WithGRPC())
	_, err := c.CallUnary(context.Background(), connect.NewRequest(wrapperspb.String("x")))
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("want unavailable naming the service, got %v", err)
	}
}

func TestCORSPreflightAllowsConnectAndAuthorization(t *testing.T) {
	t.Parallel()
	f := startEdgeWith(t, func(c *edge.Config) { c.AllowedOrigins = []string{"*"} })
	req, _ := http.NewRequest(http.MethodOptions, f.url+"/"+echoService+"/Wait", nil)
	req.Header.Set("Origin", "http://localhost:5173")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "authorization,connect-protocol-version,content-type,x-grpc-web")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	allowed := strings.ToLower(res.Header.Get("Access-Control-Allow-Headers"))
	if res.StatusCode != http.StatusNoContent || !strings.Contains(allowed, "authorization") || !strings.Contains(allowed, "x-grpc-web") {
		t.Fatalf("preflight: %d allow-headers=%q", res.StatusCode, allowed)
	}
	// Logins travel in the Authorization header, never in cookies: the
	// edge never allows credentials, so a wildcard origin (what the test
	// environment configures) cannot hand a browser's cookies to any site.
	if c := res.Header.Get("Access-Control-Allow-Credentials"); c != "" {
		t.Fatalf("preflight allows credentials (%q) with origins %q", c, res.Header.Get("Access-Control-Allow-Origin"))
	}
}

func TestIdentityHeadersFromOutsideAreStripped(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	c := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](testkit.H2CClient(), f.url+"/"+echoService+"/Headers")
	for header, want := range map[string]string{
		"Keel-User-Id":    "",
		"Keel-User-Roles": "",
		"X-Request-Id":    "forged-or-not",
	} {
		req := connect.NewRequest(wrapperspb.String(header))
		req.Header().Set(header, "forged-or-not")
		res, err := c.CallUnary(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Msg.GetValue(); got != want {
			t.Errorf("upstream saw %s = %q, want %q", header, got, want)
		}
	}
}

// headerSeen asks the echo upstream, through the edge, for the values of
// header it received, sending the extra request headers given.
func headerSeen(t *testing.T, url, header string, extra http.Header) string {
	t.Helper()
	c := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](http.DefaultClient, url+"/"+echoService+"/Headers")
	req := connect.NewRequest(wrapperspb.String(header))
	for k, v := range extra {
		req.Header()[k] = v
	}
	res, err := c.CallUnary(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	return res.Msg.GetValue()
}

// TestForwardedForIsNotTakenFromCallers: the edge is the front door, so
// an X-Forwarded-For from a caller is replaced by the caller's address;
// only a trusted proxy's is kept and extended.
func TestForwardedForIsNotTakenFromCallers(t *testing.T) {
	t.Parallel()
	forged := http.Header{"X-Forwarded-For": {"203.0.113.7"}}
	f := startEdge(t)
	if got := headerSeen(t, f.url, "X-Forwarded-For", forged); got != "127.0.0.1" {
		t.Errorf("untrusted caller: upstream saw X-Forwarded-For %q, want only the caller's 127.0.0.1", got)
	}
	trusted := startEdgeWith(t, func(c *edge.Config) { c.TrustedProxies = []string{"127.0.0.0/8"} })
	if got := headerSeen(t, trusted.url, "X-Forwarded-For", forged); got != "203.0.113.7, 127.0.0.1" {
		t.Errorf("trusted proxy: upstream saw X-Forwarded-For %q, want the chain extended", got)
	}
}

// TestHeadersNamedInConnectionAreNotForwarded: Connection lists headers
// that are for this hop only (RFC 9110, 7.6.1).
func TestHeadersNamedInConnectionAreNotForwarded(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	extra := http.Header{"Connection": {"keep-alive, X-Hop-Secret"}, "X-Hop-Secret": {"s3cret"}, "X-End-To-End": {"kept"}}
	if got := headerSeen(t, f.url, "X-Hop-Secret", extra); got != "" {
		t.Errorf("upstream saw X-Hop-Secret %q, which Connection marks hop-by-hop", got)
	}
	if got := headerSeen(t, f.url, "X-End-To-End", extra); got != "kept" {
		t.Errorf("upstream saw X-End-To-End %q, want it forwarded", got)
	}
}

// TestOversizedRequestIsRefusedByTheEdge: the edge enforces
// server/max_request_bytes on what it proxies, answering
// resource_exhausted in the caller's protocol, for unary calls and for
// each message of a stream, without the upstream seeing the call.
func TestOversizedRequestIsRefusedByTheEdge(t *testing.T) {
	t.Parallel()
	f := startEdgeWith(t, func(c *edge.Config) { c.Server.MaxRequestBytes = 1024 })
	big := strings.Repeat("x", 2048)
	for name, p := range map[string]struct {
		client *http.Client
		opts   []connect.ClientOption
	}{
		"connect":  {http.DefaultClient, nil},
		"grpc":     {testkit.H2CClient(), []connect.ClientOption{connect.WithGRPC()}},
		"grpc-web": {http.DefaultClient, []connect.ClientOption{connect.WithGRPCWeb()}},
	} {
		t.Run(name, func(t *testing.T) {
			c := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](p.client, f.url+"/"+echoService+"/Headers", p.opts...)
			if _, err := c.CallUnary(context.Background(), connect.NewRequest(wrapperspb.String(big))); connect.CodeOf(err) != connect.CodeResourceExhausted {
				t.Errorf("unary: want resource_exhausted, got %v", err)
			}
			if _, err := c.CallUnary(context.Background(), connect.NewRequest(wrapperspb.String("small"))); err != nil {
				t.Errorf("a call under the limit failed: %v", err)
			}
		})
	}
	// A client stream whose second message is over the limit.
	c := connect.NewClient[wrapperspb.StringValue, wrapperspb.Int64Value](testkit.H2CClient(), f.url+"/"+echoService+"/Sink", connect.WithGRPC())
	stream := c.CallClientStream(context.Background())
	_ = stream.Send(wrapperspb.String("small"))
	_ = stream.Send(wrapperspb.String(big))
	if _, err := stream.CloseAndReceive(); err == nil {
		t.Fatal("a stream with a message over the limit went through")
	}
}
