package edge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	"github.com/keelplatform/keel/edge"
	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/cache/redistest"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/ratelimit"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/testkit"
)

// versioned is an inventory and user service that answers GetItem with
// its version and counts the calls that reach it.
type versioned struct {
	inventoryv1connect.UnimplementedInventoryServiceHandler
	userv1connect.UnimplementedUserServiceHandler
	version string
	calls   atomic.Int64
}

func (v *versioned) GetItem(_ context.Context, req *connect.Request[inventoryv1.GetItemRequest]) (*connect.Response[inventoryv1.GetItemResponse], error) {
	v.calls.Add(1)
	return connect.NewResponse(&inventoryv1.GetItemResponse{Item: &inventoryv1.Item{Sku: req.Msg.GetSku(), Name: v.version}}), nil
}

func (v *versioned) GetUser(_ context.Context, req *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	v.calls.Add(1)
	return connect.NewResponse(&userv1.GetUserResponse{User: &userv1.User{Id: req.Msg.GetId(), DisplayName: v.version}}), nil
}

// serveVersioned starts an upstream of version and registers it in
// registry as an instance of inventory and user, with the version in its
// metadata as boot puts it there.
func serveVersioned(t *testing.T, ctx context.Context, registry *discovery.Static, version string, n int) *versioned {
	t.Helper()
	up := &versioned{version: version}
	s := server.New(server.Config{}, slog.New(slog.DiscardHandler))
	s.Handle(inventoryv1connect.NewInventoryServiceHandler(up))
	s.Handle(userv1connect.NewUserServiceHandler(up))
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve(ctx) }()
	for _, service := range []string{"inventory", "user"} {
		if err := registry.Register(ctx, discovery.Instance{
			ID: fmt.Sprintf("%s-%s-%d", service, version, n), Service: service, Addr: s.Addr(),
			Meta: map[string]string{"version": version},
		}); err != nil {
			t.Fatal(err)
		}
	}
	return up
}

// startTrafficEdge starts an edge that authenticates, in front of one
// upstream of version v1, configured by configure.
func startTrafficEdge(t *testing.T, configure func(*edge.Config)) (*edge.Edge, *versioned) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	registry := discovery.NewStatic()
	up := serveVersioned(t, ctx, registry, "v1", 1)
	cfg := edge.Config{
		Server:   server.Config{Addr: "127.0.0.1:0"},
		Services: []string{userv1connect.UserServiceName, inventoryv1connect.InventoryServiceName},
		Auth:     &edge.Auth{Tokens: auth.HS256{Keys: [][]byte{tokenKey}}, IdentityKey: identityKey},
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
	return e, up
}

// getItem calls GetItem over Connect JSON with the headers given as name,
// value pairs, and returns the HTTP response's status, headers and body.
func getItem(t *testing.T, url string, kv ...string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url+"/shop.inventory.v1.InventoryService/GetItem", strings.NewReader(`{"sku":"KEEL-MUG"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(body)
}

// token issues a login token for user.
func token(t *testing.T, user string) string {
	t.Helper()
	tok, _, err := auth.Issuer{Key: tokenKey, TTL: time.Hour}.Issue(user)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// retryInfo returns the RetryInfo detail of err, or nil.
func retryInfo(err error) *errdetails.RetryInfo {
	var ce *connect.Error
	if !asConnect(err, &ce) {
		return nil
	}
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if ri, ok := v.(*errdetails.RetryInfo); ok {
				return ri
			}
		}
	}
	return nil
}

func asConnect(err error, target **connect.Error) bool {
	ce, ok := err.(*connect.Error)
	if ok {
		*target = ce
	}
	return ok
}

// TestRateLimitsPerCallerAndGroup: each caller (a user, or an address
// when anonymous, the client's behind a trusted proxy) has a budget of
// its own per group; a call over it is refused at the edge, never sent,
// with resource_exhausted, the group named, Retry-After and RetryInfo, in
// every protocol, HTTP 429 over REST; the refusals are counted by group;
// new limits apply at once, and none turns limiting off.
func TestRateLimitsPerCallerAndGroup(t *testing.T) {
	t.Parallel()
	groups := map[string]edge.RateGroup{
		"catalogue": {Methods: []string{"shop.inventory.v1.InventoryService/GetItem"}, Rate: 3, Per: time.Hour},
		"default":   {Rate: 2, Per: time.Hour, Burst: 2},
	}
	e, up := startTrafficEdge(t, func(c *edge.Config) {
		c.RateLimits = groups
		c.TrustedProxies = []string{"127.0.0.1"}
	})
	url := "http://" + e.Addr()

	codes := func(n int, kv ...string) []int {
		var out []int
		for range n {
			status, _, _ := getItem(t, url, kv...)
			out = append(out, status)
		}
		return out
	}
	want := fmt.Sprint([]int{200, 200, 200, 429})
	ada, grace := "5c1d9b6e-7f2a-4b3c-8d4e-1f2a3b4c5d6e", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
	for _, caller := range []struct {
		name string
		kv   []string
	}{
		{"anonymous, from 127.0.0.1", nil},
		{"ada", []string{"Authorization", "Bearer " + token(t, ada)}},
		{"grace", []string{"Authorization", "Bearer " + token(t, grace)}},
		// Behind the trusted proxy, each client has its own budget; what
		// a client wrote before its own address is not believed.
		{"client 203.0.113.7", []string{"X-Forwarded-For", "203.0.113.7"}},
		{"client 203.0.113.8", []string{"X-Forwarded-For", "198.51.100.1, 203.0.113.8"}},
	} {
		if got := fmt.Sprint(codes(4, caller.kv...)); got != want {
			t.Errorf("%s: HTTP statuses %s, want %s", caller.name, got, want)
		}
	}
	if got := fmt.Sprint(codes(1, "X-Forwarded-For", "192.0.2.99, 203.0.113.8")); got != "[429]" {
		t.Errorf("a client spoofing an earlier hop: %s, want its own address's budget, spent", got)
	}
	if n := up.calls.Load(); n != 15 {
		t.Errorf("the upstream saw %d calls, want the 15 allowed", n)
	}

	// The refusal, in Connect: resource_exhausted naming the group, with
	// both retry hints; never the caller or the token.
	status, header, body := getItem(t, url)
	if status != http.StatusTooManyRequests || header.Get("Retry-After") == "" {
		t.Fatalf("connect refusal: HTTP %d, Retry-After %q", status, header.Get("Retry-After"))
	}
	if ra, err := strconv.Atoi(header.Get("Retry-After")); err != nil || ra < 1 || ra > 1200 {
		t.Errorf("Retry-After %q, want whole seconds up to 20 minutes", header.Get("Retry-After"))
	}
	if !strings.Contains(body, `"code":"resource_exhausted"`) || !strings.Contains(body, "rate limit of catalogue exceeded") || strings.Contains(body, "127.0.0.1") {
		t.Errorf("connect refusal body: %s", body)
	}
	// In gRPC and gRPC-Web, with the RetryInfo detail.
	for name, opt := range map[string]connect.ClientOption{"grpc": connect.WithGRPC(), "grpcweb": connect.WithGRPCWeb()} {
		client := http.DefaultClient
		if name == "grpc" {
			client = testkit.H2CClient()
		}
		c := inventoryv1connect.NewInventoryServiceClient(client, url, opt)
		_, err := c.GetItem(context.Background(), connect.NewRequest(&inventoryv1.GetItemRequest{Sku: "KEEL-MUG"}))
		ri := retryInfo(err)
		if connect.CodeOf(err) != connect.CodeResourceExhausted || ri == nil || ri.GetRetryDelay().AsDuration() < 19*time.Minute {
			t.Errorf("%s: %v (retry info %v), want resource_exhausted with a RetryInfo of ~20m", name, err, ri)
		}
	}
	// Over REST: HTTP 429, Retry-After and a google.rpc.Status in JSON.
	res, err := http.Get(url + "/v1/items/KEEL-MUG")
	if err != nil {
		t.Fatal(err)
	}
	restBody, _ := io.ReadAll(res.Body)
	res.Body.Close()
	var st struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Details []struct {
			Type  string `json:"@type"`
			Delay string `json:"retryDelay"`
		} `json:"details"`
	}
	if err := json.Unmarshal(restBody, &st); err != nil || res.StatusCode != http.StatusTooManyRequests || res.Header.Get("Retry-After") == "" ||
		st.Code != int(connect.CodeResourceExhausted) || len(st.Details) != 1 || !strings.HasSuffix(st.Details[0].Type, "google.rpc.RetryInfo") {
		t.Errorf("REST refusal: HTTP %d, Retry-After %q, body %s", res.StatusCode, res.Header.Get("Retry-After"), restBody)
	}

	// The default group covers the methods in no other: GetUser.
	users := userv1connect.NewUserServiceClient(http.DefaultClient, url, headers("Authorization", "Bearer "+token(t, ada)))
	var userCodes []connect.Code
	for range 3 {
		_, err := users.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: ada}))
		code := connect.Code(0)
		if err != nil {
			code = connect.CodeOf(err)
		}
		userCodes = append(userCodes, code)
	}
	if got := fmt.Sprint(userCodes); got != fmt.Sprint([]connect.Code{0, 0, connect.CodeResourceExhausted}) {
		t.Errorf("GetUser under the default group: %s", got)
	}

	// Refusals are counted by group.
	limited := map[string]float64{}
	families, err := e.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "keel_edge_rate_limited_total" {
			for _, m := range f.GetMetric() {
				limited[m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
	}
	// catalogue: 5 callers' 4th call, the spoof, and the refusals in
	// Connect, gRPC, gRPC-Web and REST.
	if limited["catalogue"] != 10 || limited["default"] != 1 {
		t.Errorf("keel_edge_rate_limited_total: %v, want catalogue 10 and default 1", limited)
	}

	// New limits apply to the next call, every caller afresh; none turns
	// limiting off.
	if err := e.SetRateLimits(map[string]edge.RateGroup{"catalogue": {Methods: []string{"shop.inventory.v1.InventoryService"}, Rate: 1000, Per: time.Second}}); err != nil {
		t.Fatal(err)
	}
	if status, _, _ := getItem(t, url); status != http.StatusOK {
		t.Errorf("after raising the limit: HTTP %d", status)
	}
	if err := e.SetRateLimits(nil); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, err := users.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: ada})); err != nil {
			t.Fatalf("rate limits off: %v", err)
		}
	}
	// A bad group is refused whole, naming it.
	err = e.SetRateLimits(map[string]edge.RateGroup{
		"a": {Methods: []string{"shop.user.v1.UserService.Login"}, Rate: 1, Per: time.Second},
		"b": {Methods: []string{"shop.user.v1.UserService/Login"}, Rate: 1, Per: time.Second},
	})
	if err == nil || !strings.Contains(err.Error(), "at most one group") {
		t.Errorf("a method in two groups: %v", err)
	}
}

// TestRateLimitsSharedThroughRedis: two edges limiting on one real
// redis-server share each caller's budget; with Redis killed, each edge
// limits on its own and no call fails for it; with Redis back, they
// share again.
func TestRateLimitsSharedThroughRedis(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	groups := map[string]edge.RateGroup{"catalogue": {Methods: []string{"shop.inventory.v1.InventoryService"}, Rate: 4, Per: time.Hour}}
	var urls []string
	var limiters []*ratelimit.Limiter
	for range 2 {
		// A generous timeout: under the race detector on a busy machine a
		// Redis call can take longer than the default 50ms, and then the
		// edge rightly limits in memory.
		l := ratelimit.New(ratelimit.Options{RedisAddr: srv.Addr(), KeyPrefix: "test:", Timeout: 2 * time.Second, RetryEvery: 20 * time.Millisecond})
		t.Cleanup(l.Close)
		limiters = append(limiters, l)
		e, _ := startTrafficEdge(t, func(c *edge.Config) { c.RateLimits, c.Limiter = groups, l })
		urls = append(urls, "http://"+e.Addr())
	}
	waitUntil(t, "both edges on Redis", func() bool { return limiters[0].Distributed() && limiters[1].Distributed() })
	spend := func(user string) map[int]int {
		tok := token(t, user)
		statuses := map[int]int{}
		for i := range 12 {
			status, _, _ := getItem(t, urls[i%2], "Authorization", "Bearer "+tok)
			statuses[status]++
		}
		return statuses
	}
	if got := spend("0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d11"); got[200] != 4 || got[429] != 8 {
		t.Errorf("through two edges sharing Redis: %v, want 4 allowed in all", got)
	}
	srv.Kill()
	if got := spend("0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d12"); got[200] != 8 || got[429] != 4 {
		t.Errorf("Redis down: %v, want each edge to allow 4 on its own, and nothing else to fail", got)
	}
	srv.Restart()
	// Back means several calls in a row on Redis from each edge: the first
	// call on a restarted server may succeed on one connection while the
	// client still finds its other connections broken.
	waitUntil(t, "both edges back on Redis", func() bool {
		for range 5 {
			getItem(t, urls[0])
			getItem(t, urls[1])
		}
		return limiters[0].Distributed() && limiters[1].Distributed()
	})
	if got := spend("0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d13"); got[200] != 4 || got[429] != 8 {
		t.Errorf("Redis back: %v, want 4 allowed in all", got)
	}
}

// waitUntil polls cond until it holds, or fails t after 15s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// memoryBackend is the embedded backend with a KV layer held in memory,
// which the test changes as an operator changes Consul KV.
type memoryBackend struct {
	boot.Static
	kv *config.MemorySource
}

func (b memoryBackend) ConfigSource(config.Env, string) config.Source { return b.kv }

// bootEdge boots the edge process as cmd/edge does, on the test seed
// files, with the KV layer kv, in front of registry's instances.
func bootEdge(t *testing.T, registry *discovery.Static, kv *config.MemorySource) (url, admin string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	env := map[string]string{
		auth.TokenKeyVar:    string(tokenKey),
		auth.IdentityKeyVar: string(identityKey),
		"KEEL_LOG_LEVEL":    "warn",
	}
	r, err := boot.Start(ctx, edge.Service([]string{userv1connect.UserServiceName, inventoryv1connect.InventoryServiceName}), boot.Options{
		Env:       config.EnvTest,
		ConfigDir: "../consul/kv",
		Backend:   memoryBackend{Static: boot.Static{Discovery: registry}, kv: kv},
		Log:       io.Discard,
		LookupEnv: func(name string) (string, bool) { v, ok := env[name]; return v, ok },
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = r.Wait() })
	return "http://" + r.Instance.Addr, "http://" + r.Instance.Addr
}

// configStatus reads the edge's configuration status: how many KV
// versions it rejected, and the keys the last rejection named.
func configStatus(t *testing.T, admin string) (rejected uint64, keys []string) {
	t.Helper()
	res, err := http.Get(admin + boot.ConfigStatusPath)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var st boot.ConfigStatus
	body, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatalf("config status %s: %v", body, err)
	}
	if st.LastRejection != nil {
		keys = st.LastRejection.Keys
	}
	return st.Rejected, keys
}

// applied waits until the edge at admin runs on the version kv holds
// now: every change made to kv so far is applied (or rejected).
func applied(t *testing.T, admin string, kv *config.MemorySource) {
	t.Helper()
	snap, err := kv.Next(t.Context(), 0)
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, fmt.Sprintf("KV version %d applied", snap.Version), func() bool {
		res, err := http.Get(admin + boot.ConfigStatusPath)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var st boot.ConfigStatus
		if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
			t.Fatal(err)
		}
		return st.Version >= snap.Version
	})
}

// TestFaultInjectionSwitchedAtRunTime boots the edge process and drives a
// chaos drill through its KV layer: aborts answered at the edge in the
// caller's protocol and never sent upstream, a share of them, a delay
// bounded by the caller's deadline, a bad fault refused whole, and the
// drill switched off, with the calls counted at a real upstream.
func TestFaultInjectionSwitchedAtRunTime(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	registry := discovery.NewStatic()
	up := serveVersioned(t, ctx, registry, "v1", 1)
	kv := config.NewMemorySource(nil)
	url, admin := bootEdge(t, registry, kv)

	const getItemKey = "faults/shop.inventory.v1.InventoryService.GetItem"
	if status, _, _ := getItem(t, url); status != http.StatusOK || up.calls.Load() != 1 {
		t.Fatalf("no fault: HTTP %d, upstream calls %d", status, up.calls.Load())
	}

	// Every call aborted: unavailable in every protocol, nothing upstream.
	kv.Set(getItemKey, "{abort_percent: 100, abort_code: unavailable}")
	applied(t, admin, kv)
	before := up.calls.Load()
	status, _, body := getItem(t, url)
	if status != http.StatusServiceUnavailable || !strings.Contains(body, "fault injected at the edge") {
		t.Errorf("connect: HTTP %d %s", status, body)
	}
	for name, opt := range map[string]connect.ClientOption{"grpc": connect.WithGRPC(), "grpcweb": connect.WithGRPCWeb()} {
		client := http.DefaultClient
		if name == "grpc" {
			client = testkit.H2CClient()
		}
		_, err := inventoryv1connect.NewInventoryServiceClient(client, url, opt).GetItem(ctx, connect.NewRequest(&inventoryv1.GetItemRequest{Sku: "KEEL-MUG"}))
		if connect.CodeOf(err) != connect.CodeUnavailable {
			t.Errorf("%s: %v, want unavailable", name, err)
		}
	}
	res, err := http.Get(url + "/v1/items/KEEL-MUG")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("REST: HTTP %d, want 503", res.StatusCode)
	}
	if n := up.calls.Load(); n != before {
		t.Errorf("aborted calls reached the upstream: %d calls", n-before)
	}
	// Other methods are untouched.
	if _, err := userv1connect.NewUserServiceClient(http.DefaultClient, url, headers("Authorization", "Bearer "+token(t, knownUser))).
		GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: knownUser})); err != nil {
		t.Errorf("GetUser under a GetItem fault: %v", err)
	}

	// A share of calls, on the whole service's key: the method's own
	// entry wins while it is there.
	kv.Delete(getItemKey)
	kv.Set("faults/shop.inventory.v1.InventoryService", "{abort_percent: 30, abort_code: internal}")
	applied(t, admin, kv)
	before = up.calls.Load()
	aborted := 0
	for range 600 {
		switch status, _, _ := getItem(t, url); status {
		case http.StatusInternalServerError:
			aborted++
		case http.StatusOK:
		default:
			t.Fatalf("HTTP %d under a 30%% abort fault", status)
		}
	}
	if aborted < 130 || aborted > 230 {
		t.Errorf("%d of 600 calls aborted, want about 180 (30%%)", aborted)
	}
	if n := up.calls.Load() - before; n != int64(600-aborted) {
		t.Errorf("the upstream saw %d calls, want the %d not aborted", n, 600-aborted)
	}

	// A delay: held, then sent; within a shorter deadline, cut at it and
	// not sent.
	kv.Delete("faults/shop.inventory.v1.InventoryService")
	kv.Set(getItemKey, "{delay: 300ms, delay_percent: 100}")
	applied(t, admin, kv)
	before = up.calls.Load()
	start := time.Now()
	if status, _, _ := getItem(t, url); status != http.StatusOK || time.Since(start) < 300*time.Millisecond || up.calls.Load() != before+1 {
		t.Errorf("delayed call: HTTP %d after %s, want 200 after 300ms, sent once", status, time.Since(start))
	}
	before = up.calls.Load()
	start = time.Now()
	status, _, body = getItem(t, url, "Connect-Timeout-Ms", "100")
	if took := time.Since(start); status != http.StatusGatewayTimeout || took >= 300*time.Millisecond || !strings.Contains(body, "deadline_exceeded") {
		t.Errorf("delay past the caller's 100ms deadline: HTTP %d after %s: %s", status, took, body)
	}
	if n := up.calls.Load(); n != before {
		t.Errorf("a call whose deadline passed in the delay reached the upstream")
	}

	// A bad fault is refused whole, naming the key: the delay stays.
	rejectedBefore, _ := configStatus(t, admin)
	kv.Set(getItemKey, "{abort_percent: 100, abort_code: nope}")
	waitUntil(t, "the bad fault to be refused", func() bool {
		n, keys := configStatus(t, admin)
		return n > rejectedBefore && strings.Contains(fmt.Sprint(keys), getItemKey)
	})
	start = time.Now()
	if status, _, _ := getItem(t, url); status != http.StatusOK || time.Since(start) < 300*time.Millisecond {
		t.Errorf("after a refused change: HTTP %d after %s, want the delay still in force", status, time.Since(start))
	}

	// The drill ends: every call goes through, at once.
	kv.Delete(getItemKey)
	applied(t, admin, kv)
	before = up.calls.Load()
	start = time.Now()
	for range 50 {
		if status, _, _ := getItem(t, url); status != http.StatusOK {
			t.Fatalf("after the drill: HTTP %d", status)
		}
	}
	if n := up.calls.Load() - before; n != 50 || time.Since(start) > 5*time.Second {
		t.Errorf("after the drill the upstream saw %d of 50 calls, in %s", n, time.Since(start))
	}
}

// split calls GetItem n times, from 8 callers at once, with the headers
// of call i from kv(i), and counts the answers by the version that gave
// them.
func split(t *testing.T, url string, n int, kv func(i int) []string) map[string]int {
	t.Helper()
	var mu sync.Mutex
	counts := map[string]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				var h []string
				if kv != nil {
					h = kv(i)
				}
				status, _, body := getItem(t, url, h...)
				version := fmt.Sprintf("HTTP %d", status)
				if status == http.StatusOK {
					var res struct {
						Item struct {
							Name string `json:"name"`
						} `json:"item"`
					}
					_ = json.Unmarshal([]byte(body), &res)
					version = res.Item.Name
				}
				mu.Lock()
				counts[version]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return counts
}

// TestCanaryRouting boots the edge process in front of two stable
// instances (v1) and a canary (v2) and checks, through its KV layer: the
// weighted split over 2000 calls, stickiness per user and per client
// address, the Keel-Canary header forcing either side, a new weight
// applied at run time, and the stable side taking the canary's calls
// when it has no instance.
func TestCanaryRouting(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	registry := discovery.NewStatic()
	serveVersioned(t, ctx, registry, "v1", 1)
	serveVersioned(t, ctx, registry, "v1", 2)
	serveVersioned(t, ctx, registry, "v2", 1)
	kv := config.NewMemorySource(map[string]string{
		"trusted_proxies":  `["127.0.0.1"]`,
		"canary/inventory": "{version: v2, weight: 10}",
	})
	url, admin := bootEdge(t, registry, kv)

	// Without a canary both versions share the calls; with one, 10%.
	got := split(t, url, 2000, nil)
	if got["v2"] < 130 || got["v2"] > 270 || got["v1"]+got["v2"] != 2000 {
		t.Errorf("weight 10: %v, want about 200 of 2000 on v2", got)
	}

	// The header forces either side.
	if got := split(t, url, 200, func(int) []string { return []string{edge.CanaryHeader, "always"} }); got["v2"] != 200 {
		t.Errorf("Keel-Canary: always: %v", got)
	}
	if got := split(t, url, 200, func(int) []string { return []string{edge.CanaryHeader, "never"} }); got["v1"] != 200 {
		t.Errorf("Keel-Canary: never: %v", got)
	}

	// Sticky: each client (by address behind the trusted proxy, or by
	// user) always lands on the same side; 30% of the clients on v2.
	kv.Set("canary/inventory", "{version: v2, weight: 30, sticky: true}")
	applied(t, admin, kv)
	const clients = 400
	onCanary := 0
	for c := range clients {
		got := split(t, url, 5, func(int) []string {
			return []string{"X-Forwarded-For", fmt.Sprintf("198.51.%d.%d", c/250, c%250)}
		})
		if len(got) != 1 {
			t.Fatalf("client %d landed on both sides: %v", c, got)
		}
		if got["v2"] == 5 {
			onCanary++
		}
	}
	if onCanary < 90 || onCanary > 150 {
		t.Errorf("%d of %d sticky clients on the canary, want about 120 (30%%)", onCanary, clients)
	}
	for _, user := range []string{"5c1d9b6e-7f2a-4b3c-8d4e-1f2a3b4c5d6e", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", knownUser} {
		tok := token(t, user)
		if got := split(t, url, 20, func(int) []string { return []string{"Authorization", "Bearer " + tok} }); len(got) != 1 {
			t.Errorf("user %s landed on both sides: %v", user, got)
		}
	}

	// A new weight applies at run time.
	kv.Set("canary/inventory", "{version: v2, weight: 70}")
	applied(t, admin, kv)
	got = split(t, url, 2000, nil)
	if got["v2"] < 1330 || got["v2"] > 1470 {
		t.Errorf("weight 70: %v, want about 1400 of 2000 on v2", got)
	}

	// No canary instance: its share goes to the stable ones, even when
	// forced.
	if err := registry.Deregister(ctx, "inventory-v2-1"); err != nil {
		t.Fatal(err)
	}
	if got := split(t, url, 200, func(int) []string { return []string{edge.CanaryHeader, "always"} }); got["v1"] != 200 {
		t.Errorf("canary gone: %v, want every call on v1", got)
	}
}

// TestTrafficSettingsAreValidated: bad traffic settings are refused with
// the key they sit under, as `keel config push` and a hot reload refuse
// them.
func TestTrafficSettingsAreValidated(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ yaml, key, says string }{
		{"rate_limits: {groups: {login: {methods: [shop.user.v1.UserService.Login], rate: 5, per: 1m, brust: 5}}}", "rate_limits/groups/login", `unknown key "brust"`},
		{"rate_limits: {groups: {login: {methods: [shop.user.v1.UserService.Login], rate: 0, per: 1m}}}", "rate_limits/groups/login", "rate 0 is out of range"},
		{"rate_limits: {groups: {login: {methods: [shop.user.v1.UserService.Login], rate: 5}}}", "rate_limits/groups/login", "per 0s is out of range"},
		{"rate_limits: {groups: {login: {rate: 5, per: 1m}}}", "rate_limits/groups/login", "lists no methods"},
		{"rate_limits: {groups: {default: {methods: [shop.user.v1.UserService.Login], rate: 5, per: 1m}}}", "rate_limits/groups/default", "lists no methods"},
		{"rate_limits: {groups: {a: {methods: [shop.user.v1.UserService], rate: 5, per: 1m}, b: {methods: [shop.user.v1.UserService], rate: 5, per: 1m}}}", "rate_limits/groups/b", "at most one group"},
		{"rate_limits: {groups: {a: {methods: [Login], rate: 5, per: 1m}}}", "rate_limits/groups/a", "want a full method name"},
		{"rate_limits: {redis_addr: redis}", "rate_limits/redis_addr", "host:port"},
		{"rate_limits: {max_keys: 10}", "rate_limits/max_keys", "out of range"},
		{"canary: {inventory: {version: v2, weight: 150}}", "canary/inventory", "weight 150 is out of range"},
		{"canary: {inventory: {weight: 10}}", "canary/inventory", "version must be set"},
		{"faults: {shop.inventory.v1.InventoryService.GetItem: {abort_percent: 10, abort_code: nope}}", "faults/shop.inventory.v1.InventoryService.GetItem", `abort_code "nope"`},
		{"faults: {shop.inventory.v1.InventoryService.GetItem: {delay: 2m, delay_percent: 100}}", "faults/shop.inventory.v1.InventoryService.GetItem", "delay 2m0s is out of range"},
		{"faults: {inventory: {abort_percent: 10}}", "faults/inventory", "want a full method name"},
	} {
		err := config.CheckFile("edge.yaml", []byte(tc.yaml), edge.DefaultSettings())
		if err == nil || !strings.Contains(err.Error(), tc.key) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s:\n  %v\n  want an error naming %s that says %q", tc.yaml, err, tc.key, tc.says)
		}
	}
	good := `
rate_limits:
  groups:
    login: {methods: ["shop.user.v1.UserService/Login", shop.user.v1.UserService.Register], rate: 5, per: 1m, burst: 5}
    default: {rate: 100, per: 1s, burst: 200}
canary: {inventory: {version: v2, weight: 10, sticky: true}}
faults: {shop.inventory.v1.InventoryService.GetItem: {delay: 200ms, delay_percent: 100, abort_percent: 10, abort_code: unavailable}}
`
	if err := config.CheckFile("edge.yaml", []byte(good), edge.DefaultSettings()); err != nil {
		t.Errorf("the README's example: %v", err)
	}
}
