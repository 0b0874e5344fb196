package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/server"
)

// cutShortUsers fails GetUser as a store does when the call's context
// ends during its query: internal, wrapping the context's error.
type cutShortUsers struct {
	userv1connect.UnimplementedUserServiceHandler
}

func (cutShortUsers) GetUser(ctx context.Context, _ *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	<-ctx.Done()
	return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("store: get user: %w", ctx.Err()))
}

// TestCallerDeadlineIsNotAServerFault: a handler whose work was cut
// short by the caller's deadline, and that failed with internal, is
// answered deadline_exceeded: the caller learns what happened, and the
// server does not count a slow caller as its own fault.
func TestCallerDeadlineIsNotAServerFault(t *testing.T) {
	t.Parallel()
	srv := server.New(server.Config{}, slog.New(slog.DiscardHandler))
	srv.Handle(userv1connect.NewUserServiceHandler(cutShortUsers{}, srv.HandlerOptions()...))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	req, err := http.NewRequest(http.MethodPost, "http://"+srv.Addr()+"/"+userv1connect.UserServiceName+"/GetUser",
		strings.NewReader(`{"id":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connect-Timeout-Ms", "100")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	var answer struct{ Code, Message string }
	if err := json.Unmarshal(data, &answer); err != nil {
		t.Fatalf("HTTP %d %q: %v", res.StatusCode, data, err)
	}
	if answer.Code != "deadline_exceeded" || strings.Contains(answer.Message, "store") {
		t.Fatalf("answer %+v (HTTP %d), want deadline_exceeded without the handler's internals", answer, res.StatusCode)
	}
	families, err := srv.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "code" && l.GetValue() == "internal" && m.GetCounter().GetValue() > 0 {
					t.Errorf("%s counts an internal error: %v", f.GetName(), m)
				}
			}
		}
	}
}
