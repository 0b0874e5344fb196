package shed_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/shed"
	"github.com/keelplatform/keel/internal/testkit"
)

// heldUsers answers GetUser once hold returns, counting the calls it is
// answering, in all and those its context marks low priority, and the
// most of each at once.
type heldUsers struct {
	userv1connect.UnimplementedUserServiceHandler
	hold                func(ctx context.Context)
	inflight, low       atomic.Int64
	peak, lowPeak       atomic.Int64
	answered, answeredL atomic.Int64
}

// raise sets peak to n if n is higher.
func raise(peak *atomic.Int64, n int64) {
	for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
	}
}

func (h *heldUsers) GetUser(ctx context.Context, req *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	raise(&h.peak, h.inflight.Add(1))
	defer h.inflight.Add(-1)
	if shed.IsLow(ctx) {
		raise(&h.lowPeak, h.low.Add(1))
		defer h.low.Add(-1)
		defer h.answeredL.Add(1)
	}
	defer h.answered.Add(1)
	h.hold(ctx)
	return connect.NewResponse(&userv1.GetUserResponse{User: &userv1.User{Id: req.Msg.GetId()}}), nil
}

// gate holds the calls it is given until it is opened.
type gate struct {
	once sync.Once
	ch   chan struct{}
}

func newGate() *gate { return &gate{ch: make(chan struct{})} }

func (g *gate) hold(ctx context.Context) {
	select {
	case <-g.ch:
	case <-ctx.Done():
	}
}

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

// serveHeld starts a Keel server with shedding s whose user service holds
// each call with hold, and returns the service and a client of it.
func serveHeld(t *testing.T, s config.Shedding, hold func(context.Context)) (*heldUsers, userv1connect.UserServiceClient, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	users := &heldUsers{hold: hold}
	srv := server.New(server.Config{Shedding: s}, slog.New(slog.DiscardHandler))
	srv.Handle(userv1connect.NewUserServiceHandler(users, srv.HandlerOptions()...))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	url := "http://" + srv.Addr()
	return users, userv1connect.NewUserServiceClient(testkit.H2CClient(), url), url
}

// getUser calls GetUser, marked low priority when low is set, within
// 10s: a call the server should refuse at once but holds comes back
// deadline_exceeded rather than hanging the test.
func getUser(c userv1connect.UserServiceClient, low bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := connect.NewRequest(&userv1.GetUserRequest{Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"})
	if low {
		req.Header().Set(shed.PriorityHeader, shed.Low)
	}
	_, err := c.GetUser(ctx, req)
	return err
}

// goGetUser calls GetUser in the background; the answer comes on the
// channel returned.
func goGetUser(c userv1connect.UserServiceClient, low bool) <-chan error {
	out := make(chan error, 1)
	go func() { out <- getUser(c, low) }()
	return out
}

// waitFor polls cond until it holds, or fails t after 15s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// wantShed fails t unless err is the server's refusal.
func wantShed(t *testing.T, what string, err error) {
	t.Helper()
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		t.Fatalf("%s: %v, want resource_exhausted", what, err)
	}
}

// TestLowPriorityNeverOvershootsItsShare: 400 low-priority callers
// released together, each calling again and again, never have more calls
// in flight than their share of the limit (50 of 200), though many of
// them find room when they check at the same moment; and the share is
// used in full. The race for the last room of the share lasts
// nanoseconds, so the test gives it every chance: the calls go to the
// middleware itself (through a server's connections they arrive spread
// out: a check and a permit taken in two steps passed 10 runs of 10 over
// loopback), on more threads than the machine has cores, for up to 20
// rounds. Made in two steps, the check failed 49 runs of 50 so.
func TestLowPriorityNeverOvershootsItsShare(t *testing.T) {
	// Not parallel: it runs alone on its many threads.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(64))
	const callers, calls, rounds, share = 400, 10, 20, 50
	l, err := shed.NewLimiter(config.Shedding{Enabled: true, MinLimit: 200, MaxLimit: 200, InitialLimit: 200, LowPriorityShare: 0.25, RetryAfter: time.Second}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	var inflight, peak, answered, refused atomic.Int64
	h := l.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !shed.IsLow(r.Context()) {
			t.Error("a low-priority call is not marked low in its context")
		}
		raise(&peak, inflight.Add(1))
		time.Sleep(100 * time.Microsecond) // the work
		inflight.Add(-1)
		answered.Add(1)
	}))
	made := 0
	for range rounds {
		var start, wg sync.WaitGroup
		start.Add(1)
		for range callers {
			wg.Go(func() {
				start.Wait()
				for range calls {
					req := httptest.NewRequest(http.MethodPost, userv1connect.UserServiceGetUserProcedure, nil)
					req.Header.Set("Content-Type", "application/proto")
					req.Header.Set(shed.PriorityHeader, shed.Low)
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, req)
					if rec.Code == http.StatusTooManyRequests {
						refused.Add(1)
					}
				}
			})
		}
		start.Done()
		wg.Wait()
		made += callers * calls
		if peak.Load() > share {
			break
		}
	}
	if got := peak.Load(); got != share {
		t.Fatalf("%d low-priority calls ran at once (%d answered, %d refused), want their share of the limit, %d", got, answered.Load(), refused.Load(), share)
	}
	if answered.Load()+refused.Load() != int64(made) {
		t.Fatalf("%d answered and %d refused of %d calls", answered.Load(), refused.Load(), made)
	}
}

// TestLowPriorityIsShedFirst: low-priority calls may use only their share
// of the limit, whoever came first; normal calls still get the rest, and
// are shed only at the limit itself.
func TestLowPriorityIsShedFirst(t *testing.T) {
	t.Parallel()
	s := config.Shedding{Enabled: true, MinLimit: 8, MaxLimit: 8, InitialLimit: 8, LowPriorityShare: 0.25, RetryAfter: time.Second}

	t.Run("normal work first", func(t *testing.T) {
		t.Parallel()
		g := newGate()
		users, c, url := serveHeld(t, s, g.hold)
		t.Cleanup(g.open)
		// Normal calls fill the low-priority share (2 of 8): a low-priority
		// call is shed, a normal one still gets in.
		var held []<-chan error
		for range 2 {
			held = append(held, goGetUser(c, false))
		}
		waitFor(t, "2 normal calls are in", func() bool { return users.inflight.Load() == 2 })
		wantShed(t, "a low-priority call with 2 of 8 in flight", getUser(c, true))
		held = append(held, goGetUser(c, false))
		waitFor(t, "a third normal call is in", func() bool { return users.inflight.Load() == 3 })
		if got := scrape(t, url, "keel_server_in_flight"); got != 3 {
			t.Errorf("keel_server_in_flight = %v, want 3", got)
		}
		if low, normal := scrape(t, url, `keel_server_shed_total{priority="low"}`), scrape(t, url, `keel_server_shed_total{priority="normal"}`); low != 1 || normal != 0 {
			t.Errorf("keel_server_shed_total: low %v, normal %v; want 1 and 0", low, normal)
		}
		g.open()
		for _, ch := range held {
			if err := <-ch; err != nil {
				t.Fatalf("a normal call admitted: %v", err)
			}
		}
		if users.lowPeak.Load() != 0 {
			t.Fatalf("%d low-priority calls ran", users.lowPeak.Load())
		}
	})

	t.Run("low-priority work first", func(t *testing.T) {
		t.Parallel()
		g := newGate()
		users, c, url := serveHeld(t, s, g.hold)
		t.Cleanup(g.open)
		// Low-priority calls arrive first and take their share; the next
		// is shed though the limit has room.
		var held []<-chan error
		for range 2 {
			held = append(held, goGetUser(c, true))
		}
		waitFor(t, "2 low-priority calls are in", func() bool { return users.low.Load() == 2 })
		wantShed(t, "a third low-priority call with room for 6 more", getUser(c, true))
		// Normal calls arriving after them get all the rest of the limit.
		for range 6 {
			held = append(held, goGetUser(c, false))
		}
		waitFor(t, "the limit is full", func() bool { return users.inflight.Load() == 8 })
		wantShed(t, "a normal call at the limit", getUser(c, false))
		wantShed(t, "a low-priority call at the limit", getUser(c, true))
		if got := scrape(t, url, "keel_server_in_flight"); got != 8 {
			t.Errorf("keel_server_in_flight = %v, want 8", got)
		}
		if low, normal := scrape(t, url, `keel_server_shed_total{priority="low"}`), scrape(t, url, `keel_server_shed_total{priority="normal"}`); low != 2 || normal != 1 {
			t.Errorf("keel_server_shed_total: low %v, normal %v; want 2 and 1", low, normal)
		}
		g.open()
		for _, ch := range held {
			if err := <-ch; err != nil {
				t.Fatalf("an admitted call: %v", err)
			}
		}
		if users.peak.Load() != 8 || users.lowPeak.Load() != 2 {
			t.Fatalf("peak %d calls, %d of low priority; want 8 and 2", users.peak.Load(), users.lowPeak.Load())
		}
	})
}
