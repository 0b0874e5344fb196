package platform_test

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/keelplatform/keel/edge"
	storefrontv1 "github.com/keelplatform/keel/gen/go/shop/storefront/v1"
	"github.com/keelplatform/keel/gen/go/shop/storefront/v1/storefrontv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/client"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/jaegertest"
	"github.com/keelplatform/keel/internal/testkit"
	userservice "github.com/keelplatform/keel/services/user/service"
)

// relay is a storefront that answers a product page by asking the user
// service something: a service calling a peer.
type relay struct {
	storefrontv1connect.UnimplementedStorefrontServiceHandler
	users userv1connect.UserServiceClient
}

func (r relay) GetProductPage(ctx context.Context, req *connect.Request[storefrontv1.GetProductPageRequest]) (*connect.Response[storefrontv1.GetProductPageResponse], error) {
	_, err := r.users.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		return nil, errors.New("want the user service's not_found")
	}
	return connect.NewResponse(&storefrontv1.GetProductPageResponse{Degraded: []string{"item"}}), nil
}

func relayService() boot.Service[struct{ config.Process }] {
	type settings = struct{ config.Process }
	return boot.Service[settings]{
		Name:     "storefront",
		Defaults: settings{Process: config.DefaultProcess()},
		Build: func(_ context.Context, env boot.Env[settings]) (boot.Process, error) {
			srv := env.Server()
			users := client.Connect(env.Peers, "user", userv1connect.NewUserServiceClient)
			srv.Handle(storefrontv1connect.NewStorefrontServiceHandler(relay{users: users}, srv.HandlerOptions()...))
			return srv, nil
		},
	}
}

// TestOneRequestIsOneTrace: a call through the edge into a service that
// calls a peer is one trace, with spans from all three processes chained
// parent to child, read back from a real Jaeger.
func TestOneRequestIsOneTrace(t *testing.T) {
	t.Parallel()
	jaeger := jaegertest.Start(t)
	env := map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.OTLPEndpoint(),
		"OTEL_BSP_SCHEDULE_DELAY":     "50",
		userservice.TokenKeyVar:       strings.Repeat("k", 32),
		auth.IdentityKeyVar:           strings.Repeat("i", 32),
		"KEEL_DATABASE_DATA_DIR":      t.TempDir(),
		"KEEL_SERVER_ADDR":            "127.0.0.1:0",
	}
	logs := &testkit.Buffer{}
	opts := boot.Options{
		Env:       config.EnvTest,
		ConfigDir: "../../../consul/kv",
		Backend:   boot.Static{Discovery: discovery.NewStatic()},
		Log:       logs,
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	}
	ctx, cancel := context.WithCancel(context.Background())
	var running []*boot.Running
	t.Cleanup(func() {
		cancel()
		for _, r := range running {
			_ = r.Wait()
		}
	})
	start := func(r *boot.Running, err error) *boot.Running {
		if err != nil {
			t.Fatal(err)
		}
		running = append(running, r)
		return r
	}
	start(boot.Start(ctx, userservice.Service(), opts))
	relayOpts := opts
	relayOpts.ConfigDir = "no-seed-files" // built-in defaults
	start(boot.Start(ctx, relayService(), relayOpts))
	front := start(boot.Start(ctx, edge.Service([]string{userv1connect.UserServiceName, storefrontv1connect.StorefrontServiceName}), opts))

	c := storefrontv1connect.NewStorefrontServiceClient(http.DefaultClient, "http://"+front.Instance.Addr)
	// The caller has a trace of its own: the edge starts a new one, and
	// links the caller's.
	const callerTrace, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req := connect.NewRequest(&storefrontv1.GetProductPageRequest{Sku: "SKU-1"})
	req.Header().Set("Traceparent", "00-"+callerTrace+"-"+callerSpan+"-01")
	res, err := c.GetProductPage(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	tr := res.Header().Get("Traceresponse")
	parts := strings.Split(tr, "-")
	if len(parts) != 4 {
		t.Fatalf("the edge named no trace: Traceresponse %q", tr)
	}
	if parts[1] == callerTrace {
		t.Fatalf("the edge continued the caller's trace %s instead of starting one", callerTrace)
	}
	waitCtx, stop := context.WithTimeout(ctx, 20*time.Second)
	defer stop()
	// edge; storefront server + its client call; user server.
	spans, err := jaeger.WaitTrace(waitCtx, parts[1], 4)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]jaegertest.Span{}
	services := map[string]bool{}
	for _, s := range spans {
		byID[s.SpanID] = s
		services[s.Service] = true
	}
	for _, want := range []string{"edge", "storefront", "user"} {
		if !services[want] {
			t.Errorf("no span from %s in the trace; spans: %+v", want, spans)
		}
	}
	// The edge's span says what was called, how, and how it ended, and
	// links the caller's trace.
	for _, s := range spans {
		if s.Service != "edge" {
			continue
		}
		if !slices.Contains(s.Links, callerTrace+"-"+callerSpan) {
			t.Errorf("the edge span links %v, want the caller's span %s-%s", s.Links, callerTrace, callerSpan)
		}
		for key, want := range map[string]any{
			"rpc.system":                 "connect_rpc",
			"rpc.method":                 storefrontv1connect.StorefrontServiceGetProductPageProcedure[1:],
			"keel.protocol":              "connect",
			"rpc.connect_rpc.error_code": "ok",
			"keel.upstream.attempts":     float64(1),
		} {
			if got := s.Tags[key]; got != want {
				t.Errorf("edge span attribute %s: %v, want %v", key, got, want)
			}
		}
	}
	// The user service's span descends from the storefront's, which
	// descends from the edge's.
	var userSpan *jaegertest.Span
	for i, s := range spans {
		if s.Service == "user" {
			userSpan = &spans[i]
		}
	}
	if userSpan == nil {
		t.Fatal("no user span")
	}
	var chain []string
	for s, ok := *userSpan, true; ok; s, ok = byID[s.ParentSpanID] {
		chain = append(chain, s.Service)
	}
	if got := strings.Join(chain, " <- "); !strings.HasPrefix(got, "user") || !strings.Contains(got, "storefront") || !strings.HasSuffix(got, "edge") {
		t.Fatalf("span chain from the user service up: %s; want user <- storefront ... <- edge", got)
	}

	// The edge's access log line of the call carries its trace and span.
	var accessLine string
	for line := range strings.Lines(logs.String()) {
		if strings.Contains(line, `"service":"edge"`) && strings.Contains(line, `"msg":"call"`) && strings.Contains(line, "GetProductPage") {
			accessLine = line
		}
	}
	if !strings.Contains(accessLine, `"trace_id":"`+parts[1]+`"`) || !strings.Contains(accessLine, `"span_id":"`+parts[2]+`"`) || !strings.Contains(accessLine, `"instance":"`) {
		t.Fatalf("edge access log line without the call's trace, span or instance: %q", accessLine)
	}
	// At start the edge says where it routes each service.
	if !strings.Contains(logs.String(), `"msg":"routing","service":"edge","routes":["shop.storefront.v1.StorefrontService -> storefront","shop.user.v1.UserService -> user"]`) {
		t.Fatalf("no routing line from the edge in:\n%s", logs.String())
	}
}
