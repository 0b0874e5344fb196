package edge_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/keelplatform/keel/edge"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/testkit"
)

type countingUsers struct {
	userv1connect.UnimplementedUserServiceHandler
	calls atomic.Int64
}

func (c *countingUsers) GetUser(_ context.Context, req *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	c.calls.Add(1)
	return connect.NewResponse(&userv1.GetUserResponse{User: &userv1.User{Id: req.Msg.GetId()}}), nil
}

func (c *countingUsers) Register(_ context.Context, req *connect.Request[userv1.RegisterRequest]) (*connect.Response[userv1.RegisterResponse], error) {
	c.calls.Add(1)
	return connect.NewResponse(&userv1.RegisterResponse{User: &userv1.User{Email: req.Msg.GetEmail()}}), nil
}

// startUsers serves countingUsers on a loopback Keel server until ctx ends.
func startUsers(ctx context.Context, t *testing.T) (*countingUsers, string) {
	t.Helper()
	users := &countingUsers{}
	upstream := server.New(server.Config{}, slog.New(slog.DiscardHandler))
	upstream.Handle(userv1connect.NewUserServiceHandler(users, upstream.HandlerOptions()...))
	if err := upstream.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = upstream.Serve(ctx) }()
	return users, upstream.Addr()
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

// edgeFor starts an edge routing the user service to the given instances.
func edgeFor(ctx context.Context, t *testing.T, addrs map[string]string) string {
	t.Helper()
	registry := discovery.NewStatic()
	for id, addr := range addrs {
		if err := registry.Register(ctx, discovery.Instance{ID: id, Service: "user", Addr: addr}); err != nil {
			t.Fatal(err)
		}
	}
	e, err := edge.New(edge.Config{Server: server.Config{Addr: "127.0.0.1:0"}, Services: []string{userv1connect.UserServiceName}}, registry, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Listen(); err != nil {
		t.Fatal(err)
	}
	edgeCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = e.Serve(edgeCtx); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	return "http://" + e.Addr()
}

var userProtocols = map[string]struct {
	client func() *http.Client
	opts   []connect.ClientOption
}{
	"connect":  {func() *http.Client { return http.DefaultClient }, nil},
	"grpc":     {testkit.H2CClient, []connect.ClientOption{connect.WithGRPC()}},
	"grpc-web": {func() *http.Client { return http.DefaultClient }, []connect.ClientOption{connect.WithGRPCWeb()}},
}

// TestDeadInstanceIsRetriedElsewhere registers a live and a dead instance:
// every call must still succeed, idempotent or not, because a refused
// connection means the call never reached the dead one; and each reaches
// the live instance exactly once.
func TestDeadInstanceIsRetriedElsewhere(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	users, liveAddr := startUsers(ctx, t)
	url := edgeFor(ctx, t, map[string]string{"user-dead": deadAddr(t), "user-live": liveAddr})

	var want int64
	for name, p := range userProtocols {
		c := userv1connect.NewUserServiceClient(p.client(), url, p.opts...)
		for i := range 10 {
			if _, err := c.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"})); err != nil {
				t.Fatalf("%s: idempotent call %d failed: %v", name, i, err)
			}
			if _, err := c.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{Email: "a@example.com", Password: "correct horse", DisplayName: "A"})); err != nil {
				t.Fatalf("%s: call %d failed: %v", name, i, err)
			}
			want += 2
		}
	}
	if got := users.calls.Load(); got != want {
		t.Fatalf("live instance served %d calls, want %d (each exactly once)", got, want)
	}
}

// tornUpstream answers every call with a success status and then dies in
// the middle of the body, as a process killed while answering does. It
// counts the calls that reach it.
func tornUpstream(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	var calls atomic.Int64
	torn := server.NewHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		ct := r.Header.Get("Content-Type")
		w.Header().Set("Content-Type", ct)
		if ct == "application/json" {
			w.Header().Set("Content-Length", "100")
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("\x00\x00\x00\x00\x40{\"user\":"))
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}), server.Config{})
	torn.ErrorLog = slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = torn.Serve(ln) }()
	t.Cleanup(func() { _ = torn.Close() })
	return ln.Addr().String(), &calls
}

// TestInstanceDyingMidAnswer: through the edge, in every protocol, a
// non-idempotent call that met an instance dying mid-answer fails cleanly
// with unavailable and is never sent again; an idempotent one is answered
// by the other instance. Callers run concurrently until the torn instance
// has met several calls, so both paths are always exercised.
func TestInstanceDyingMidAnswer(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	for name, p := range userProtocols {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			users, liveAddr := startUsers(ctx, t)
			tornAddr, torn := tornUpstream(t)
			url := edgeFor(ctx, t, map[string]string{"user-torn": tornAddr, "user-live": liveAddr})
			c := userv1connect.NewUserServiceClient(p.client(), url, p.opts...)

			run := func(call func() error) (sent, failed int64) {
				torn.Store(0)
				users.calls.Store(0)
				var s, f atomic.Int64
				var wg sync.WaitGroup
				stop := time.Now().Add(10 * time.Second)
				for range 8 {
					wg.Go(func() {
						for torn.Load() < 3 && time.Now().Before(stop) {
							s.Add(1)
							if err := call(); err != nil {
								if connect.CodeOf(err) != connect.CodeUnavailable {
									t.Errorf("want unavailable, got %v", err)
								}
								f.Add(1)
							}
						}
					})
				}
				wg.Wait()
				if torn.Load() < 3 {
					t.Fatalf("the torn instance met %d of %d calls; the test never exercised it", torn.Load(), s.Load())
				}
				return s.Load(), f.Load()
			}

			sent, failed := run(func() error {
				_, err := c.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{Email: "a@example.com", Password: "correct horse", DisplayName: "A"}))
				return err
			})
			if got := torn.Load() + users.calls.Load(); got != sent {
				t.Fatalf("%d calls reached the instances for %d sent: a non-idempotent call was sent again", got, sent)
			}
			if failed != torn.Load() {
				t.Fatalf("%d calls failed, %d met the torn instance", failed, torn.Load())
			}

			// A fresh edge: the first one's breaker has taken the torn
			// instance out by now.
			url = edgeFor(ctx, t, map[string]string{"user-torn": tornAddr, "user-live": liveAddr})
			c = userv1connect.NewUserServiceClient(p.client(), url, p.opts...)
			sent, failed = run(func() error {
				_, err := c.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}))
				return err
			})
			if failed != 0 || users.calls.Load() != sent {
				t.Fatalf("%d of %d idempotent calls failed, the live instance answered %d", failed, sent, users.calls.Load())
			}
		})
	}
}
