package shed_test

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/genproto/googleapis/rpc/errdetails"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/testkit"
)

// slowUsers answers GetUser after work, counting the calls at once, and
// times how long the server takes over each call it is sent.
type slowUsers struct {
	userv1connect.UnimplementedUserServiceHandler
	work     time.Duration
	inflight atomic.Int64
	peak     atomic.Int64

	mu     sync.Mutex
	served []time.Duration // server-side time of each GetUser call
}

// timing records how long the server takes over each call, refusals
// included.
func (s *slowUsers) timing(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		next.ServeHTTP(w, r)
		if r.URL.Path == userv1connect.UserServiceGetUserProcedure {
			s.mu.Lock()
			s.served = append(s.served, time.Since(start))
			s.mu.Unlock()
		}
	})
}

func (s *slowUsers) GetUser(ctx context.Context, req *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	n := s.inflight.Add(1)
	defer s.inflight.Add(-1)
	for p := s.peak.Load(); n > p && !s.peak.CompareAndSwap(p, n); p = s.peak.Load() {
	}
	time.Sleep(s.work)
	return connect.NewResponse(&userv1.GetUserResponse{User: &userv1.User{Id: req.Msg.GetId()}}), nil
}

// serve starts a Keel server with shedding s whose user service takes
// work per call.
func serve(t *testing.T, s config.Shedding, work time.Duration) (*slowUsers, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	users := &slowUsers{work: work}
	srv := server.New(server.Config{Shedding: s}, slog.New(slog.DiscardHandler), server.WithMiddleware(users.timing))
	srv.Handle(userv1connect.NewUserServiceHandler(users, srv.HandlerOptions()...))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return users, "http://" + srv.Addr()
}

type result struct {
	err  error
	took time.Duration
}

// burst makes n calls at once and returns how each went.
func burst(c userv1connect.UserServiceClient, n int, header func(http.Header)) []result {
	results := make([]result, n)
	var start, wg sync.WaitGroup
	start.Add(1)
	for i := range n {
		wg.Go(func() {
			req := connect.NewRequest(&userv1.GetUserRequest{Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"})
			if header != nil {
				header(req.Header())
			}
			start.Wait()
			began := time.Now()
			_, err := c.GetUser(context.Background(), req)
			results[i] = result{err: err, took: time.Since(began)}
		})
	}
	start.Done()
	wg.Wait()
	return results
}

// TestBurstPastCapacityIsRefusedAtOnce: with room for 4 calls at once, a
// burst of 40 gets resource_exhausted with a retry hint at once for the
// excess, while the admitted calls take their normal time.
func TestBurstPastCapacityIsRefusedAtOnce(t *testing.T) {
	t.Parallel()
	const work = 200 * time.Millisecond
	users, url := serve(t, config.Shedding{Enabled: true, MinLimit: 1, MaxLimit: 4, InitialLimit: 4, LowPriorityShare: 0.5, RetryAfter: 2 * time.Second}, work)
	for name, opts := range map[string][]connect.ClientOption{
		"connect": nil,
		"grpc":    {connect.WithGRPC()},
	} {
		t.Run(name, func(t *testing.T) {
			c := userv1connect.NewUserServiceClient(testkit.H2CClient(), url, opts...)
			// One call first, so the burst does not wait for a connection.
			if r := burst(c, 1, nil); r[0].err != nil {
				t.Fatal(r[0].err)
			}
			var admitted, refused int
			users.mu.Lock()
			users.served = nil
			users.mu.Unlock()
			for _, r := range burst(c, 40, nil) {
				switch {
				case r.err == nil:
					admitted++
					if r.took > 3*work {
						t.Errorf("an admitted call took %v, over 3x its normal %v", r.took, work)
					}
				case connect.CodeOf(r.err) == connect.CodeResourceExhausted:
					refused++
					var cerr *connect.Error
					if !asConnectError(r.err, &cerr) || cerr.Meta().Get("Retry-After") != "2" || !hasRetryInfo(cerr) {
						t.Errorf("refusal without a retry hint: %v meta=%v", r.err, cerr.Meta())
					}
				default:
					t.Errorf("unexpected answer: %v", r.err)
				}
			}
			// Refusals come at once, not after waiting for room: the server
			// spends far less than a call's work on each (timed at the
			// server, so that the client's own work on 40 calls does not
			// count; half the work, as a loaded machine delays anything by
			// tens of milliseconds).
			users.mu.Lock()
			served := slices.Clone(users.served)
			users.mu.Unlock()
			slices.Sort(served)
			for _, d := range served[:refused] {
				if d > work/2 {
					t.Errorf("the server took %v over a call it refused: refusals should come at once", d)
					break
				}
			}
			if admitted < 1 || admitted > 4 || refused < 36 {
				t.Fatalf("admitted %d, refused %d of 40 with room for 4", admitted, refused)
			}
			if peak := users.peak.Load(); peak > 4 {
				t.Fatalf("%d calls ran at once with room for 4", peak)
			}
		})
	}
}

func asConnectError(err error, target **connect.Error) bool {
	e, ok := err.(*connect.Error)
	if ok {
		*target = e
	}
	return ok
}

func hasRetryInfo(err *connect.Error) bool {
	for _, d := range err.Details() {
		if v, derr := d.Value(); derr == nil {
			if _, ok := v.(*errdetails.RetryInfo); ok {
				return true
			}
		}
	}
	return false
}

// TestHealthIsNeverShed: a saturated server, one that sheds a normal
// call at that moment, still answers health checks.
func TestHealthIsNeverShed(t *testing.T) {
	t.Parallel()
	g := newGate()
	users, c, url := serveHeld(t, config.Shedding{Enabled: true, MinLimit: 1, MaxLimit: 1, InitialLimit: 1, LowPriorityShare: 0.5, RetryAfter: time.Second}, g.hold)
	t.Cleanup(g.open)
	held := goGetUser(c, false)
	waitFor(t, "a call holds the only room", func() bool { return users.inflight.Load() == 1 })
	health := grpchealth.NewClient(testkit.H2CClient(), url)
	for i := range 5 {
		wantShed(t, "a normal call while saturated", getUser(c, false))
		res, err := health.Check(context.Background(), &grpchealth.CheckRequest{})
		if err != nil || res.Status != grpchealth.StatusServing {
			t.Fatalf("health check %d while saturated: %v %v", i+1, res, err)
		}
	}
	g.open()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
}
