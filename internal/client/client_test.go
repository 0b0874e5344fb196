package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/client"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
)

// peer is a user service instance on loopback that answers GetUser with
// its own name, after delay, and remembers the last X-Test header.
type peer struct {
	userv1connect.UnimplementedUserServiceHandler
	name   string
	addr   string
	delay  atomic.Int64
	header atomic.Value
}

func (p *peer) GetUser(ctx context.Context, req *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	p.header.Store(req.Header().Get("X-Test"))
	select {
	case <-time.After(time.Duration(p.delay.Load())):
	case <-ctx.Done():
		return nil, connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
	}
	return connect.NewResponse(&userv1.GetUserResponse{User: &userv1.User{Id: req.Msg.GetId(), DisplayName: p.name}}), nil
}

func startPeer(t *testing.T, name string) *peer {
	t.Helper()
	p := &peer{name: name}
	mux := http.NewServeMux()
	mux.Handle(userv1connect.NewUserServiceHandler(p))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := server.NewHTTPServer(mux, server.Config{})
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	p.addr = ln.Addr().String()
	return p
}

func whoAnswers(ctx context.Context, users userv1connect.UserServiceClient) (string, error) {
	res, err := users.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}))
	if err != nil {
		return "", err
	}
	return res.Msg.GetUser().GetDisplayName(), nil
}

// TestPeersAreCalledByLogicalName: a client built by Connect reaches the
// instances the resolver names for the service, follows them as they
// change, runs the interceptors of Options on every call, and takes new
// call settings at once.
func TestPeersAreCalledByLogicalName(t *testing.T) {
	a, b := startPeer(t, "a"), startPeer(t, "b")
	registry := discovery.NewStatic()
	ctx := context.Background()
	if err := registry.Register(ctx, discovery.Instance{ID: "user-a", Service: "user", Addr: a.addr}); err != nil {
		t.Fatal(err)
	}
	tag := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("X-Test", "from-the-interceptor")
			return next(ctx, req)
		}
	})
	peers, err := client.New(registry, client.Options{Interceptors: []connect.Interceptor{tag}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(peers.CloseIdleConnections)
	users := client.Connect(peers, "user", userv1connect.NewUserServiceClient)

	if got, err := whoAnswers(ctx, users); err != nil || got != "a" {
		t.Fatalf("answered by %q, %v; want a", got, err)
	}
	if got, _ := a.header.Load().(string); got != "from-the-interceptor" {
		t.Fatalf("the peer saw X-Test %q: the interceptor did not run", got)
	}

	// The instance moves: the client follows the resolver.
	if err := registry.Register(ctx, discovery.Instance{ID: "user-b", Service: "user", Addr: b.addr}); err != nil {
		t.Fatal(err)
	}
	if err := registry.Deregister(ctx, "user-a"); err != nil {
		t.Fatal(err)
	}
	if got, err := whoAnswers(ctx, users); err != nil || got != "b" {
		t.Fatalf("after the move, answered by %q, %v; want b", got, err)
	}

	// New settings apply to the next call: a default deadline shorter
	// than the peer's answer ends the call, a longer one lets it through.
	b.delay.Store(int64(200 * time.Millisecond))
	calls := config.DefaultCalls()
	calls.Timeout = 50 * time.Millisecond
	peers.SetSettings(calls)
	began := time.Now()
	if _, err := whoAnswers(ctx, users); connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Fatalf("with a 50ms deadline against a 200ms peer: %v, want deadline_exceeded", err)
	}
	if took := time.Since(began); took > 150*time.Millisecond {
		t.Fatalf("the call took %v with a 50ms deadline", took)
	}
	calls.Timeout = 2 * time.Second
	peers.SetSettings(calls)
	if got, err := whoAnswers(ctx, users); err != nil || got != "b" {
		t.Fatalf("with a 2s deadline: %q, %v", got, err)
	}
}

// TestUnknownPeerIsUnavailable: a service no instance serves fails fast
// with unavailable, naming it.
func TestUnknownPeerIsUnavailable(t *testing.T) {
	peers, err := client.New(discovery.NewStatic(), client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	users := client.Connect(peers, "nobody", userv1connect.NewUserServiceClient)
	began := time.Now()
	_, err = whoAnswers(context.Background(), users)
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != connect.CodeUnavailable || !strings.Contains(ce.Message(), "nobody") {
		t.Fatalf("got %v, want unavailable naming the service", err)
	}
	if took := time.Since(began); took > time.Second {
		t.Fatalf("took %v to fail", took)
	}
}
