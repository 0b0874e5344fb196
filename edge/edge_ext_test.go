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
	e, err := edge.New(edge.Config{
		Server:   server.Config{Addr: "127.0.0.1:0"},
		Services: []string{echoService, "keel.test.v1.EmptyService"},
		Routes:   map[string]string{echoService: "echo", "keel.test.v1.EmptyService": "empty"},
	}, registry, slog.New(slog.DiscardHandler))
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

func TestUnknownServiceIsUnimplementedInEveryProtocol(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	for name, opts := range map[string][]connect.ClientOption{
		"grpc":         {connect.WithGRPC()},
		"grpc-web":     {connect.WithGRPCWeb()},
		"connect-json": {connect.WithProtoJSON()},
	} {
		t.Run(name, func(t *testing.T) {
			c := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](testkit.H2CClient(), f.url+"/keel.test.v1.NoSuchService/Call", opts...)
			_, err := c.CallUnary(context.Background(), connect.NewRequest(wrapperspb.String("x")))
			if connect.CodeOf(err) != connect.CodeUnimplemented || !strings.Contains(err.Error(), "keel.test.v1.NoSuchService") {
				t.Fatalf("want unimplemented naming the service, got %v", err)
			}
		})
	}
	res, err := http.Post(f.url+"/not-a-procedure", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusNotImplemented || !strings.Contains(string(body), `"unimplemented"`) {
		t.Fatalf("plain POST to a bad path: %d %s", res.StatusCode, body)
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
	f := startEdge(t)
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
