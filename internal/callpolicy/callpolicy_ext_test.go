package callpolicy_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/callpolicy"
	"github.com/keelplatform/keel/internal/client"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/shed"
)

// Behaviours of a test instance.
const (
	answer      = iota // answer at once (after delay, if set)
	unavailable        // fail with unavailable
	tear               // send part of a success, then die
	hang               // wait for the caller's deadline
	reset              // reset the call before answering anything
)

// instance is a loopback upstream serving the user contract whose
// behaviour a test sets, counting every request that reaches it.
type instance struct {
	userv1connect.UnimplementedUserServiceHandler
	addr  string
	calls atomic.Int64
	mode  atomic.Int32
	delay atomic.Int64 // ns, for answer
	// registerDelay is added to Register's answer (ns): a method slow by
	// nature, as hashing a password is.
	registerDelay atomic.Int64

	// getUserFails makes GetUser alone answer unavailable, as a method
	// whose own dependency is down does.
	getUserFails atomic.Bool

	mu         sync.Mutex
	deadlines  []time.Duration // time left the upstream saw, per call
	ran        []time.Duration // how long each call ran before it ended
	priorities []string        // the Keel-Priority header of each call
}

func (i *instance) GetUser(ctx context.Context, req *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	if err := i.behave(ctx); err != nil {
		return nil, err
	}
	if i.getUserFails.Load() {
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("a dependency of GetUser is down"))
	}
	return connect.NewResponse(&userv1.GetUserResponse{User: &userv1.User{Id: req.Msg.GetId(), DisplayName: i.addr}}), nil
}

func (i *instance) Register(ctx context.Context, req *connect.Request[userv1.RegisterRequest]) (*connect.Response[userv1.RegisterResponse], error) {
	if err := i.behave(ctx); err != nil {
		return nil, err
	}
	if d := time.Duration(i.registerDelay.Load()); d > 0 {
		time.Sleep(d)
	}
	return connect.NewResponse(&userv1.RegisterResponse{User: &userv1.User{Email: req.Msg.GetEmail()}}), nil
}

func (i *instance) behave(ctx context.Context) error {
	start := time.Now()
	if d, ok := ctx.Deadline(); ok {
		i.mu.Lock()
		i.deadlines = append(i.deadlines, time.Until(d))
		i.mu.Unlock()
	}
	switch i.mode.Load() {
	case unavailable:
		return connect.NewError(connect.CodeUnavailable, errors.New("instance is failing"))
	case hang:
		<-ctx.Done()
		i.mu.Lock()
		i.ran = append(i.ran, time.Since(start))
		i.mu.Unlock()
		return connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
	}
	if d := time.Duration(i.delay.Load()); d > 0 {
		time.Sleep(d)
	}
	return nil
}

// startInstance serves an instance on loopback (HTTP/1.1 and h2c) until
// the test ends.
func startInstance(t *testing.T) *instance {
	t.Helper()
	inst := &instance{}
	mux := http.NewServeMux()
	mux.Handle(userv1connect.NewUserServiceHandler(inst))
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inst.calls.Add(1)
		inst.mu.Lock()
		inst.priorities = append(inst.priorities, r.Header.Get(shed.PriorityHeader))
		inst.mu.Unlock()
		if inst.mode.Load() == reset {
			panic(http.ErrAbortHandler)
		}
		if inst.mode.Load() == tear {
			w.Header().Set("Content-Type", r.Header.Get("Content-Type"))
			w.Header().Set("Content-Length", "100")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte(`{"user":`))
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
		mux.ServeHTTP(w, r)
	})
	srv := server.NewHTTPServer(handler, server.Config{})
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

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// peersOf returns a user client whose calls go to addrs under calls,
// with the call policy's metrics in the returned registry.
func peersOf(t *testing.T, calls config.Calls, opts []connect.ClientOption, addrs ...string) (userv1connect.UserServiceClient, *prometheus.Registry) {
	t.Helper()
	registry := discovery.NewStatic()
	for i, addr := range addrs {
		if err := registry.Register(context.Background(), discovery.Instance{ID: fmt.Sprintf("user-%d", i), Service: "user", Addr: addr}); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	peers, err := client.New(registry, client.Options{Calls: &calls, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(peers.CloseIdleConnections)
	return client.Connect(peers, "user", userv1connect.NewUserServiceClient, opts...), reg
}

// gauge reads one series of a registry: name with the given labels.
func gauge(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	metrics:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue metrics
				}
			}
			return value(m), true
		}
	}
	return 0, false
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	return 0
}

// eventually waits until cond holds, calling it every few milliseconds,
// or fails the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}

var protocols = map[string][]connect.ClientOption{
	"connect": nil,
	"grpc":    {connect.WithGRPC()},
}

const userID = "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"

func getUser(ctx context.Context, c userv1connect.UserServiceClient) error {
	_, err := c.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: userID}))
	return err
}

func register(ctx context.Context, c userv1connect.UserServiceClient) error {
	_, err := c.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{Email: "a@example.com", Password: "correct horse", DisplayName: "A"}))
	return err
}

// TestFailingInstanceIsTakenOutAndProbedBackIn: one of two instances
// starts resetting every call, as a sick instance does. Idempotent
// callers see no error (their calls are sent to the healthy one), the
// failing instance's breaker opens and it gets no more calls, and once it
// recovers it is probed back in.
func TestFailingInstanceIsTakenOutAndProbedBackIn(t *testing.T) {
	t.Parallel()
	for name, opts := range protocols {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			bad, good := startInstance(t), startInstance(t)
			settings := config.DefaultCalls()
			settings.Breaker = config.Breaker{Failures: 3, Window: 5, OpenFor: 300 * time.Millisecond, Probes: 2}
			users, reg := peersOf(t, settings, opts, bad.addr, good.addr)
			ctx := context.Background()
			state := func(addr string) float64 {
				v, _ := gauge(t, reg, "keel_client_breaker_state", map[string]string{"instance": addr})
				return v
			}

			for range 20 {
				if err := getUser(ctx, users); err != nil {
					t.Fatal(err)
				}
			}
			bad.mode.Store(reset)
			calls := 0
			eventually(t, 10*time.Second, "the failing instance's breaker to open", func() bool {
				calls++
				if err := getUser(ctx, users); err != nil {
					t.Fatalf("call %d failed while one instance was healthy: %v", calls, err)
				}
				return state(bad.addr) == 2
			})
			before := bad.calls.Load()
			for range 20 {
				if err := getUser(ctx, users); err != nil {
					t.Fatal(err)
				}
			}
			// An open breaker keeps the instance out; a half-open one lets
			// only its probes through.
			if extra := bad.calls.Load() - before; extra > 2 {
				t.Fatalf("failing instance got %d calls with its breaker open", extra)
			}

			bad.mode.Store(answer)
			eventually(t, 5*time.Second, "the recovered instance's breaker to close", func() bool {
				if err := getUser(ctx, users); err != nil {
					t.Fatal(err)
				}
				return state(bad.addr) == 0
			})
			before = bad.calls.Load()
			eventually(t, 5*time.Second, "the recovered instance to take calls again", func() bool {
				if err := getUser(ctx, users); err != nil {
					t.Fatal(err)
				}
				return bad.calls.Load() > before+2
			})
		})
	}
}

// TestCallThatMayHaveReachedAServerIsNeverSentAgain: an instance that dies
// in the middle of its answers may have done what it was asked. A
// non-idempotent call that met it fails cleanly and is not sent elsewhere;
// an idempotent one is answered by the other instance.
func TestCallThatMayHaveReachedAServerIsNeverSentAgain(t *testing.T) {
	t.Parallel()
	for name, opts := range protocols {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			torn, live := startInstance(t), startInstance(t)
			torn.mode.Store(tear)
			users, _ := peersOf(t, config.DefaultCalls(), opts, torn.addr, live.addr)
			ctx := context.Background()

			// Concurrent callers, so that the healthy instance is busy and
			// the balancer keeps sending some calls to the torn one.
			var sent, failed atomic.Int64
			var wg sync.WaitGroup
			stop := time.Now().Add(10 * time.Second)
			for range 8 {
				wg.Go(func() {
					for torn.calls.Load() < 3 && time.Now().Before(stop) {
						sent.Add(1)
						if err := register(ctx, users); err != nil {
							if connect.CodeOf(err) != connect.CodeUnavailable {
								t.Errorf("want unavailable, got %v", err)
							}
							failed.Add(1)
						}
					}
				})
			}
			wg.Wait()
			if torn.calls.Load() < 3 {
				t.Fatalf("the torn instance got %d of %d calls; the test never exercised it", torn.calls.Load(), sent.Load())
			}
			if got := torn.calls.Load() + live.calls.Load(); got != sent.Load() {
				t.Fatalf("%d calls reached the instances for %d sent: a non-idempotent call was sent again", got, sent.Load())
			}
			if failed.Load() != torn.calls.Load() {
				t.Fatalf("%d calls failed, but %d met the torn instance", failed.Load(), torn.calls.Load())
			}

			// Idempotent calls that meet the torn instance are answered by
			// the other one.
			torn.calls.Store(0)
			live.calls.Store(0)
			users, _ = peersOf(t, config.DefaultCalls(), opts, torn.addr, live.addr)
			sent.Store(0)
			stop = time.Now().Add(10 * time.Second)
			for range 8 {
				wg.Go(func() {
					for torn.calls.Load() < 3 && time.Now().Before(stop) {
						sent.Add(1)
						if err := getUser(ctx, users); err != nil {
							t.Errorf("idempotent call failed: %v", err)
						}
					}
				})
			}
			wg.Wait()
			if torn.calls.Load() < 3 || live.calls.Load() != sent.Load() {
				t.Fatalf("torn got %d, live got %d of %d idempotent calls; want live to answer every one", torn.calls.Load(), live.calls.Load(), sent.Load())
			}
		})
	}
}

// TestCallThatNeverReachedAServerIsSentElsewhere: a refused connection
// means the call was never seen, so even a non-idempotent call goes to
// another instance, exactly once.
func TestCallThatNeverReachedAServerIsSentElsewhere(t *testing.T) {
	t.Parallel()
	for name, opts := range protocols {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			live := startInstance(t)
			users, _ := peersOf(t, config.DefaultCalls(), opts, deadAddr(t), live.addr)
			for i := range 20 {
				if err := register(context.Background(), users); err != nil {
					t.Fatalf("call %d: %v", i, err)
				}
			}
			if got := live.calls.Load(); got != 20 {
				t.Fatalf("live instance served %d calls, want 20 (each exactly once)", got)
			}
		})
	}
}

// TestRetriesStayWithinTheBudget: with every instance failing, retries
// could triple the load on an upstream already down; the budget keeps the
// attempts it sees within calls x (1 + budget_ratio).
func TestRetriesStayWithinTheBudget(t *testing.T) {
	t.Parallel()
	var addrs []string
	var insts []*instance
	for range 3 {
		inst := startInstance(t)
		inst.mode.Store(unavailable)
		insts = append(insts, inst)
		addrs = append(addrs, inst.addr)
	}
	calls := config.DefaultCalls()
	calls.Retry.MaxAttempts = 3
	calls.Retry.Backoff = 0
	calls.Retry.BudgetRatio = 0.2
	calls.Retry.BudgetMinPerSecond = 0
	// Keep the other protections out of the way: this test is about the
	// budget alone.
	calls.Breaker = config.Breaker{Failures: 1000, Window: 1000, OpenFor: time.Second, Probes: 1}
	calls.Throttle.MinCalls = 100000
	users, reg := peersOf(t, calls, nil, addrs...)

	const callers, each = 8, 50
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range each {
				if err := getUser(context.Background(), users); connect.CodeOf(err) != connect.CodeUnavailable {
					t.Errorf("want unavailable, got %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	var attempts int64
	for _, inst := range insts {
		attempts += inst.calls.Load()
	}
	const sent = callers * each
	if limit := int64(sent * (1 + calls.Retry.BudgetRatio)); attempts > limit+1 {
		t.Fatalf("%d attempts for %d calls: over the budget's %d", attempts, sent, limit)
	}
	if attempts <= sent {
		t.Fatalf("%d attempts for %d calls: the budget allowed no retry at all", attempts, sent)
	}
	if v, _ := gauge(t, reg, "keel_client_retry_budget_exhausted_total", map[string]string{"service": "user"}); v == 0 {
		t.Fatal("keel_client_retry_budget_exhausted_total stayed 0")
	}
}

// TestSlowInstanceGetsASmallShare: power of two choices weighted by
// latency sends few calls to an instance ten times slower than its peer
// (round robin would send it half).
func TestSlowInstanceGetsASmallShare(t *testing.T) {
	t.Parallel()
	fast, slow := startInstance(t), startInstance(t)
	fast.delay.Store(int64(5 * time.Millisecond))
	slow.delay.Store(int64(50 * time.Millisecond))
	calls := config.DefaultCalls()
	calls.Balancer.SlowStart = 0
	users, _ := peersOf(t, calls, nil, fast.addr, slow.addr)
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for range 150 {
				if err := getUser(context.Background(), users); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	share := float64(slow.calls.Load()) / float64(slow.calls.Load()+fast.calls.Load())
	t.Logf("slow instance share: %.3f (%d of %d)", share, slow.calls.Load(), slow.calls.Load()+fast.calls.Load())
	if share > 0.15 {
		t.Fatalf("the 10x slower instance got %.0f%% of calls, want under 15%%", share*100)
	}
}

// TestSlowMethodDoesNotMakeItsInstanceLookSlow: one of two equal
// instances keeps serving a method slow by nature (Register, 300ms; the
// calls are steered there by a preference), and cheap reads (GetUser,
// 2ms on both, from four callers) still go to it in fair share: its
// latency is measured against each method's usual latency, not lumped
// together, where the slow method would make it look 150 times slower
// for the reads.
func TestSlowMethodDoesNotMakeItsInstanceLookSlow(t *testing.T) {
	t.Parallel()
	a, b := startInstance(t), startInstance(t)
	for _, inst := range []*instance{a, b} {
		inst.delay.Store(int64(2 * time.Millisecond))
		inst.registerDelay.Store(int64(300 * time.Millisecond))
	}
	registry := discovery.NewStatic()
	for i, inst := range []*instance{a, b} {
		if err := registry.Register(context.Background(), discovery.Instance{
			ID: fmt.Sprintf("user-%d", i), Service: "user", Addr: inst.addr, Meta: map[string]string{"role": fmt.Sprint(i)},
		}); err != nil {
			t.Fatal(err)
		}
	}
	calls := config.DefaultCalls()
	calls.Balancer.SlowStart = 0
	peers, err := client.New(registry, client.Options{Calls: &calls, Metrics: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(peers.CloseIdleConnections)
	users := client.Connect(peers, "user", userv1connect.NewUserServiceClient)

	ctx, stop := context.WithCancel(context.Background())
	toA := callpolicy.WithPreference(ctx, callpolicy.Preference{Key: "role", Value: "0"})
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			_ = register(toA, users)
		}
	})
	// Let A serve a Register first, so its latency starts high.
	eventually(t, 5*time.Second, "a Register at A", func() bool { return a.calls.Load() > 0 })
	var readers sync.WaitGroup
	var atA, total atomic.Int64
	for range 4 {
		readers.Go(func() {
			for range 100 {
				res, err := users.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: userID}))
				if err != nil {
					t.Error(err)
					return
				}
				total.Add(1)
				if res.Msg.GetUser().GetDisplayName() == a.addr {
					atA.Add(1)
				}
			}
		})
	}
	readers.Wait()
	stop()
	wg.Wait()
	share := float64(atA.Load()) / float64(total.Load())
	t.Logf("reads at the instance serving Register: %.3f (%d of %d)", share, atA.Load(), total.Load())
	if share < 0.20 {
		t.Fatalf("the instance serving the slow method got %.0f%% of the cheap reads, want a fair share (at least 20%%; 5 to 11%% when latency was lumped across methods)", share*100)
	}
}

// TestNoDownstreamCallOutlivesItsCaller: a caller with 100ms left; the
// upstream sees at most that much time, stops when it is up, and a retry
// after an attempt timeout gets only what is left.
func TestNoDownstreamCallOutlivesItsCaller(t *testing.T) {
	t.Parallel()
	for name, opts := range protocols {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			a, b := startInstance(t), startInstance(t)
			a.mode.Store(hang)
			b.mode.Store(hang)
			calls := config.DefaultCalls()
			calls.AttemptTimeout = 40 * time.Millisecond
			users, _ := peersOf(t, calls, opts, a.addr, b.addr)

			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			began := time.Now()
			err := getUser(ctx, users)
			took := time.Since(began)
			if code := connect.CodeOf(err); code != connect.CodeDeadlineExceeded {
				t.Fatalf("want deadline_exceeded, got %v", err)
			}
			if took > 150*time.Millisecond {
				t.Fatalf("the call took %v with 100ms left", took)
			}
			var total time.Duration
			for _, inst := range []*instance{a, b} {
				eventually(t, time.Second, "the upstream calls to end", func() bool {
					inst.mu.Lock()
					defer inst.mu.Unlock()
					return len(inst.ran) == len(inst.deadlines)
				})
				inst.mu.Lock()
				if len(inst.deadlines) != int(inst.calls.Load()) {
					t.Errorf("%d of %d attempts at %s carried a deadline", len(inst.deadlines), inst.calls.Load(), inst.addr)
				}
				for i, left := range inst.deadlines {
					if left > calls.AttemptTimeout {
						t.Errorf("attempt at %s saw %v left, more than the attempt timeout of %v", inst.addr, left, calls.AttemptTimeout)
					}
					if inst.ran[i] > left+50*time.Millisecond {
						t.Errorf("attempt at %s ran %v with %v left", inst.addr, inst.ran[i], left)
					}
					total += left
				}
				inst.mu.Unlock()
			}
			// Attempts follow one another: together they had no more time
			// than the caller.
			if total > 100*time.Millisecond {
				t.Fatalf("upstream attempts were given %v in all, more than the caller's 100ms", total)
			}
			if a.calls.Load()+b.calls.Load() < 2 {
				t.Fatalf("the attempt that timed out was not retried on the other instance")
			}
		})
	}
}

// TestMetricsNameTheUpstreamInstances: the call policy's series carry the
// service and instance labels Prometheus users expect.
func TestMetricsNameTheUpstreamInstances(t *testing.T) {
	t.Parallel()
	a, b := startInstance(t), startInstance(t)
	b.mode.Store(unavailable)
	users, reg := peersOf(t, config.DefaultCalls(), nil, a.addr, b.addr)
	for range 20 {
		if err := getUser(context.Background(), users); err != nil {
			t.Fatal(err)
		}
	}
	for _, series := range []struct {
		name   string
		labels map[string]string
		min    float64
	}{
		{"keel_client_picks_total", map[string]string{"service": "user", "instance": a.addr}, 1},
		{"keel_client_picks_total", map[string]string{"service": "user", "instance": b.addr}, 1},
		{"keel_client_retries_total", map[string]string{"service": "user"}, 1},
		{"keel_client_breaker_state", map[string]string{"service": "user", "instance": a.addr}, 0},
	} {
		v, ok := gauge(t, reg, series.name, series.labels)
		if !ok || v < series.min {
			t.Errorf("%s%v = %v (present %v), want at least %v", series.name, series.labels, v, ok, series.min)
		}
	}
	if !strings.Contains(fmt.Sprint(reg.Gather()), "keel_client_retry_budget_exhausted_total") {
		t.Error("keel_client_retry_budget_exhausted_total is not registered")
	}
}

// TestHedgedReadGoesToAnotherInstance: with hedging on for a read-only
// method, a call whose first instance is slow is answered by a second
// attempt to another instance after the hedge delay; with it off (the
// default), the caller waits for the slow one.
func TestHedgedReadGoesToAnotherInstance(t *testing.T) {
	t.Parallel()
	const slowness = 300 * time.Millisecond
	for _, hedged := range []bool{false, true} {
		t.Run(fmt.Sprintf("hedged=%v", hedged), func(t *testing.T) {
			t.Parallel()
			slow, fast := startInstance(t), startInstance(t)
			slow.delay.Store(int64(slowness))
			ctx := context.Background()
			registry := discovery.NewStatic()
			_ = registry.Register(ctx, discovery.Instance{ID: "slow", Service: "user", Addr: slow.addr})
			calls := config.DefaultCalls()
			if hedged {
				calls.Hedge = map[string]time.Duration{"shop.user.v1.UserService.GetUser": 20 * time.Millisecond}
			}
			peers, err := client.New(registry, client.Options{Calls: &calls})
			if err != nil {
				t.Fatal(err)
			}
			users := client.Connect(peers, "user", userv1connect.NewUserServiceClient)
			if err := getUser(ctx, users); err != nil {
				t.Fatal(err)
			}
			// A new instance warms in slowly, so the next call's first
			// attempt still goes to the slow one.
			_ = registry.Register(ctx, discovery.Instance{ID: "fast", Service: "user", Addr: fast.addr})
			began := time.Now()
			res, err := users.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: userID}))
			took := time.Since(began)
			if err != nil {
				t.Fatal(err)
			}
			by := res.Msg.GetUser().GetDisplayName()
			switch {
			case hedged && (by != fast.addr || took >= slowness):
				t.Fatalf("answered by %s after %v; want the other instance, before the slow one's %v", by, took, slowness)
			case !hedged && (by != slow.addr || took < slowness || fast.calls.Load() != 0):
				t.Fatalf("answered by %s after %v, %d calls to the other: hedging is off by default", by, took, fast.calls.Load())
			}
		})
	}
}

// TestSettingsApplyToTheNextCall: call settings change while the process
// runs, as configuration reloads do: turning retries off takes effect at
// once. Every call is steered to the failing instance first, so each one
// succeeds only if it is retried on the other.
func TestSettingsApplyToTheNextCall(t *testing.T) {
	t.Parallel()
	failing, live := startInstance(t), startInstance(t)
	failing.mode.Store(unavailable)
	registry := discovery.NewStatic()
	ctx := callpolicy.WithPreference(context.Background(), callpolicy.Preference{Key: "name", Value: "failing"})
	for name, addr := range map[string]string{"failing": failing.addr, "live": live.addr} {
		_ = registry.Register(ctx, discovery.Instance{ID: name, Service: "user", Addr: addr, Meta: map[string]string{"name": name}})
	}
	calls := config.DefaultCalls()
	peers, err := client.New(registry, client.Options{Calls: &calls})
	if err != nil {
		t.Fatal(err)
	}
	users := client.Connect(peers, "user", userv1connect.NewUserServiceClient)
	countFailures := func() (failed int) {
		for range 10 {
			if getUser(ctx, users) != nil {
				failed++
			}
		}
		return failed
	}
	if failed := countFailures(); failed != 0 {
		t.Fatalf("%d of 10 calls failed with retries on", failed)
	}
	before := failing.calls.Load()
	calls.Retry.MaxAttempts = 1
	peers.SetSettings(calls)
	if failed := countFailures(); failed != 10 {
		t.Fatalf("%d of 10 calls failed after max_attempts became 1, want every one: they are not retried", failed)
	}
	if got := failing.calls.Load() - before; got != 10 {
		t.Fatalf("the failing instance got %d of 10 calls; the preference should send it each one", got)
	}
}

// TestInstanceThatAnswersIsNotTakenOut: an instance that answers
// unavailable for one method, because a dependency of that method is
// down, is alive: its breaker stays closed, and its other methods go on
// being served by it. Only that method is throttled.
func TestInstanceThatAnswersIsNotTakenOut(t *testing.T) {
	t.Parallel()
	a, b := startInstance(t), startInstance(t)
	a.getUserFails.Store(true)
	b.getUserFails.Store(true)
	settings := config.DefaultCalls()
	settings.Breaker = config.Breaker{Failures: 3, Window: 5, OpenFor: time.Minute, Probes: 2}
	settings.Throttle.MinCalls = 10
	users, reg := peersOf(t, settings, nil, a.addr, b.addr)
	ctx := context.Background()
	for range 100 {
		if err := getUser(ctx, users); connect.CodeOf(err) != connect.CodeUnavailable {
			t.Fatalf("GetUser with its dependency down: %v, want unavailable", err)
		}
	}
	for _, addr := range []string{a.addr, b.addr} {
		if v, ok := gauge(t, reg, "keel_client_breaker_state", map[string]string{"instance": addr}); !ok || v != 0 {
			t.Fatalf("breaker of %s is %v (found %v) after answers of unavailable, want closed (0)", addr, v, ok)
		}
	}
	if v, _ := gauge(t, reg, "keel_client_throttled_total", map[string]string{"service": "user"}); v == 0 {
		t.Fatal("no GetUser call was throttled, though nearly all failed")
	}
	before := a.calls.Load() + b.calls.Load()
	for i := range 50 {
		if err := register(ctx, users); err != nil {
			t.Fatalf("Register %d, a method whose dependencies are fine: %v", i, err)
		}
	}
	if got := a.calls.Load() + b.calls.Load() - before; got != 50 {
		t.Fatalf("the instances got %d of 50 Register calls", got)
	}
}

// TestThrottleRefusesLocallyAndRecovers: when every call to an upstream
// fails, the client-side throttle refuses most calls without sending
// them; once the upstream recovers, calls go through again.
func TestThrottleRefusesLocallyAndRecovers(t *testing.T) {
	t.Parallel()
	inst := startInstance(t)
	settings := config.DefaultCalls()
	settings.Retry.MaxAttempts = 1
	settings.Throttle = config.Throttle{FailureRate: 0.5, MinCalls: 10, Window: time.Second, MaxRejectionRate: 0.9}
	users, reg := peersOf(t, settings, nil, inst.addr)
	ctx := context.Background()
	inst.mode.Store(unavailable)
	before := inst.calls.Load()
	throttled := 0
	for range 200 {
		err := getUser(ctx, users)
		if err == nil {
			t.Fatal("a call succeeded while the upstream failed every one")
		}
		if errors.Is(err, callpolicy.ErrThrottled) {
			throttled++
		}
	}
	sent := inst.calls.Load() - before
	if throttled < 100 || sent+int64(throttled) != 200 {
		t.Fatalf("200 calls to a failing upstream: %d throttled, %d sent; want most refused locally and the rest sent", throttled, sent)
	}
	if v, _ := gauge(t, reg, "keel_client_throttled_total", map[string]string{"service": "user"}); int(v) != throttled {
		t.Fatalf("keel_client_throttled_total is %v, want %d", v, throttled)
	}
	inst.mode.Store(answer)
	ok := 0
	eventually(t, 10*time.Second, "calls to go through after the upstream recovered", func() bool {
		if getUser(ctx, users) == nil {
			ok++
		} else {
			ok = 0
		}
		return ok == 50
	})
}

// TestEveryBreakerOpenStillTries: with the only instance's breaker open,
// calls are still sent to it (panic routing) rather than refused
// unsent, so an upstream that recovers is served at once, not after the
// breaker's open_for.
func TestEveryBreakerOpenStillTries(t *testing.T) {
	t.Parallel()
	inst := startInstance(t)
	settings := config.DefaultCalls()
	settings.Breaker = config.Breaker{Failures: 2, Window: 2, OpenFor: time.Hour, Probes: 1}
	settings.Throttle.MinCalls = 1000
	users, reg := peersOf(t, settings, nil, inst.addr)
	ctx := context.Background()
	inst.mode.Store(reset)
	for range 5 {
		if err := getUser(ctx, users); err == nil {
			t.Fatal("a call to an instance resetting every call succeeded")
		}
	}
	if v, _ := gauge(t, reg, "keel_client_breaker_state", map[string]string{"instance": inst.addr}); v != 2 {
		t.Fatalf("breaker state %v after resets, want open (2)", v)
	}
	inst.mode.Store(answer)
	before := inst.calls.Load()
	for i := range 10 {
		if err := getUser(ctx, users); err != nil {
			t.Fatalf("call %d after the instance recovered, its breaker open for an hour: %v", i, err)
		}
	}
	if got := inst.calls.Load() - before; got != 10 {
		t.Fatalf("the instance got %d of 10 calls", got)
	}
	if v, _ := gauge(t, reg, "keel_client_panic_picks_total", map[string]string{"service": "user"}); v < 10 {
		t.Fatalf("keel_client_panic_picks_total is %v, want at least 10", v)
	}
}

// TestLowPriorityTravelsDownstream: a call made while handling a
// low-priority call is low priority at the next service too, so that a
// saturated peer sheds it first; other calls carry no priority.
func TestLowPriorityTravelsDownstream(t *testing.T) {
	t.Parallel()
	for name, opts := range protocols {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			inst := startInstance(t)
			users, _ := peersOf(t, config.DefaultCalls(), opts, inst.addr)
			if err := getUser(shed.WithLow(context.Background()), users); err != nil {
				t.Fatal(err)
			}
			if err := getUser(context.Background(), users); err != nil {
				t.Fatal(err)
			}
			inst.mu.Lock()
			defer inst.mu.Unlock()
			if want := []string{shed.Low, ""}; !slices.Equal(inst.priorities, want) {
				t.Fatalf("priorities seen upstream %q, want %q", inst.priorities, want)
			}
		})
	}
}

// TestPreferenceSteersBeforeBalancing: calls with a preference go to the
// instances whose metadata it names (or, excluding, to the others), in
// every protocol and for retries too; when none of those can take a call
// (a dead instance, then none at all), the others take it.
func TestPreferenceSteersBeforeBalancing(t *testing.T) {
	t.Parallel()
	for name, opts := range protocols {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			v1a, v1b, v2 := startInstance(t), startInstance(t), startInstance(t)
			registry := discovery.NewStatic()
			register := func(id, addr, version string) {
				t.Helper()
				if err := registry.Register(context.Background(), discovery.Instance{ID: id, Service: "user", Addr: addr, Meta: map[string]string{"version": version}}); err != nil {
					t.Fatal(err)
				}
			}
			register("a", v1a.addr, "v1")
			register("b", v1b.addr, "v1")
			register("c", v2.addr, "v2")
			peers, err := client.New(registry, client.Options{Calls: new(config.DefaultCalls()), Metrics: prometheus.NewRegistry()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(peers.CloseIdleConnections)
			users := client.Connect(peers, "user", userv1connect.NewUserServiceClient, opts...)
			canary := callpolicy.WithPreference(context.Background(), callpolicy.Preference{Key: "version", Value: "v2"})
			stable := callpolicy.WithPreference(context.Background(), callpolicy.Preference{Key: "version", Value: "v2", Exclude: true})
			for i := range 40 {
				ctx := canary
				if i%4 == 0 {
					ctx = stable
				}
				if err := getUser(ctx, users); err != nil {
					t.Fatal(err)
				}
			}
			if v2.calls.Load() != 30 || v1a.calls.Load()+v1b.calls.Load() != 10 || v1a.calls.Load() == 0 || v1b.calls.Load() == 0 {
				t.Fatalf("v2 served %d, v1 %d+%d; want 30 on v2, 10 on v1, both v1 instances used", v2.calls.Load(), v1a.calls.Load(), v1b.calls.Load())
			}
			// The preferred instance fails: the retry stays on its side
			// while it can, then goes to the other.
			v2.mode.Store(unavailable)
			if err := getUser(canary, users); err != nil {
				t.Fatalf("preferred instance failing: %v, want the call served by another", err)
			}
			// No preferred instance at all: the others serve.
			if err := registry.Deregister(context.Background(), "c"); err != nil {
				t.Fatal(err)
			}
			before := v1a.calls.Load() + v1b.calls.Load()
			for range 10 {
				if err := getUser(canary, users); err != nil {
					t.Fatal(err)
				}
			}
			if got := v1a.calls.Load() + v1b.calls.Load() - before; got != 10 {
				t.Fatalf("no v2 instance: v1 served %d of 10", got)
			}
		})
	}
}

// TestCallerTimeoutsDoNotThrottle: calls whose caller ran out of time
// before the upstream answered say how patient the caller was, not that
// the upstream is failing: they do not trip the throttle, and the calls
// after them are sent. (A storefront's order view that gives up on slow
// item reads must not have the next views' reads refused.)
func TestCallerTimeoutsDoNotThrottle(t *testing.T) {
	t.Parallel()
	inst := startInstance(t)
	settings := config.DefaultCalls()
	settings.Retry.MaxAttempts = 1
	settings.Throttle = config.Throttle{FailureRate: 0.5, MinCalls: 10, Window: time.Minute, MaxRejectionRate: 0.9}
	users, reg := peersOf(t, settings, nil, inst.addr)
	inst.mode.Store(hang)
	for range 30 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		err := getUser(ctx, users)
		cancel()
		if connect.CodeOf(err) != connect.CodeDeadlineExceeded {
			t.Fatalf("a call to a hung upstream: %v, want deadline_exceeded", err)
		}
	}
	inst.mode.Store(answer)
	for i := range 20 {
		if err := getUser(context.Background(), users); err != nil {
			t.Fatalf("call %d after 30 callers gave up: %v", i, err)
		}
	}
	if v, _ := gauge(t, reg, "keel_client_throttled_total", map[string]string{"service": "user"}); v != 0 {
		t.Fatalf("keel_client_throttled_total is %v, want 0", v)
	}
}
