package edge_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"testing"

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

// TestDeadInstanceIsRetriedElsewhere registers a live and a dead instance:
// every call must still succeed, idempotent or not, because a refused
// connection means the call never reached the dead one.
func TestDeadInstanceIsRetriedElsewhere(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	users, liveAddr := startUsers(ctx, t)

	registry := discovery.NewStatic()
	for id, addr := range map[string]string{"user-dead": deadAddr(t), "user-live": liveAddr} {
		if err := registry.Register(ctx, discovery.Instance{ID: id, Service: "user", Addr: addr}); err != nil {
			t.Fatal(err)
		}
	}
	e, err := edge.New(edge.Config{Server: server.Config{Addr: "127.0.0.1:0"}}, registry, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = e.Serve(ctx) }()

	for name, opts := range map[string][]connect.ClientOption{
		"connect": nil,
		"grpc":    {connect.WithGRPC()},
	} {
		c := userv1connect.NewUserServiceClient(testkit.H2CClient(), "http://"+e.Addr(), opts...)
		for i := range 10 {
			if _, err := c.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"})); err != nil {
				t.Fatalf("%s: idempotent call %d failed: %v", name, i, err)
			}
			if _, err := c.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{Email: "a@example.com", Password: "correct horse", DisplayName: "A"})); err != nil {
				t.Fatalf("%s: call %d failed: %v", name, i, err)
			}
		}
	}
	if got := users.calls.Load(); got != 40 {
		t.Fatalf("live instance served %d calls, want 40 (each exactly once)", got)
	}
}

// tornUpstream answers every call with a success status and then dies in
// the middle of the body, as a process killed while answering does.
func tornUpstream(t *testing.T) string {
	t.Helper()
	torn := server.NewHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = torn.Serve(ln) }()
	t.Cleanup(func() { _ = torn.Close() })
	return ln.Addr().String()
}

// TestInstanceDyingMidAnswer: idempotent calls are answered by another
// instance; other calls fail cleanly with unavailable, never as a torn
// stream or an internal error.
func TestInstanceDyingMidAnswer(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	_, liveAddr := startUsers(ctx, t)

	for name, opts := range map[string][]connect.ClientOption{
		"connect": {connect.WithProtoJSON()},
		"grpc":    {connect.WithGRPC()},
	} {
		t.Run(name, func(t *testing.T) {
			registry := discovery.NewStatic()
			for id, addr := range map[string]string{"user-torn": tornUpstream(t), "user-live": liveAddr} {
				if err := registry.Register(ctx, discovery.Instance{ID: id, Service: "user", Addr: addr}); err != nil {
					t.Fatal(err)
				}
			}
			e, err := edge.New(edge.Config{Server: server.Config{Addr: "127.0.0.1:0"}}, registry, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			if err := e.Listen(); err != nil {
				t.Fatal(err)
			}
			edgeCtx, stop := context.WithCancel(ctx)
			defer stop()
			go func() { _ = e.Serve(edgeCtx) }()

			c := userv1connect.NewUserServiceClient(testkit.H2CClient(), "http://"+e.Addr(), opts...)
			for i := range 6 {
				if _, err := c.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"})); err != nil {
					t.Fatalf("idempotent call %d failed: %v", i, err)
				}
			}
			// Register is not idempotent: the torn instance is set aside
			// after its first failure, and any failure is a clean unavailable.
			var failed int
			for range 6 {
				_, err := c.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{Email: "a@example.com", Password: "correct horse", DisplayName: "A"}))
				if err != nil {
					failed++
					if connect.CodeOf(err) != connect.CodeUnavailable {
						t.Fatalf("want unavailable, got %v", err)
					}
				}
			}
			if failed > 1 {
				t.Fatalf("%d calls failed; the torn instance should be set aside after one", failed)
			}
		})
	}
}
