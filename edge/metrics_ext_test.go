package edge_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keelplatform/keel/edge"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/testkit"
)

func TestEdgeCountsCallsByServiceAndUpstreamCode(t *testing.T) {
	t.Parallel()
	f := startEdge(t)
	ctx := context.Background()

	// Server streams end with their status in trailers (gRPC), in the
	// body's trailer frame (gRPC-Web) or in the end-stream message (Connect).
	for name, tc := range map[string]struct {
		client *http.Client
		opts   []connect.ClientOption
	}{
		"grpc":     {testkit.H2CClient(), []connect.ClientOption{connect.WithGRPC()}},
		"grpc-web": {http.DefaultClient, []connect.ClientOption{connect.WithGRPCWeb()}},
		"connect":  {http.DefaultClient, nil},
	} {
		c := connect.NewClient[wrapperspb.Int32Value, wrapperspb.Int32Value](tc.client, f.url+"/"+echoService+"/Count", tc.opts...)
		stream, err := c.CallServerStream(ctx, connect.NewRequest(wrapperspb.Int32(3)))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for stream.Receive() {
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// A client stream the upstream rejects: failed_precondition, per protocol.
	for name, opts := range map[string][]connect.ClientOption{
		"grpc":     {connect.WithGRPC()},
		"grpc-web": {connect.WithGRPCWeb()},
		"connect":  nil,
	} {
		c := connect.NewClient[wrapperspb.StringValue, wrapperspb.Int64Value](testkit.H2CClient(), f.url+"/"+echoService+"/Sink", opts...)
		stream := c.CallClientStream(ctx)
		_ = stream.Send(wrapperspb.String("fail"))
		if _, err := stream.CloseAndReceive(); connect.CodeOf(err) != connect.CodeFailedPrecondition {
			t.Fatalf("%s: want failed_precondition, got %v", name, err)
		}
	}
	// Connect unary errors: the code comes from the error body. The caller
	// sets no deadline of its own, so the edge's 50ms, from the header, is
	// what ends the call, not the caller going away.
	for range 2 {
		req, _ := http.NewRequest(http.MethodPost, f.url+"/"+echoService+"/Wait", strings.NewReader(`"x"`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Connect-Timeout-Ms", "50")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if !strings.Contains(string(body), `"deadline_exceeded"`) {
			t.Fatalf("want deadline_exceeded, got %d %s", res.StatusCode, body)
		}
	}
	// The edge's own answers: an unknown service, a bad path, no instances.
	unknown := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](testkit.H2CClient(), f.url+"/keel.test.v1.NoSuchService/Call", connect.WithGRPC())
	if _, err := unknown.CallUnary(ctx, connect.NewRequest(wrapperspb.String("x"))); connect.CodeOf(err) != connect.CodeUnimplemented {
		t.Fatalf("want unimplemented, got %v", err)
	}
	res, err := http.Post(f.url+"/not-a-procedure", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	empty := connect.NewClient[wrapperspb.StringValue, wrapperspb.StringValue](testkit.H2CClient(), f.url+"/keel.test.v1.EmptyService/Call", connect.WithGRPCWeb())
	if _, err := empty.CallUnary(ctx, connect.NewRequest(wrapperspb.String("x"))); connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("want unavailable, got %v", err)
	}

	want := map[string]float64{
		`keel_edge_requests_total{code="ok",service="echo"}`:                  3,
		`keel_edge_requests_total{code="failed_precondition",service="echo"}`: 3,
		`keel_edge_requests_total{code="deadline_exceeded",service="echo"}`:   2,
		`keel_edge_requests_total{code="unimplemented",service="unrouted"}`:   1,
		`keel_edge_requests_total{code="not_found",service="unrouted"}`:       1, // no such REST route
		`keel_edge_requests_total{code="unavailable",service="empty"}`:        1,
		`keel_edge_duration_seconds_count{service="echo"}`:                    8,
	}
	// The edge counts a call once it has sent the whole answer, which can
	// be a moment after the caller has read it.
	var got map[string]float64
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got = testkit.Scrape(t, f.url+"/metrics")
		settled := true
		for series, n := range want {
			settled = settled && got[series] == n
		}
		if settled || time.Now().After(deadline) {
			break
		}
	}
	for series, n := range want {
		if got[series] != n {
			t.Errorf("%s = %v, want %v", series, got[series], n)
		}
	}
	for series := range got {
		if strings.Contains(series, "NoSuchService") || strings.Contains(series, "not-a-procedure") {
			t.Errorf("caller-chosen name became a label: %s", series)
		}
	}
}

// TestAdminEndpointsLeaveThePublicPort: with an admin address, /metrics is
// served there and not on the edge's public port, where the path is just
// an unknown procedure.
func TestAdminEndpointsLeaveThePublicPort(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e, err := edge.New(edge.Config{Server: server.Config{Addr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0"}, Services: []string{userv1connect.UserServiceName}},
		discovery.NewStatic(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = e.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	if e.AdminAddr() == "" || e.AdminAddr() == e.Addr() {
		t.Fatalf("admin listener %q, public %q", e.AdminAddr(), e.Addr())
	}
	if samples := testkit.Scrape(t, "http://"+e.AdminAddr()+"/metrics"); len(samples) == 0 {
		t.Fatal("no metrics on the admin port")
	}
	res, err := http.Get("http://" + e.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode == http.StatusOK || strings.Contains(string(body), "keel_") {
		t.Fatalf("metrics on the public port: %d %s", res.StatusCode, body)
	}
}
