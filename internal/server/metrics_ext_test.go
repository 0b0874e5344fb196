package server_test

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/testkit"
)

func TestMetricsCountCallsByProcedureAndCode(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{})
	c := userv1connect.NewUserServiceClient(testkit.H2CClient(), r.url, connect.WithGRPC())
	const id = "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"
	for range 3 {
		if _, err := c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: id})); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		_, err := c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: "nope"}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Fatalf("want invalid_argument, got %v", err)
		}
	}
	if _, err := c.ListUsers(context.Background(), connect.NewRequest(&userv1.ListUsersRequest{})); connect.CodeOf(err) != connect.CodeInternal {
		t.Fatalf("want internal from the panicking handler, got %v", err)
	}

	got := testkit.Scrape(t, r.url+"/metrics")
	for series, want := range map[string]float64{
		`keel_rpc_server_requests_total{code="ok",procedure="/shop.user.v1.UserService/GetUser"}`:               3,
		`keel_rpc_server_requests_total{code="invalid_argument",procedure="/shop.user.v1.UserService/GetUser"}`: 2,
		`keel_rpc_server_requests_total{code="internal",procedure="/shop.user.v1.UserService/ListUsers"}`:       1,
		`keel_rpc_server_duration_seconds_count{procedure="/shop.user.v1.UserService/GetUser"}`:                 5,
		`keel_server_draining`: 0,
	} {
		if got[series] != want {
			t.Errorf("%s = %v, want %v", series, got[series], want)
		}
	}
	if _, ok := got[`keel_rpc_server_requests_total{code="ok",procedure="/shop.user.v1.UserService/ListUsers"}`]; ok {
		t.Error("a failed procedure has an ok series")
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s missing: the Go and process collectors are not registered", name)
		}
	}
}

func TestDrainingGaugeIsOneWhileDraining(t *testing.T) {
	t.Parallel()
	r := start(t, server.Config{DrainDelay: 2 * time.Second})
	if got := testkit.Scrape(t, r.url+"/metrics")["keel_server_draining"]; got != 0 {
		t.Fatalf("keel_server_draining = %v before shutdown", got)
	}
	r.stop()
	deadline := time.Now().Add(time.Second)
	for testkit.Scrape(t, r.url+"/metrics")["keel_server_draining"] != 1 {
		if time.Now().After(deadline) {
			t.Fatal("keel_server_draining did not turn 1 during the drain delay")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
