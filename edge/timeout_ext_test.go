package edge_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keelplatform/keel/edge"
	"github.com/keelplatform/keel/internal/testkit"
)

// TestCallerDeadlineIsCappedAtTheEdge: a call through the edge asking
// for a ten-digit timeout (or gRPC's largest) runs under the edge's
// server/max_timeout, and the upstream sees the capped deadline, not the
// one asked for.
func TestCallerDeadlineIsCappedAtTheEdge(t *testing.T) {
	t.Parallel()
	const max = 500 * time.Millisecond
	f := startEdgeWith(t, func(c *edge.Config) { c.Server.MaxTimeout = max })
	for name, opts := range map[string][]connect.ClientOption{
		"connect": {withHeader("Connect-Timeout-Ms", "9999999999")},
		"grpc":    {connect.WithGRPC(), withHeader("Grpc-Timeout", "1281023H")},
	} {
		t.Run(name, func(t *testing.T) {
			began := time.Now()
			c := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](testkit.H2CClient(), f.url+"/"+echoService+"/Wait", opts...)
			// The call's own deadline is the header's: the test waits for
			// it in another goroutine, bounded.
			result := make(chan error, 1)
			go func() {
				_, err := c.CallUnary(context.Background(), connect.NewRequest(wrapperspb.String("x")))
				result <- err
			}()
			var err error
			select {
			case err = <-result:
			case <-time.After(5 * time.Second):
				t.Fatalf("the call was still running %v after it began, cap %v", time.Since(began), max)
			}
			if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
				t.Fatalf("want deadline_exceeded at the cap, got %v", err)
			}
			if took := time.Since(began); took < max || took > max+time.Second {
				t.Fatalf("the call ended after %v, want at the cap %v", took, max)
			}
			if saw := time.Duration(f.upstream.sawDeadline.Load()) * time.Millisecond; saw <= 0 || saw > max {
				t.Fatalf("the upstream saw a deadline of %v, want (0, %v]", saw, max)
			}
		})
	}
}

// TestTricklingClientIsCutAtTheEdge: a unary call with a ten-digit
// timeout whose body trickles in is cut at the edge's max_timeout and
// never reaches the upstream.
func TestTricklingClientIsCutAtTheEdge(t *testing.T) {
	t.Parallel()
	const max = 500 * time.Millisecond
	f := startEdgeWith(t, func(c *edge.Config) { c.Server.MaxTimeout = max })
	conn, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `"a value trickled in one byte at a time"`
	began := time.Now()
	fmt.Fprintf(conn, "POST /%s/Wait HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnect-Timeout-Ms: 9999999999\r\nContent-Length: %d\r\n\r\n", echoService, len(body))
	answered := make(chan string, 1)
	go func() {
		data, _ := io.ReadAll(conn)
		answered <- string(data)
	}()
	var answer string
trickle:
	for i := 0; i < len(body); i++ {
		if _, err := conn.Write([]byte{body[i]}); err != nil {
			break
		}
		select {
		case answer = <-answered:
			break trickle
		case <-time.After(100 * time.Millisecond):
		}
	}
	if answer == "" {
		select {
		case answer = <-answered:
		case <-time.After(3 * time.Second):
			t.Fatalf("the edge still held the connection %v after the call began, cap %v", time.Since(began), max)
		}
	}
	if took := time.Since(began); took < max || took > max+time.Second {
		t.Fatalf("the call was cut after %v, want at the cap %v; answer %q", took, max, answer)
	}
	if n := f.upstream.waits.Load(); n != 0 {
		t.Fatalf("the upstream got %d calls of a request never sent whole", n)
	}
}

// withHeader sends the header name: value on every call.
func withHeader(name, value string) connect.ClientOption {
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set(name, value)
			return next(ctx, req)
		}
	}))
}
