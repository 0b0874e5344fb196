package platform_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"google.golang.org/protobuf/proto"

	"github.com/keelplatform/keel/cmd/keel/platform"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/testkit"
)

type running struct {
	url  string
	p    *platform.Platform
	stop context.CancelFunc
}

// up starts the platform as `keel up` does, with the test environment's
// configuration (free loopback ports) and settings overridden through
// KEEL_<KEY> environment variables.
func up(t *testing.T, settings map[string]string) *running {
	t.Helper()
	for k, v := range settings {
		t.Setenv(k, v)
	}
	p, cancel := startPlatform(t, platform.Options{})
	return &running{url: "http://" + p.EdgeAddr(), p: p, stop: cancel}
}

// postJSON calls a procedure the way curl does: a plain HTTP/1.1 POST,
// with the headers given as name, value pairs.
func postJSON(t *testing.T, url, body string, headers ...string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("response is not JSON: %q", data)
	}
	return res.StatusCode, out
}

var protocols = map[string]struct {
	client *http.Client
	opts   []connect.ClientOption
}{
	"connect-json over http/1.1": {http.DefaultClient, []connect.ClientOption{connect.WithProtoJSON()}},
	"grpc over h2c":              {testkit.H2CClient(), []connect.ClientOption{connect.WithGRPC()}},
	"grpc-web over http/1.1":     {http.DefaultClient, []connect.ClientOption{connect.WithGRPCWeb()}},
}

// bearer sends token as the caller's login on every call.
func bearer(token string) connect.ClientOption {
	return withHeader("Authorization", "Bearer "+token)
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

// login logs email in through the edge at url and returns the token.
func login(t *testing.T, url, email string) string {
	t.Helper()
	status, body := postJSON(t, url+"/shop.user.v1.UserService/Login", `{"email":"`+email+`","password":"correct horse"}`)
	token, _ := body["accessToken"].(string)
	if status != http.StatusOK || strings.Count(token, ".") != 2 {
		t.Fatalf("login %s: %d %v", email, status, body)
	}
	return token
}

func TestRegisterAndGetThroughTheEdgeInEveryProtocol(t *testing.T) {
	r := up(t, nil)

	status, body := postJSON(t, r.url+"/shop.user.v1.UserService/Register",
		`{"email":"Ada@Example.com","password":"correct horse","displayName":"Ada"}`)
	if status != http.StatusOK {
		t.Fatalf("register: %d %v", status, body)
	}
	user := body["user"].(map[string]any)
	id := user["id"].(string)
	if user["email"] != "ada@example.com" || user["displayName"] != "Ada" {
		t.Fatalf("register returned %v", user)
	}
	if _, leaked := user["passwordHash"]; leaked {
		t.Fatal("password hash in the response")
	}
	token := login(t, r.url, "ada@example.com")

	var first *userv1.User
	for name, p := range protocols {
		t.Run(name, func(t *testing.T) {
			c := userv1connect.NewUserServiceClient(p.client, r.url, append(p.opts, bearer(token))...)
			res, err := c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: id}))
			if err != nil {
				t.Fatal(err)
			}
			if res.Msg.GetUser().GetId() != id || res.Msg.GetUser().GetEmail() != "ada@example.com" {
				t.Fatalf("got %v", res.Msg.GetUser())
			}
			if first == nil {
				first = res.Msg.GetUser()
			} else if !proto.Equal(first, res.Msg.GetUser()) {
				t.Fatalf("protocols disagree: %v vs %v", first, res.Msg.GetUser())
			}

			// Each protocol can also register (a public method), and the
			// new user reads their own account with their own login.
			email := strings.ReplaceAll(name, " ", "-") + "@example.com"
			reg, err := c.Register(context.Background(), connect.NewRequest(&userv1.RegisterRequest{
				Email: email, Password: "correct horse", DisplayName: name,
			}))
			if err != nil {
				t.Fatal(err)
			}
			theirs := userv1connect.NewUserServiceClient(p.client, r.url, append(p.opts, bearer(login(t, r.url, email)))...)
			got, err := theirs.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: reg.Msg.GetUser().GetId()}))
			if err != nil || got.Msg.GetUser().GetDisplayName() != name {
				t.Fatalf("get after register: %v %v", got, err)
			}
		})
	}

	// The GET form of a side-effect-free call works too.
	res, err := http.Get(r.url + "/shop.inventory.v1.InventoryService/ListItems?encoding=json&message=%7B%7D&connect=v1")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(data), `"items"`) && string(data) != "{}" {
		t.Fatalf("list items with GET: %d %s", res.StatusCode, data)
	}
}

func TestErrorsThroughTheEdge(t *testing.T) {
	r := up(t, map[string]string{"KEEL_SERVER_MAX_REQUEST_BYTES": "65536"})
	if status, body := postJSON(t, r.url+"/shop.user.v1.UserService/Register",
		`{"email":"grace@example.com","password":"correct horse","displayName":"Grace"}`); status != http.StatusOK {
		t.Fatalf("register: %d %v", status, body)
	}
	grace := "Bearer " + login(t, r.url, "grace@example.com")
	forged := "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIwYjVhM2Y0ZS03YzFkLTRhOGUtOWY1NS0yZjRiOGIxYzlkMTAifQ.c2lnbmVkLWJ5LW5vYm9keQ"

	cases := []struct {
		name     string
		path     string
		body     string
		status   int
		code     string
		mentions string
		auth     string // the Authorization header, if any
	}{
		{"invalid email", "/shop.user.v1.UserService/Register", `{"email":"not-an-email","password":"correct horse","displayName":"X"}`, 400, "invalid_argument", "email", ""},
		{"short password", "/shop.user.v1.UserService/Register", `{"email":"x@example.com","password":"short","displayName":"X"}`, 400, "invalid_argument", "password", ""},
		{"wrong field type", "/shop.user.v1.UserService/Register", `{"email":42}`, 400, "invalid_argument", "email", ""},
		{"malformed json", "/shop.user.v1.UserService/Register", `{"email":`, 400, "invalid_argument", "unmarshal", ""},
		{"duplicate email", "/shop.user.v1.UserService/Register", `{"email":"GRACE@example.com","password":"correct horse","displayName":"G"}`, 409, "already_exists", "email", ""},
		{"wrong password", "/shop.user.v1.UserService/Login", `{"email":"grace@example.com","password":"wrong horse"}`, 401, "unauthenticated", "invalid email or password", ""},
		{"unknown email", "/shop.user.v1.UserService/Login", `{"email":"nobody@example.com","password":"wrong horse"}`, 401, "unauthenticated", "invalid email or password", ""},
		{"no login", "/shop.user.v1.UserService/GetUser", `{"id":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}`, 401, "unauthenticated", "Authorization: Bearer", ""},
		{"forged token", "/shop.user.v1.UserService/GetUser", `{"id":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}`, 401, "unauthenticated", "invalid or expired", forged},
		{"not a bearer token", "/shop.user.v1.UserService/GetUser", `{"id":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}`, 401, "unauthenticated", "Bearer", "Basic Z3JhY2U6aG9yc2U="},
		{"another user's account", "/shop.user.v1.UserService/GetUser", `{"id":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}`, 403, "permission_denied", "another user", grace},
		{"internal method", "/shop.inventory.v1.InventoryService/ReserveStock", `{"reservationId":"r-1","lines":[{"sku":"KEEL-MUG","quantity":1}]}`, 403, "permission_denied", "internal", grace},
		{"unknown order", "/shop.order.v1.OrderService/GetOrder", `{"orderId":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}`, 404, "not_found", "0b5a3f4e", grace},
		{"oversized body", "/shop.user.v1.UserService/Register", `{"email":"big@example.com","password":"` + strings.Repeat("p", 100<<10) + `","displayName":"Big"}`, 429, "resource_exhausted", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var headers []string
			if tc.auth != "" {
				headers = []string{"Authorization", tc.auth}
			}
			status, body := postJSON(t, r.url+tc.path, tc.body, headers...)
			if status != tc.status || body["code"] != tc.code {
				t.Fatalf("got %d %v, want %d %s", status, body, tc.status, tc.code)
			}
			if msg, _ := body["message"].(string); !strings.Contains(msg, tc.mentions) {
				t.Fatalf("message %q does not mention %q", msg, tc.mentions)
			}
			if strings.Contains(strings.ToLower(body["message"].(string)), "goroutine") {
				t.Fatal("stack trace in the error")
			}
		})
	}

	// A path that is no procedure is a 404, as connect-go's own mux
	// answers it (Connect clients read it as unimplemented), naming the
	// path.
	for _, path := range []string{"/shop.nothing.v1.NothingService/Do", "/shop.user.v1.UserService/DeleteEverything"} {
		res, err := http.Post(r.url+path, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusNotFound || !strings.Contains(string(body), path) {
			t.Errorf("POST %s: %d %q, want 404 naming the path", path, res.StatusCode, body)
		}
	}

	// The same failures keep their codes over gRPC, where they travel in trailers.
	c := userv1connect.NewUserServiceClient(testkit.H2CClient(), r.url, connect.WithGRPC())
	_, err := c.Login(context.Background(), connect.NewRequest(&userv1.LoginRequest{Email: "grace@example.com", Password: "wrong horse"}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("grpc login: %v", err)
	}
	_, err = c.Register(context.Background(), connect.NewRequest(&userv1.RegisterRequest{Email: "bad", Password: "correct horse", DisplayName: "X"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "email") {
		t.Fatalf("grpc invalid email: %v", err)
	}

	// A login (an argon2id hash, tens of milliseconds) with a 1ms budget
	// fails with deadline_exceeded: the edge honours and forwards deadlines.
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	_, err = c.Login(ctx, connect.NewRequest(&userv1.LoginRequest{Email: "grace@example.com", Password: "correct horse"}))
	if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Fatalf("want deadline_exceeded, got %v", err)
	}

	// After all that, everything is still healthy.
	health := grpchealth.NewClient(testkit.H2CClient(), r.url, connect.WithGRPC())
	for _, service := range []string{"", userv1connect.UserServiceName} {
		check, err := health.Check(context.Background(), &grpchealth.CheckRequest{Service: service})
		if err != nil || check.Status != grpchealth.StatusServing {
			t.Fatalf("health of %q: %v %v", service, check, err)
		}
	}
}

func TestReflectionThroughTheEdge(t *testing.T) {
	r := up(t, nil)
	stream := grpcreflect.NewClient(testkit.H2CClient(), r.url, connect.WithGRPC()).NewStream(context.Background())
	defer stream.Close()
	names, err := stream.ListServices()
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, n := range names {
		found = found || n == userv1connect.UserServiceName
	}
	if !found {
		t.Fatalf("reflection through the edge lists %v", names)
	}
	files, err := stream.FileContainingSymbol(userv1connect.UserServiceName)
	if err != nil || len(files) == 0 || files[0].GetName() != "shop/user/v1/user.proto" {
		t.Fatalf("descriptor of the user service: %v %v", files, err)
	}
}

func TestHealthTurnsNotServingDuringShutdown(t *testing.T) {
	r := up(t, map[string]string{"KEEL_SERVER_DRAIN_DELAY": "1s"})
	health := grpchealth.NewClient(testkit.H2CClient(), r.url, connect.WithGRPC())
	check, err := health.Check(context.Background(), &grpchealth.CheckRequest{})
	if err != nil || check.Status != grpchealth.StatusServing {
		t.Fatalf("before shutdown: %v %v", check, err)
	}
	r.stop()
	deadline := time.Now().Add(800 * time.Millisecond)
	for {
		check, err = health.Check(context.Background(), &grpchealth.CheckRequest{})
		if err == nil && check.Status == grpchealth.StatusNotServing {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health never turned NOT_SERVING while draining: %v %v", check, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := r.p.Wait(); err != nil {
		t.Fatal(err)
	}
}

// TestMetricsAfterAFewCalls: after calls through the edge, /metrics of
// the edge and of the service show the series operators rely on, with
// the labels Prometheus users expect: calls by procedure (or service) and
// code, latency histograms, concurrency and shedding, retries and their
// budget, and each upstream instance's breaker state and balancer picks.
func TestMetricsAfterAFewCalls(t *testing.T) {
	r := up(t, nil)
	for range 3 {
		if code, body := postJSON(t, r.url+"/shop.user.v1.UserService/Register", `{"email":"metrics@example.com","password":"correct horse","displayName":"M"}`); code != http.StatusOK && code != http.StatusConflict {
			t.Fatalf("Register: %d %v", code, body)
		}
	}
	if code, _ := postJSON(t, r.url+"/shop.user.v1.UserService/Login", `{"email":"metrics@example.com","password":"wrong horse"}`); code != http.StatusUnauthorized {
		t.Fatalf("Login with a wrong password: %d", code)
	}
	var userAddr string
	for _, s := range r.p.Services() {
		if name, addr, _ := strings.Cut(s, "@"); name == "user" {
			userAddr = addr
		}
	}
	edgeMetrics := testkit.Scrape(t, r.url+"/metrics")
	userMetrics := testkit.Scrape(t, "http://"+userAddr+"/metrics")
	has := func(samples map[string]float64, series string, min float64) {
		t.Helper()
		v, ok := samples[series]
		if !ok || v < min {
			t.Errorf("%s = %v (present: %v), want at least %v", series, v, ok, min)
		}
	}
	instance := `instance="` + userAddr + `",service="user"`
	has(edgeMetrics, `keel_edge_requests_total{code="ok",service="user"}`, 1)
	has(edgeMetrics, `keel_edge_requests_total{code="unauthenticated",service="user"}`, 1)
	has(edgeMetrics, `keel_edge_duration_seconds_count{service="user"}`, 4)
	has(edgeMetrics, `keel_client_picks_total{`+instance+`}`, 4)
	has(edgeMetrics, `keel_client_breaker_state{`+instance+`}`, 0)
	has(edgeMetrics, `keel_client_retries_total{service="user"}`, 0)
	has(edgeMetrics, `keel_client_retry_budget_exhausted_total{service="user"}`, 0)
	has(edgeMetrics, `keel_client_throttled_total{service="user"}`, 0)
	has(edgeMetrics, `keel_server_shed_total{priority="normal"}`, 0)
	has(edgeMetrics, `keel_server_shed_total{priority="low"}`, 0)
	has(edgeMetrics, `keel_server_concurrency_limit`, 1)
	has(edgeMetrics, `keel_server_in_flight`, 0)
	has(userMetrics, `keel_rpc_server_requests_total{code="unauthenticated",procedure="/shop.user.v1.UserService/Login"}`, 1)
	has(userMetrics, `keel_rpc_server_duration_seconds_bucket{procedure="/shop.user.v1.UserService/Register",le="+Inf"}`, 3)
	has(userMetrics, `keel_server_in_flight`, 0)
	has(userMetrics, `keel_bulkhead_refused_total{bulkhead="password hashing"}`, 0)
}

// startPlatform starts the platform as `keel up` does, on the test
// environment's configuration (free loopback ports) and a data directory
// of its own, with opts' other fields as given. It stops when the test
// ends, or when the returned cancel is called; either way the test fails
// if it stops with an error.
func startPlatform(t *testing.T, opts platform.Options) (*platform.Platform, context.CancelFunc) {
	t.Helper()
	opts.Env, opts.ConfigDir, opts.EdgeAddr, opts.DataDir = config.EnvTest, "../../../consul/kv", "127.0.0.1:0", t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	p, err := platform.Start(ctx, opts)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := p.Wait(); err != nil {
			t.Errorf("platform stopped with %v", err)
		}
	})
	return p, cancel
}
