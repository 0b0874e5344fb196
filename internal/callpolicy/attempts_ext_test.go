package callpolicy_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/callpolicy"
	"github.com/keelplatform/keel/internal/client"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
)

// rawInstance is a loopback upstream answering every request with its
// handler, counting them: for answers a Connect handler would not give.
type rawInstance struct {
	addr  string
	calls atomic.Int64
}

func startRaw(t *testing.T, h http.HandlerFunc) *rawInstance {
	t.Helper()
	inst := &rawInstance{}
	srv := server.NewHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inst.calls.Add(1)
		h(w, r)
	}), server.Config{})
	srv.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inst.addr = ln.Addr().String()
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return inst
}

// steered returns a registry of the instances at addrs, by name, and a
// context whose calls go to the one named first first.
func steered(t *testing.T, first string, addrs map[string]string) (*discovery.Static, context.Context) {
	t.Helper()
	registry := discovery.NewStatic()
	for name, addr := range addrs {
		if err := registry.Register(context.Background(), discovery.Instance{ID: name, Service: "user", Addr: addr, Meta: map[string]string{"name": name}}); err != nil {
			t.Fatal(err)
		}
	}
	return registry, callpolicy.WithPreference(context.Background(), callpolicy.Preference{Key: "name", Value: first})
}

// usersOf returns a user client over registry under calls.
func usersOf(t *testing.T, registry discovery.Resolver, calls config.Calls) userv1connect.UserServiceClient {
	t.Helper()
	peers, err := client.New(registry, client.Options{Calls: &calls})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(peers.CloseIdleConnections)
	return client.Connect(peers, "user", userv1connect.NewUserServiceClient)
}

// TestReportSaysWhereAndHowOften: the report a caller asks for names the
// instance that answered and counts the attempts the call made.
func TestReportSaysWhereAndHowOften(t *testing.T) {
	t.Parallel()
	live := startInstance(t)
	registry, toDead := steered(t, "dead", map[string]string{"dead": deadAddr(t), "live": live.addr})
	users := usersOf(t, registry, config.DefaultCalls())

	var r callpolicy.Report
	if err := register(callpolicy.WithReport(toDead, &r), users); err != nil {
		t.Fatal(err)
	}
	if r.Instance != live.addr || r.Attempts != 2 {
		t.Fatalf("report %+v, want answered by %s after 2 attempts", r, live.addr)
	}
	r = callpolicy.Report{}
	toLive := callpolicy.WithPreference(context.Background(), callpolicy.Preference{Key: "name", Value: "live"})
	if err := getUser(callpolicy.WithReport(toLive, &r), users); err != nil {
		t.Fatal(err)
	}
	if r.Instance != live.addr || r.Attempts != 1 {
		t.Fatalf("report %+v, want answered by %s at the first attempt", r, live.addr)
	}
}

// TestResourceExhaustedIsRetriedOnlyWithAHint: an instance that sheds a
// read with resource_exhausted and a Retry-After hint has the read sent
// to another instance; without the hint the caller gets the refusal.
func TestResourceExhaustedIsRetriedOnlyWithAHint(t *testing.T) {
	t.Parallel()
	for _, hinted := range []bool{true, false} {
		shedding := startRaw(t, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			if hinted {
				w.Header().Set("Retry-After", "0")
			}
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(`{"code":"resource_exhausted","message":"shedding load"}`))
		})
		live := startInstance(t)
		registry, ctx := steered(t, "shedding", map[string]string{"shedding": shedding.addr, "live": live.addr})
		err := getUser(ctx, usersOf(t, registry, config.DefaultCalls()))
		switch {
		case hinted && (err != nil || live.calls.Load() != 1):
			t.Fatalf("with a hint: %v, %d calls to the other instance; want the read answered there", err, live.calls.Load())
		case !hinted && (connect.CodeOf(err) != connect.CodeResourceExhausted || live.calls.Load() != 0):
			t.Fatalf("without a hint: %v, %d calls to the other instance; want resource_exhausted, not retried", err, live.calls.Load())
		}
		if shedding.calls.Load() != 1 {
			t.Fatalf("the shedding instance got %d calls, want 1", shedding.calls.Load())
		}
	}
}

// TestBackoffSpacesTheAttempts: a retry waits retry/backoff after the
// attempt that failed.
func TestBackoffSpacesTheAttempts(t *testing.T) {
	t.Parallel()
	failing, live := startInstance(t), startInstance(t)
	failing.mode.Store(unavailable)
	registry, ctx := steered(t, "failing", map[string]string{"failing": failing.addr, "live": live.addr})
	calls := config.DefaultCalls()
	calls.Retry.Backoff, calls.Retry.MaxBackoff, calls.Retry.Jitter = 500*time.Millisecond, 500*time.Millisecond, 0
	users := usersOf(t, registry, calls)
	start := time.Now()
	if err := getUser(ctx, users); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < 500*time.Millisecond || failing.calls.Load() != 1 || live.calls.Load() != 1 {
		t.Fatalf("answered after %v, %d+%d attempts; want a retry after the 500ms backoff", took, failing.calls.Load(), live.calls.Load())
	}
}

// TestUnaryCallsAreReplayedWhateverTheirBody: a unary call whose body can
// be read again (none, empty, or with GetBody) is held and retried on
// another instance; one whose body cannot is sent once, as it comes.
func TestUnaryCallsAreReplayedWhateverTheirBody(t *testing.T) {
	t.Parallel()
	failing, live := startInstance(t), startInstance(t)
	failing.mode.Store(unavailable)
	registry, ctx := steered(t, "failing", map[string]string{"failing": failing.addr, "live": live.addr})
	transport, err := callpolicy.NewTransport(registry, config.DefaultCalls(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer transport.CloseIdleConnections()
	const base = "http://user/shop.user.v1.UserService/GetUser"
	msg, err := proto.Marshal(&userv1.GetUserRequest{Id: userID})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		req      func() *http.Request
		replayed bool
	}{
		{name: "GET, no body", replayed: true, req: func() *http.Request {
			r, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"?connect=v1&encoding=json&message="+url.QueryEscape(`{"id":"`+userID+`"}`), nil)
			return r
		}},
		{name: "empty body", replayed: true, req: func() *http.Request {
			r, _ := http.NewRequestWithContext(ctx, http.MethodPost, base, http.NoBody)
			r.Header.Set("Content-Type", "application/proto")
			return r
		}},
		{name: "body with GetBody", replayed: true, req: func() *http.Request {
			r, _ := http.NewRequestWithContext(ctx, http.MethodPost, base, bytes.NewReader(msg))
			r.Header.Set("Content-Type", "application/proto")
			return r
		}},
		{name: "body read once", replayed: false, req: func() *http.Request {
			r, _ := http.NewRequestWithContext(ctx, http.MethodPost, base, onlyReader{bytes.NewReader(msg)})
			r.Header.Set("Content-Type", "application/proto")
			return r
		}},
	} {
		failing.calls.Store(0)
		live.calls.Store(0)
		res, err := transport.RoundTrip(tc.req())
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		_, held := res.Body.(*callpolicy.Body)
		_ = res.Body.Close()
		if tc.replayed && (res.StatusCode != http.StatusOK || !held || failing.calls.Load() != 1 || live.calls.Load() != 1) {
			t.Fatalf("%s: status %d (held %v) after %d+%d attempts; want held and answered by the other instance", tc.name, res.StatusCode, held, failing.calls.Load(), live.calls.Load())
		}
		if !tc.replayed && (res.StatusCode == http.StatusOK || held || failing.calls.Load() != 1 || live.calls.Load() != 0) {
			t.Fatalf("%s: status %d (held %v) after %d+%d attempts; want the failure passed on as it came, sent once", tc.name, res.StatusCode, held, failing.calls.Load(), live.calls.Load())
		}
	}
}

// onlyReader hides every method of its reader but Read, so that a
// request cannot read it again.
type onlyReader struct{ r *bytes.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

// TestDeadlinesBindAnUpstreamThatIgnoresThem: an upstream that ignores
// the timeout it is sent still has the attempt ended at the call's own
// deadline (calls/timeout) and at the attempt's (calls/attempt_timeout),
// when the caller set none.
func TestDeadlinesBindAnUpstreamThatIgnoresThem(t *testing.T) {
	t.Parallel()
	stuck := startRaw(t, func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	for _, tc := range []struct {
		name    string
		timeout time.Duration
		attempt time.Duration
	}{
		{name: "call timeout", timeout: 200 * time.Millisecond},
		{name: "attempt timeout", timeout: time.Hour, attempt: 200 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			registry, _ := steered(t, "stuck", map[string]string{"stuck": stuck.addr})
			calls := config.DefaultCalls()
			calls.Timeout, calls.AttemptTimeout, calls.Retry.MaxAttempts = tc.timeout, tc.attempt, 1
			users := usersOf(t, registry, calls)
			done := make(chan error, 1)
			start := time.Now()
			go func() { done <- getUser(context.Background(), users) }()
			select {
			case err := <-done:
				if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
					t.Fatalf("%v, want deadline_exceeded", err)
				}
				if took := time.Since(start); took < 200*time.Millisecond {
					t.Fatalf("ended after %v, before the 200ms deadline", took)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the call outlived its 200ms deadline by 10s")
			}
		})
	}
}

// TestStreamIsSentElsewhereOnlyWhileNeverSent: a call whose body cannot be
// read again goes to another instance when it could not reach the one
// picked, up to retry/max_attempts attempts in all.
func TestStreamIsSentElsewhereOnlyWhileNeverSent(t *testing.T) {
	t.Parallel()
	live := startInstance(t)
	registry := discovery.NewStatic()
	for _, inst := range []discovery.Instance{
		{ID: "dead1", Addr: deadAddr(t), Meta: map[string]string{"group": "dead"}},
		{ID: "dead2", Addr: deadAddr(t), Meta: map[string]string{"group": "dead"}},
		{ID: "live", Addr: live.addr, Meta: map[string]string{"group": "live"}},
	} {
		inst.Service = "user"
		if err := registry.Register(context.Background(), inst); err != nil {
			t.Fatal(err)
		}
	}
	msg, err := proto.Marshal(&userv1.GetUserRequest{Id: userID})
	if err != nil {
		t.Fatal(err)
	}
	for _, attempts := range []int{3, 2} {
		calls := config.DefaultCalls()
		calls.Retry.MaxAttempts = attempts
		transport, err := callpolicy.NewTransport(registry, calls, nil)
		if err != nil {
			t.Fatal(err)
		}
		var report callpolicy.Report
		ctx := callpolicy.WithReport(callpolicy.WithPreference(context.Background(), callpolicy.Preference{Key: "group", Value: "dead"}), &report)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://user/shop.user.v1.UserService/GetUser", onlyReader{bytes.NewReader(msg)})
		req.Header.Set("Content-Type", "application/proto")
		before := live.calls.Load()
		res, err := transport.RoundTrip(req)
		switch {
		case attempts == 3 && err != nil:
			t.Fatalf("3 attempts: %v, want the third instance to answer", err)
		case attempts == 3:
			_ = res.Body.Close()
			if res.StatusCode != http.StatusOK || report.Instance != live.addr || report.Attempts != 3 {
				t.Fatalf("3 attempts: status %d, report %+v; want answered by %s at the third attempt", res.StatusCode, report, live.addr)
			}
		case err == nil:
			_ = res.Body.Close()
			t.Fatalf("2 attempts: answered (%d), want an error: both instances allowed are down", res.StatusCode)
		case connect.CodeOf(err) != connect.CodeUnavailable || live.calls.Load() != before:
			t.Fatalf("2 attempts: %v, %d calls to the live instance; want unavailable, not sent a third time", err, live.calls.Load()-before)
		}
		transport.CloseIdleConnections()
	}
}

// TestHedgeCarriesTheWholeCall: a hedged attempt sends the caller's
// request as it came, body and all.
func TestHedgeCarriesTheWholeCall(t *testing.T) {
	t.Parallel()
	slow, fast := startInstance(t), startInstance(t)
	slow.delay.Store(int64(time.Second))
	registry, ctx := steered(t, "slow", map[string]string{"slow": slow.addr, "fast": fast.addr})
	calls := config.DefaultCalls()
	calls.Hedge = map[string]time.Duration{"shop.user.v1.UserService.GetUser": 20 * time.Millisecond}
	users := usersOf(t, registry, calls)
	res, err := users.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: userID}))
	if err != nil {
		t.Fatal(err)
	}
	if u := res.Msg.GetUser(); u.GetDisplayName() != fast.addr || u.GetId() != userID {
		t.Fatalf("answered %q for id %q; want the hedge's answer from %s, for %s", u.GetDisplayName(), u.GetId(), fast.addr, userID)
	}
}

// TestCallsRefusedARetryCountForTheThrottle: a call whose retry the
// budget refused has failed all the same, and the throttle counts it: a
// method failing at every instance is throttled with no retry budget at
// all.
func TestCallsRefusedARetryCountForTheThrottle(t *testing.T) {
	t.Parallel()
	a, b := startInstance(t), startInstance(t)
	a.mode.Store(unavailable)
	b.mode.Store(unavailable)
	calls := config.DefaultCalls()
	calls.Retry.Backoff, calls.Retry.BudgetRatio, calls.Retry.BudgetMinPerSecond = 0, 0, 0
	calls.Throttle = config.Throttle{FailureRate: 0.5, MinCalls: 10, Window: time.Minute, MaxRejectionRate: 0.9}
	users, reg := peersOf(t, calls, nil, a.addr, b.addr)
	throttled := 0
	for range 100 {
		err := getUser(context.Background(), users)
		switch {
		case errors.Is(err, callpolicy.ErrThrottled):
			throttled++
		case connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "instance is failing"):
			// A call refused its retry is answered by its attempt.
			t.Fatalf("%v, want the instance's unavailable, or throttled", err)
		}
	}
	if refused, _ := gauge(t, reg, "keel_client_retry_budget_exhausted_total", map[string]string{"service": "user"}); refused == 0 {
		t.Fatal("no retry was refused: the test did not exercise the budget")
	}
	if sent := a.calls.Load() + b.calls.Load(); throttled < 50 || sent+int64(throttled) != 100 {
		t.Fatalf("%d of 100 calls throttled, %d sent; want most throttled once the failures were counted", throttled, sent)
	}
}

// TestRoundTripLeavesTheCallersRequestAlone: a call retried elsewhere
// sends each attempt as a request of its own; the caller's request keeps
// its body and URL.
func TestRoundTripLeavesTheCallersRequestAlone(t *testing.T) {
	t.Parallel()
	failing, live := startInstance(t), startInstance(t)
	failing.mode.Store(unavailable)
	registry, steer := steered(t, "failing", map[string]string{"failing": failing.addr, "live": live.addr})
	transport, err := callpolicy.NewTransport(registry, config.DefaultCalls(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer transport.CloseIdleConnections()
	msg, err := proto.Marshal(&userv1.GetUserRequest{Id: userID})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(steer, time.Minute) // the caller's deadline: attempts carry it as it is
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://user/shop.user.v1.UserService/GetUser", bytes.NewReader(msg))
	req.Header.Set("Content-Type", "application/proto")
	body, target := req.Body, *req.URL
	res, err := transport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = res.Body.Close()
	if res.StatusCode != http.StatusOK || failing.calls.Load() != 1 || live.calls.Load() != 1 {
		t.Fatalf("status %d after %d+%d attempts, want answered by the other instance", res.StatusCode, failing.calls.Load(), live.calls.Load())
	}
	if req.Body != body || *req.URL != target || req.Context() != ctx {
		t.Fatal("the caller's request was changed by a retry")
	}
}

// TestStreamToUnreachableInstancesFailsUnavailable: a call passed on as a
// stream that could reach none of the instances fails as a unary call
// does: unavailable, saying why its last attempt failed, after trying
// every instance once.
func TestStreamToUnreachableInstancesFailsUnavailable(t *testing.T) {
	t.Parallel()
	registry := discovery.NewStatic()
	for _, id := range []string{"dead1", "dead2"} {
		if err := registry.Register(context.Background(), discovery.Instance{ID: id, Service: "user", Addr: deadAddr(t)}); err != nil {
			t.Fatal(err)
		}
	}
	transport, err := callpolicy.NewTransport(registry, config.DefaultCalls(), nil) // 3 attempts
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://user/shop.user.v1.UserService/GetUser", onlyReader{bytes.NewReader(nil)})
	req.Header.Set("Content-Type", "application/proto")
	res, err := transport.RoundTrip(req)
	if err == nil {
		_ = res.Body.Close()
		t.Fatal("answered with no instance reachable")
	}
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("%v (code %v), want unavailable saying the connection was refused", err, connect.CodeOf(err))
	}
}

// TestRetryWithNoInstanceLeftIsAnsweredByTheAttemptBefore: when the
// instance a retry was meant for has left discovery by the time it is
// sent, the call is answered by the attempt it made, not by an error of
// the balancer's.
func TestRetryWithNoInstanceLeftIsAnsweredByTheAttemptBefore(t *testing.T) {
	t.Parallel()
	live := startInstance(t)
	registry := discovery.NewStatic()
	leaving := startRaw(t, func(w http.ResponseWriter, r *http.Request) {
		// The other instance leaves while this one answers.
		if err := registry.Deregister(r.Context(), "live"); err != nil {
			t.Error(err)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"code":"unavailable","message":"instance is failing"}`))
	})
	for name, addr := range map[string]string{"leaving": leaving.addr, "live": live.addr} {
		if err := registry.Register(context.Background(), discovery.Instance{ID: name, Service: "user", Addr: addr, Meta: map[string]string{"name": name}}); err != nil {
			t.Fatal(err)
		}
	}
	ctx := callpolicy.WithPreference(context.Background(), callpolicy.Preference{Key: "name", Value: "leaving"})
	var report callpolicy.Report
	err := getUser(callpolicy.WithReport(ctx, &report), usersOf(t, registry, config.DefaultCalls()))
	if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "instance is failing") {
		t.Fatalf("%v, want the first attempt's answer", err)
	}
	if leaving.calls.Load() != 1 || live.calls.Load() != 0 || report.Attempts != 1 {
		t.Fatalf("%d+%d calls, %d attempts reported; want the one attempt", leaving.calls.Load(), live.calls.Load(), report.Attempts)
	}
}
