package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/testkit"
)

// deadlineUsers answers GetUser, recording the time its call had left.
type deadlineUsers struct {
	userv1connect.UnimplementedUserServiceHandler
	left atomic.Int64 // ns; -1 when the call had no deadline
}

func (d *deadlineUsers) GetUser(ctx context.Context, req *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	left := time.Duration(-1)
	if deadline, ok := ctx.Deadline(); ok {
		left = time.Until(deadline)
	}
	d.left.Store(int64(left))
	return connect.NewResponse(&userv1.GetUserResponse{User: &userv1.User{Id: req.Msg.GetId()}}), nil
}

// startCapped serves deadlineUsers with max_timeout max until the test ends.
func startCapped(t *testing.T, max time.Duration) (*server.Server, *deadlineUsers) {
	t.Helper()
	srv := server.New(server.Config{MaxTimeout: max}, slog.New(slog.DiscardHandler))
	users := &deadlineUsers{}
	srv.Handle(userv1connect.NewUserServiceHandler(users, srv.HandlerOptions()...))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return srv, users
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

// TestCallerDeadlineIsCapped: a caller asking for more time than
// server/max_timeout gets max_timeout, in each protocol's header; one
// asking for less keeps what it asked; a reload of the cap applies to the
// next call.
func TestCallerDeadlineIsCapped(t *testing.T) {
	t.Parallel()
	const max = 2 * time.Second
	srv, users := startCapped(t, max)
	url := "http://" + srv.Addr()
	call := func(opts ...connect.ClientOption) time.Duration {
		t.Helper()
		c := userv1connect.NewUserServiceClient(testkit.H2CClient(), url, opts...)
		if _, err := c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"})); err != nil {
			t.Fatal(err)
		}
		return time.Duration(users.left.Load())
	}
	for _, tc := range []struct {
		name    string
		opts    []connect.ClientOption
		lo, max time.Duration
	}{
		{"connect ten digits", []connect.ClientOption{withHeader("Connect-Timeout-Ms", "9999999999")}, max - time.Second, max},
		{"grpc largest hours", []connect.ClientOption{connect.WithGRPC(), withHeader("Grpc-Timeout", "1281023H")}, max - time.Second, max},
		{"grpc-web hours", []connect.ClientOption{connect.WithGRPCWeb(), withHeader("Grpc-Timeout", "99H")}, max - time.Second, max},
		{"connect below the cap", []connect.ClientOption{withHeader("Connect-Timeout-Ms", "500")}, 100 * time.Millisecond, 500 * time.Millisecond},
	} {
		if left := call(tc.opts...); left < tc.lo || left > tc.max {
			t.Errorf("%s: the handler had %v left, want (%v, %v]", tc.name, left, tc.lo, tc.max)
		}
	}
	srv.SetMaxTimeout(300 * time.Millisecond)
	if left := call(withHeader("Connect-Timeout-Ms", "9999999999")); left <= 0 || left > 300*time.Millisecond {
		t.Errorf("after max_timeout became 300ms the handler had %v left", left)
	}
}

// TestTricklingClientIsCutAtTheCap: a unary call asking for a ten-digit
// timeout whose body trickles in a byte at a time is cut at
// server/max_timeout, not held for as long as the client keeps sending.
func TestTricklingClientIsCutAtTheCap(t *testing.T) {
	t.Parallel()
	const max = 500 * time.Millisecond
	srv, _ := startCapped(t, max)
	for _, tc := range []struct{ name, header string }{
		{"ten-digit timeout", "Connect-Timeout-Ms: 9999999999\r\n"},
		{"no timeout", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", srv.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			body := `{"id":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}`
			began := time.Now()
			fmt.Fprintf(conn, "POST /%s/GetUser HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n",
				userv1connect.UserServiceName, tc.header, len(body))
			// Trickle one byte every 100ms (the whole body would take
			// over 4s); stop once the server has hung up.
			closed := make(chan struct{})
			go func() {
				defer close(closed)
				_, _ = io.Copy(io.Discard, conn)
			}()
			for i := 0; i < len(body); i++ {
				if _, err := conn.Write([]byte{body[i]}); err != nil {
					break
				}
				select {
				case <-closed:
				case <-time.After(100 * time.Millisecond):
					continue
				}
				break
			}
			select {
			case <-closed:
			case <-time.After(3 * time.Second):
				t.Fatalf("the server still held the connection %v after the call began, cap %v", time.Since(began), max)
			}
			if took := time.Since(began); took < max || took > max+time.Second {
				t.Fatalf("the call was cut after %v, want at the cap %v", took, max)
			}
		})
	}
}

// TestMaxTimeoutDoesNotCutQuickCalls: a caller that sends its request at
// once is answered whatever the cap, over the same connection again.
func TestMaxTimeoutDoesNotCutQuickCalls(t *testing.T) {
	t.Parallel()
	srv, _ := startCapped(t, 200*time.Millisecond)
	for range 3 {
		res, err := http.Post("http://"+srv.Addr()+"/"+userv1connect.UserServiceName+"/GetUser", "application/json",
			strings.NewReader(`{"id":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}`))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("HTTP %d", res.StatusCode)
		}
		time.Sleep(300 * time.Millisecond) // past the cap: a read deadline left over would break the next request
	}
}
