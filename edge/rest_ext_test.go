package edge_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	"github.com/keelplatform/keel/edge"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/testkit"
)

// users is a user service that answers from what it is sent, and
// remembers how each call reached it.
type users struct {
	userv1connect.UnimplementedUserServiceHandler
	calls atomic.Int64 // calls that reached the service

	mu          sync.Mutex
	contentType string      // of the last call
	header      http.Header // of the last call
}

func (u *users) saw(h http.Header) {
	u.calls.Add(1)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.contentType, u.header = h.Get("Content-Type"), h.Clone()
}

func (u *users) last() (string, http.Header) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.contentType, u.header
}

const knownUser = "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"

func (u *users) GetUser(_ context.Context, req *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	u.saw(req.Header())
	if req.Msg.GetId() != knownUser {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("user %s not found", req.Msg.GetId()))
	}
	return connect.NewResponse(&userv1.GetUserResponse{User: &userv1.User{Id: knownUser, Email: "ada@example.com", DisplayName: "Ada"}}), nil
}

func (u *users) ListUsers(_ context.Context, req *connect.Request[userv1.ListUsersRequest]) (*connect.Response[userv1.ListUsersResponse], error) {
	u.saw(req.Header())
	res := &userv1.ListUsersResponse{NextPageToken: req.Msg.GetPageToken() + "-next"}
	for i := range req.Msg.GetPageSize() {
		res.Users = append(res.Users, &userv1.User{Id: fmt.Sprint(i)})
	}
	return connect.NewResponse(res), nil
}

func (u *users) Register(_ context.Context, req *connect.Request[userv1.RegisterRequest]) (*connect.Response[userv1.RegisterResponse], error) {
	u.saw(req.Header())
	return connect.NewResponse(&userv1.RegisterResponse{User: &userv1.User{Id: knownUser, Email: req.Msg.GetEmail(), DisplayName: req.Msg.GetDisplayName()}}), nil
}

func (u *users) Login(_ context.Context, req *connect.Request[userv1.LoginRequest]) (*connect.Response[userv1.LoginResponse], error) {
	u.saw(req.Header())
	return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("invalid email or password"))
}

func (u *users) UpdateProfile(_ context.Context, req *connect.Request[userv1.UpdateProfileRequest]) (*connect.Response[userv1.UpdateProfileResponse], error) {
	u.saw(req.Header())
	return connect.NewResponse(&userv1.UpdateProfileResponse{User: &userv1.User{Id: req.Msg.GetId(), DisplayName: req.Msg.GetDisplayName()}}), nil
}

type restFixture struct {
	url   string
	users *users
	log   *testkit.Buffer
}

// startREST starts an edge routing the user service, served by users, and
// the inventory, which has no instances; both contracts declare REST
// routes.
func startREST(t *testing.T) *restFixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	up := &users{}
	upstream := server.New(server.Config{}, slog.New(slog.DiscardHandler))
	upstream.Handle(userv1connect.NewUserServiceHandler(up, upstream.HandlerOptions()...))
	if err := upstream.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = upstream.Serve(ctx) }()
	registry := discovery.NewStatic()
	if err := registry.Register(ctx, discovery.Instance{ID: "user-1", Service: "user", Addr: upstream.Addr()}); err != nil {
		t.Fatal(err)
	}
	log := &testkit.Buffer{}
	e, err := edge.New(edge.Config{
		Server:   server.Config{Addr: "127.0.0.1:0", MaxRequestBytes: 1024},
		Services: []string{userv1connect.UserServiceName, inventoryv1connect.InventoryServiceName},
	}, registry, slog.New(slog.NewJSONHandler(log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = e.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return &restFixture{url: "http://" + e.Addr(), users: up, log: log}
}

// call sends a REST request the way curl does and returns the status, the
// JSON body and the headers of the answer.
func (f *restFixture) call(t *testing.T, method, path, contentType, body string, header ...string) (int, map[string]any, http.Header) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.url+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("%s %s: %d, body is not JSON: %q", method, path, res.StatusCode, data)
	}
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: content type %q", method, path, ct)
	}
	return res.StatusCode, out, res.Header
}

// TestRESTRoutesOfTheContracts: the edge answers the google.api.http
// routes of the contracts it routes, with path variables, query
// parameters and JSON bodies, and errors in JSON under the HTTP status of
// their code, whether the service, the edge or the transcoder raised them.
// Calls reach the service as Connect calls through the proxy (so the
// proxy's header rules apply), and the access log names them REST.
func TestRESTRoutesOfTheContracts(t *testing.T) {
	t.Parallel()
	f := startREST(t)
	const form = "application/x-www-form-urlencoded" // what curl -d sends

	type want struct {
		status   int
		code     float64 // of an error
		mentions string  // in the message of an error
	}
	cases := []struct {
		name                      string
		method, path, ctype, body string
		want                      want
		check                     func(t *testing.T, body map[string]any)
	}{
		{name: "path variable", method: "GET", path: "/v1/users/" + knownUser, want: want{status: 200},
			check: func(t *testing.T, body map[string]any) {
				if user := body["user"].(map[string]any); user["id"] != knownUser || user["displayName"] != "Ada" {
					t.Fatalf("user %v", user)
				}
			}},
		{name: "query parameters", method: "GET", path: "/v1/users?page_size=3&pageToken=abc", want: want{status: 200},
			check: func(t *testing.T, body map[string]any) {
				if n := len(body["users"].([]any)); n != 3 || body["nextPageToken"] != "abc-next" {
					t.Fatalf("%d users, next page token %v", n, body["nextPageToken"])
				}
			}},
		{name: "body", method: "POST", path: "/v1/users", ctype: form, body: `{"email":"ada@example.com","password":"correct horse","displayName":"Ada"}`, want: want{status: 200},
			check: func(t *testing.T, body map[string]any) {
				if user := body["user"].(map[string]any); user["email"] != "ada@example.com" {
					t.Fatalf("user %v", user)
				}
			}},
		{name: "path variable and body", method: "PATCH", path: "/v1/users/" + knownUser, ctype: "application/json; charset=UTF-8", body: `{"displayName":"Grace"}`, want: want{status: 200},
			check: func(t *testing.T, body map[string]any) {
				if user := body["user"].(map[string]any); user["id"] != knownUser || user["displayName"] != "Grace" {
					t.Fatalf("user %v", user)
				}
			}},
		{name: "custom verb", method: "POST", path: "/v1/users:login", ctype: "application/json", body: `{"email":"ada@example.com","password":"wrong horse"}`,
			want: want{401, float64(connect.CodeUnauthenticated), "invalid email or password"}},
		{name: "service error", method: "GET", path: "/v1/users/5d0c1b6e-0000-4000-8000-000000000000",
			want: want{404, float64(connect.CodeNotFound), "user 5d0c1b6e-0000-4000-8000-000000000000 not found"}},
		{name: "validation error", method: "POST", path: "/v1/users", ctype: "application/json", body: `{"email":"nope","password":"correct horse","displayName":"A"}`,
			want: want{400, float64(connect.CodeInvalidArgument), "email"}},
		{name: "edge error", method: "GET", path: "/v1/items/KEEL-MUG",
			want: want{503, float64(connect.CodeUnavailable), "no healthy instances of inventory"}},
		{name: "malformed json", method: "POST", path: "/v1/users", ctype: form, body: `{"email":`,
			want: want{400, float64(connect.CodeInvalidArgument), "unmarshal request body"}},
		{name: "wrong field type", method: "POST", path: "/v1/users", ctype: "application/json", body: `{"email":42}`,
			want: want{400, float64(connect.CodeInvalidArgument), "email"}},
		{name: "unknown query parameter", method: "GET", path: "/v1/users?page_sise=3",
			want: want{400, float64(connect.CodeInvalidArgument), "page_sise"}},
		{name: "bad query parameter", method: "GET", path: "/v1/users?page_size=many",
			want: want{400, float64(connect.CodeInvalidArgument), "page_size"}},
		{name: "body on a GET", method: "GET", path: "/v1/users/" + knownUser, ctype: "application/json", body: `{"id":"x"}`,
			want: want{400, float64(connect.CodeInvalidArgument), "no body"}},
		{name: "body over the limit", method: "POST", path: "/v1/users", ctype: "application/json", body: `{"email":"` + strings.Repeat("a", 2048) + `"}`,
			want: want{429, float64(connect.CodeResourceExhausted), "exceeded"}},
		{name: "unknown content type", method: "POST", path: "/v1/users", ctype: "text/xml", body: `<user/>`,
			want: want{415, float64(connect.CodeInvalidArgument), "text/xml"}},
		{name: "unknown path", method: "GET", path: "/v1/nothing/here",
			want: want{404, float64(connect.CodeNotFound), "no route GET /v1/nothing/here"}},
		{name: "unknown method", method: "DELETE", path: "/v1/users/" + knownUser,
			want: want{405, float64(connect.CodeUnimplemented), "allowed: GET,PATCH"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := f.users.calls.Load()
			status, body, header := f.call(t, tc.method, tc.path, tc.ctype, tc.body)
			if status != tc.want.status {
				t.Fatalf("status %d %v, want %d", status, body, tc.want.status)
			}
			if tc.check != nil {
				tc.check(t, body)
				return
			}
			msg, _ := body["message"].(string)
			if body["code"] != tc.want.code || !strings.Contains(msg, tc.want.mentions) {
				t.Fatalf("error %v, want code %v mentioning %q", body, tc.want.code, tc.want.mentions)
			}
			if _, ok := body["details"]; !ok {
				t.Fatalf("error %v has no details", body)
			}
			if status == http.StatusMethodNotAllowed && header.Get("Allow") == "" {
				t.Fatal("405 without Allow")
			}
			if strings.HasPrefix(tc.name, "malformed") || strings.HasPrefix(tc.name, "wrong") || strings.Contains(tc.name, "over the limit") {
				if after := f.users.calls.Load(); after != before {
					t.Fatalf("a request the edge refused reached the service (%d calls)", after-before)
				}
			}
		})
	}
}

// TestRESTGoesThroughTheProxy: a REST call reaches the service as a
// Connect call under the proxy's rules (identity headers from the caller
// are dropped), is counted and logged as a REST call, while a Connect
// JSON call still reaches the service untouched.
func TestRESTGoesThroughTheProxy(t *testing.T) {
	t.Parallel()
	f := startREST(t)
	if status, body, _ := f.call(t, "GET", "/v1/users/"+knownUser, "", "", "Keel-User", "admin", "X-Custom", "kept"); status != 200 {
		t.Fatalf("REST GET: %d %v", status, body)
	}
	ct, header := f.users.last()
	if header.Get("Keel-User") != "" || header.Get("X-Custom") != "kept" {
		t.Fatalf("upstream saw Keel-User %q, X-Custom %q", header.Get("Keel-User"), header.Get("X-Custom"))
	}
	if ct != "application/proto" && ct != "" { // a side-effect-free call may go as a Connect GET
		t.Fatalf("REST call reached the service as %q", ct)
	}
	if status, _, _ := f.call(t, "POST", "/v1/users", "application/json", `{"email":"ada@example.com","password":"correct horse","displayName":"Ada"}`); status != 200 {
		t.Fatalf("REST POST: %d", status)
	}
	if ct, _ := f.users.last(); ct != "application/proto" {
		t.Fatalf("REST POST reached the service as %q, want binary Connect", ct)
	}

	// Connect JSON, from a client and from curl (no Connect header).
	c := userv1connect.NewUserServiceClient(http.DefaultClient, f.url, connect.WithProtoJSON())
	if _, err := c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: knownUser})); err != nil {
		t.Fatal(err)
	}
	if ct, _ := f.users.last(); ct != "application/json" {
		t.Fatalf("Connect JSON call reached the service as %q: it must pass untouched", ct)
	}
	if status, body, _ := f.call(t, "POST", userv1connect.UserServiceGetUserProcedure, "application/json", `{"id":"`+knownUser+`"}`); status != 200 {
		t.Fatalf("Connect JSON call as curl makes it: %d %v", status, body)
	}
	if ct, _ := f.users.last(); ct != "application/json" {
		t.Fatalf("Connect JSON call reached the service as %q: it must pass untouched", ct)
	}
	f.call(t, "GET", "/v1/nothing", "", "")

	var rest, connectCalls, refused int
	for line := range strings.Lines(f.log.String()) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil || rec["msg"] != "call" {
			continue
		}
		switch {
		case rec["protocol"] == "rest" && rec["upstream"] == "user" && strings.HasPrefix(rec["procedure"].(string), "/shop.user.v1.UserService/"):
			rest++
		case rec["protocol"] == "rest" && rec["upstream"] == "unrouted" && rec["procedure"] == "/v1/nothing" && rec["code"] == "not_found":
			refused++
		case rec["protocol"] == "connect" && rec["procedure"] == userv1connect.UserServiceGetUserProcedure:
			connectCalls++
		}
	}
	if rest != 2 || connectCalls != 2 || refused != 1 {
		t.Fatalf("access log: %d REST calls, %d Connect calls, %d refused REST requests; want 2, 2, 1:\n%s", rest, connectCalls, refused, f.log.String())
	}
	metrics := testkit.Scrape(t, f.url+"/metrics")
	if n := metrics[`keel_edge_requests_total{code="ok",service="user"}`]; n != 4 {
		t.Fatalf("keel_edge_requests_total ok for user = %v, want 4", n)
	}
}
