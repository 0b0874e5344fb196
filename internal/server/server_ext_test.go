package server_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/testkit"
)

// testUsers answers GetUser with a fixed user, panics on ListUsers and
// blocks UpdateProfile until released, so the runtime's behaviour can be
// observed through a real listener.
type testUsers struct {
	userv1connect.UnimplementedUserServiceHandler
	started chan struct{}
	release chan struct{}
}

func (t *testUsers) GetUser(_ context.Context, req *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	return connect.NewResponse(&userv1.GetUserResponse{User: &userv1.User{Id: req.Msg.GetId(), Email: "ada@example.com"}}), nil
}

func (t *testUsers) ListUsers(context.Context, *connect.Request[userv1.ListUsersRequest]) (*connect.Response[userv1.ListUsersResponse], error) {
	panic("secret internal detail")
}

func (t *testUsers) Register(_ context.Context, req *connect.Request[userv1.RegisterRequest]) (*connect.Response[userv1.RegisterResponse], error) {
	return connect.NewResponse(&userv1.RegisterResponse{User: &userv1.User{Email: req.Msg.GetEmail()}}), nil
}

func (t *testUsers) UpdateProfile(ctx context.Context, req *connect.Request[userv1.UpdateProfileRequest]) (*connect.Response[userv1.UpdateProfileResponse], error) {
	close(t.started)
	select {
	case <-t.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return connect.NewResponse(&userv1.UpdateProfileResponse{User: &userv1.User{Id: req.Msg.GetId(), DisplayName: req.Msg.GetDisplayName()}}), nil
}

type running struct {
	url   string
	users *testUsers
	logs  *testkit.Buffer
	stop  context.CancelFunc
	done  chan struct{} // closed when Serve returned
	err   error         // what Serve returned, valid after done
}

func start(t *testing.T, cfg server.Config) *running {
	t.Helper()
	logs := &testkit.Buffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := server.New(cfg, logger)
	users := &testUsers{started: make(chan struct{}), release: make(chan struct{})}
	srv.Handle(userv1connect.NewUserServiceHandler(users, srv.HandlerOptions()...))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{url: "http://" + srv.Addr(), users: users, logs: logs, stop: cancel, done: make(chan struct{})}
	go func() {
		r.err = srv.Serve(ctx)
		close(r.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(15 * time.Second):
			t.Error("server did not stop")
		}
	})
	return r
}

func TestServesEveryProtocolOnOnePort(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{})
	const id = "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"
	for name, opts := range map[string][]connect.ClientOption{
		"connect-json":   {connect.WithProtoJSON()},
		"connect-binary": nil,
		"grpc":           {connect.WithGRPC()},
		"grpc-web":       {connect.WithGRPCWeb()},
	} {
		t.Run(name, func(t *testing.T) {
			c := userv1connect.NewUserServiceClient(testkit.H2CClient(), r.url, opts...)
			res, err := c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: id}))
			if err != nil {
				t.Fatal(err)
			}
			if res.Msg.GetUser().GetId() != id {
				t.Fatalf("got id %q", res.Msg.GetUser().GetId())
			}
		})
	}
	// Plain HTTP/1.1 with a JSON body, as curl sends it.
	res, err := http.Post(r.url+"/shop.user.v1.UserService/GetUser", "application/json", strings.NewReader(`{"id":"`+id+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), id) {
		t.Fatalf("curl-style call: %d %s", res.StatusCode, body)
	}
}

// TestNULInTextIsRefused: a NUL character in any string field of a
// request is invalid_argument naming the field, in every protocol, before
// the handler runs (no text column can hold it).
func TestNULInTextIsRefused(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{})
	for name, opts := range map[string][]connect.ClientOption{
		"connect-json": {connect.WithProtoJSON()},
		"grpc":         {connect.WithGRPC()},
		"grpc-web":     {connect.WithGRPCWeb()},
	} {
		c := userv1connect.NewUserServiceClient(testkit.H2CClient(), r.url, opts...)
		_, err := c.Register(context.Background(), connect.NewRequest(&userv1.RegisterRequest{
			Email: "ada@example.com", Password: "correct\x00horse", DisplayName: "Ada",
		}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "password: must not contain a NUL") {
			t.Errorf("%s: %v, want invalid_argument naming password", name, err)
		}
	}
}

func TestInvalidRequestNamesTheField(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{})
	c := userv1connect.NewUserServiceClient(http.DefaultClient, r.url)
	_, err := c.Register(context.Background(), connect.NewRequest(&userv1.RegisterRequest{
		Email: "not-an-email", Password: "long enough", DisplayName: "Ada",
	}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("want invalid_argument, got %v", err)
	}
	if !strings.Contains(err.Error(), "email") {
		t.Fatalf("message does not name the field: %v", err)
	}
	_, err = c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: "nope"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "id") {
		t.Fatalf("want invalid_argument naming id, got %v", err)
	}
}

func TestPanicBecomesInternalWithoutDetails(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{})
	c := userv1connect.NewUserServiceClient(http.DefaultClient, r.url, connect.WithGRPC())
	_, err := c.ListUsers(context.Background(), connect.NewRequest(&userv1.ListUsersRequest{}))
	if connect.CodeOf(err) != connect.CodeInternal {
		t.Fatalf("want internal, got %v", err)
	}
	if strings.Contains(err.Error(), "secret") {
		t.Fatalf("panic value leaked to the caller: %v", err)
	}
	if !strings.Contains(r.logs.String(), "secret internal detail") || !strings.Contains(r.logs.String(), "goroutine") {
		t.Fatalf("panic and stack not logged: %s", r.logs.String())
	}
	// The server still answers.
	if _, err := c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"})); err != nil {
		t.Fatal(err)
	}
}

func TestOversizedRequestIsRejectedCleanly(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{MaxRequestBytes: 1024})
	huge := strings.Repeat("x", 4096)
	for name, opts := range map[string][]connect.ClientOption{
		"connect": nil,
		"grpc":    {connect.WithGRPC()},
	} {
		c := userv1connect.NewUserServiceClient(testkit.H2CClient(), r.url, opts...)
		_, err := c.Register(context.Background(), connect.NewRequest(&userv1.RegisterRequest{Email: "a@example.com", Password: huge, DisplayName: "A"}))
		if connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Fatalf("%s: want resource_exhausted, got %v", name, err)
		}
	}
	res, err := http.Post(r.url+"/shop.user.v1.UserService/Register", "application/json", strings.NewReader(`{"password":"`+huge+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode == http.StatusInternalServerError || !strings.Contains(string(body), "resource_exhausted") {
		t.Fatalf("curl-style oversized body: %d %s", res.StatusCode, body)
	}
	health := grpchealth.NewClient(http.DefaultClient, r.url)
	check, err := health.Check(context.Background(), &grpchealth.CheckRequest{})
	if err != nil || check.Status != grpchealth.StatusServing {
		t.Fatalf("server unhealthy after oversized request: %v %v", check, err)
	}
}

func TestReflectionListsMountedServices(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{})
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
		t.Fatalf("reflection lists %v", names)
	}
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{DrainDelay: 500 * time.Millisecond, ShutdownTimeout: 5 * time.Second})
	health := grpchealth.NewClient(testkit.H2CClient(), r.url, connect.WithGRPC())
	check, err := health.Check(context.Background(), &grpchealth.CheckRequest{Service: userv1connect.UserServiceName})
	if err != nil || check.Status != grpchealth.StatusServing {
		t.Fatalf("want SERVING before shutdown, got %v %v", check, err)
	}

	// Start a call that is still running when shutdown begins.
	c := userv1connect.NewUserServiceClient(testkit.H2CClient(), r.url)
	inflight := make(chan error, 1)
	go func() {
		_, err := c.UpdateProfile(context.Background(), connect.NewRequest(&userv1.UpdateProfileRequest{
			Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10", DisplayName: "Ada",
		}))
		inflight <- err
	}()
	<-r.users.started
	r.stop()

	deadline := time.Now().Add(400 * time.Millisecond)
	var sawNotServing bool
	for time.Now().Before(deadline) && !sawNotServing {
		check, err := health.Check(context.Background(), &grpchealth.CheckRequest{Service: userv1connect.UserServiceName})
		sawNotServing = err == nil && check.Status == grpchealth.StatusNotServing
		time.Sleep(20 * time.Millisecond)
	}
	if !sawNotServing {
		t.Fatal("health never reported NOT_SERVING while draining")
	}
	close(r.users.release)
	if err := <-inflight; err != nil {
		t.Fatalf("in-flight call failed during shutdown: %v", err)
	}
	select {
	case <-r.done:
		if r.err != nil {
			t.Fatalf("Serve returned %v", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop")
	}
	if _, err := c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"})); err == nil {
		t.Fatal("server still answers after shutdown")
	}
}

func TestShutdownCutsOffCallsPastTheBound(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{ShutdownTimeout: 300 * time.Millisecond})
	c := userv1connect.NewUserServiceClient(testkit.H2CClient(), r.url)
	inflight := make(chan error, 1)
	go func() {
		_, err := c.UpdateProfile(context.Background(), connect.NewRequest(&userv1.UpdateProfileRequest{
			Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10", DisplayName: "Ada",
		}))
		inflight <- err
	}()
	<-r.users.started
	began := time.Now()
	r.stop()
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		t.Fatal("shutdown exceeded its bound")
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Fatalf("shutdown took %v", took)
	}
	if err := <-inflight; err == nil {
		t.Fatal("call past the shutdown bound should fail")
	}
}

// TestUnknownProcedureAnswersLikeConnectMux: a path that is no procedure
// of a mounted service, or a method the contract does not have, gets what
// connect-go's own mux answers: HTTP 404, read as unimplemented by Connect
// clients; gRPC and gRPC-Web callers get unimplemented naming the path.
func TestUnknownProcedureAnswersLikeConnectMux(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{})
	for _, path := range []string{"/keel.test.v1.NoSuchService/Call", "/shop.user.v1.UserService/NoSuchMethod"} {
		for name, opts := range map[string][]connect.ClientOption{
			"connect":  nil,
			"grpc":     {connect.WithGRPC()},
			"grpc-web": {connect.WithGRPCWeb()},
		} {
			c := connect.NewClient[userv1.GetUserRequest, userv1.GetUserResponse](testkit.H2CClient(), r.url+path, opts...)
			_, err := c.CallUnary(context.Background(), connect.NewRequest(&userv1.GetUserRequest{}))
			if connect.CodeOf(err) != connect.CodeUnimplemented {
				t.Errorf("%s %s: want unimplemented, got %v", name, path, err)
			}
			if name != "connect" && !strings.Contains(err.Error(), path) {
				t.Errorf("%s %s: want the path named, got %v", name, path, err)
			}
		}
		res, err := http.Post(r.url+path, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("POST %s: %d, want 404", path, res.StatusCode)
		}
	}
}
