package handler_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/services/user/internal/handler"
	"github.com/keelplatform/keel/services/user/internal/password"
	"github.com/keelplatform/keel/services/user/internal/store"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// cheap keeps argon2id real but fast enough for many logins in tests.
var cheap = password.Params{Time: 1, Memory: 1024, Threads: 1}

// newClient serves a handler over a real SQLite store on a loopback HTTP
// server and returns a client for it.
func newClient(t *testing.T) userv1connect.UserServiceClient {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, database.Config{DataDir: t.TempDir(), Name: "user"})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	h, err := handler.New(st, auth.Issuer{Key: testKey, TTL: time.Hour}, cheap, nil, logger)
	if err != nil {
		t.Fatalf("handler.New: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle(userv1connect.NewUserServiceHandler(h))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return userv1connect.NewUserServiceClient(srv.Client(), srv.URL)
}

func register(t *testing.T, c userv1connect.UserServiceClient, email, pw, name string) *userv1.User {
	t.Helper()
	resp, err := c.Register(context.Background(), connect.NewRequest(&userv1.RegisterRequest{
		Email: email, Password: pw, DisplayName: name,
	}))
	if err != nil {
		t.Fatalf("Register %s: %v", email, err)
	}
	return resp.Msg.GetUser()
}

func wantCode(t *testing.T, err error, code connect.Code, msg string) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
	var ce *connect.Error
	if msg != "" && errors.As(err, &ce) && ce.Message() != msg {
		t.Fatalf("got message %q, want %q", ce.Message(), msg)
	}
}

func TestRegisterAndLogin(t *testing.T) {
	ctx := context.Background()
	c := newClient(t)

	u := register(t, c, "  Ada@Example.com ", "correct horse", "Ada")
	if u.GetEmail() != "ada@example.com" || u.GetDisplayName() != "Ada" || u.GetId() == "" {
		t.Fatalf("Register returned %v", u)
	}
	if !u.GetCreateTime().IsValid() || !u.GetUpdateTime().IsValid() {
		t.Fatalf("Register returned no times: %v", u)
	}

	_, err := c.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{
		Email: "ADA@example.com", Password: "another one", DisplayName: "Imposter",
	}))
	wantCode(t, err, connect.CodeAlreadyExists, "email is already registered")

	resp, err := c.Login(ctx, connect.NewRequest(&userv1.LoginRequest{Email: "ada@EXAMPLE.com", Password: "correct horse"}))
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	sub, err := auth.Verify(testKey, "", resp.Msg.GetAccessToken())
	if err != nil {
		t.Fatalf("Verify login token: %v", err)
	}
	if sub != u.GetId() {
		t.Fatalf("token subject %q, want %q", sub, u.GetId())
	}
	if resp.Msg.GetUser().GetId() != u.GetId() {
		t.Fatalf("Login user %v, want %v", resp.Msg.GetUser(), u)
	}
	if exp := resp.Msg.GetExpireTime().AsTime(); exp.Before(time.Now().Add(59*time.Minute)) || exp.After(time.Now().Add(time.Hour+time.Second)) {
		t.Fatalf("expire_time %v is not about an hour away", exp)
	}
}

func TestLoginFailuresLookAlike(t *testing.T) {
	ctx := context.Background()
	c := newClient(t)
	register(t, c, "grace@example.com", "hopper1906", "Grace")

	_, wrongPassword := c.Login(ctx, connect.NewRequest(&userv1.LoginRequest{Email: "grace@example.com", Password: "wrong password"}))
	_, unknownEmail := c.Login(ctx, connect.NewRequest(&userv1.LoginRequest{Email: "nobody@example.com", Password: "hopper1906"}))
	_, empty := c.Login(ctx, connect.NewRequest(&userv1.LoginRequest{}))

	for name, err := range map[string]error{"wrong password": wrongPassword, "unknown email": unknownEmail, "empty": empty} {
		t.Run(name, func(t *testing.T) {
			wantCode(t, err, connect.CodeUnauthenticated, "invalid email or password")
		})
	}
	if wrongPassword.Error() != unknownEmail.Error() {
		t.Fatalf("errors differ: %q vs %q", wrongPassword, unknownEmail)
	}
}

func TestGetAndUpdate(t *testing.T) {
	ctx := context.Background()
	c := newClient(t)
	u := register(t, c, "linus@example.com", "penguins!", "Linus")

	got, err := c.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: u.GetId()}))
	if err != nil {
		t.Fatalf("GetUser: %v", err)
	}
	if got.Msg.GetUser().GetEmail() != "linus@example.com" {
		t.Fatalf("GetUser returned %v", got.Msg.GetUser())
	}

	upd, err := c.UpdateProfile(ctx, connect.NewRequest(&userv1.UpdateProfileRequest{Id: u.GetId(), DisplayName: "Linus T."}))
	if err != nil {
		t.Fatalf("UpdateProfile: %v", err)
	}
	if upd.Msg.GetUser().GetDisplayName() != "Linus T." {
		t.Fatalf("UpdateProfile returned %v", upd.Msg.GetUser())
	}

	const unknown = "6f1c1a7e-3c55-4f0b-9f43-6a1f5d0c2b11"
	_, err = c.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: unknown}))
	wantCode(t, err, connect.CodeNotFound, "user "+unknown+" not found")
	_, err = c.UpdateProfile(ctx, connect.NewRequest(&userv1.UpdateProfileRequest{Id: unknown, DisplayName: "x"}))
	wantCode(t, err, connect.CodeNotFound, "user "+unknown+" not found")
	_, err = c.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{}))
	wantCode(t, err, connect.CodeInvalidArgument, "id must be a UUID")
}

func TestListUsersPaging(t *testing.T) {
	ctx := context.Background()
	c := newClient(t)
	const total = 5
	for i := range total {
		register(t, c, string(rune('a'+i))+"@example.com", "password1", "User")
	}

	seen := map[string]bool{}
	token, pages := "", 0
	for {
		resp, err := c.ListUsers(ctx, connect.NewRequest(&userv1.ListUsersRequest{PageSize: 2, PageToken: token}))
		if err != nil {
			t.Fatalf("ListUsers page %d: %v", pages+1, err)
		}
		pages++
		for _, u := range resp.Msg.GetUsers() {
			if seen[u.GetId()] {
				t.Fatalf("user %s listed twice", u.GetId())
			}
			seen[u.GetId()] = true
		}
		token = resp.Msg.GetNextPageToken()
		if token == "" {
			break
		}
		if pages > total {
			t.Fatal("paging does not end")
		}
	}
	if pages != 3 || len(seen) != total {
		t.Fatalf("got %d users in %d pages, want %d in 3", len(seen), pages, total)
	}

	all, err := c.ListUsers(ctx, connect.NewRequest(&userv1.ListUsersRequest{}))
	if err != nil {
		t.Fatalf("ListUsers default size: %v", err)
	}
	if len(all.Msg.GetUsers()) != total || all.Msg.GetNextPageToken() != "" {
		t.Fatalf("default page: %d users, next %q", len(all.Msg.GetUsers()), all.Msg.GetNextPageToken())
	}

	for _, bad := range []string{"not base64!", "AAAA", strings.Repeat("A", 34)} {
		_, err := c.ListUsers(ctx, connect.NewRequest(&userv1.ListUsersRequest{PageToken: bad}))
		wantCode(t, err, connect.CodeInvalidArgument, "page_token is invalid")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	st, err := store.Open(context.Background(), database.Config{DataDir: t.TempDir(), Name: "user"})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	logger := slog.New(slog.DiscardHandler)
	if _, err := handler.New(st, auth.Issuer{Key: []byte("short"), TTL: time.Hour}, cheap, nil, logger); !errors.Is(err, auth.ErrKeyTooShort) {
		t.Errorf("short key: got %v, want ErrKeyTooShort", err)
	}
	if _, err := handler.New(st, auth.Issuer{Key: testKey, TTL: time.Hour}, cheap, nil, nil); err == nil {
		t.Error("nil logger accepted")
	}
}

func TestInternalErrorsSayNothing(t *testing.T) {
	st, err := store.Open(context.Background(), database.Config{DataDir: t.TempDir(), Name: "user"})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	var logs strings.Builder
	h, err := handler.New(st, auth.Issuer{Key: testKey, TTL: time.Hour}, cheap, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatalf("handler.New: %v", err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, hh := userv1connect.NewUserServiceHandler(h)
		hh.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	c := userv1connect.NewUserServiceClient(srv.Client(), srv.URL)

	_ = st.Close() // every query now fails inside the store
	_, err = c.ListUsers(context.Background(), connect.NewRequest(&userv1.ListUsersRequest{}))
	wantCode(t, err, connect.CodeInternal, "internal error")
	if !strings.Contains(logs.String(), "database is closed") {
		t.Fatalf("cause not logged; logs:\n%s", logs.String())
	}
}

// TestDisplayNameWithoutControlCharacters: a display name with a control
// character is invalid_argument naming the field, on Register and on
// UpdateProfile, whatever the store (PostgreSQL cannot hold NUL in text:
// it would be an internal error there).
func TestDisplayNameWithoutControlCharacters(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	u := register(t, c, "ctl@example.com", "correct horse", "Ctl")
	for _, name := range []string{"a\x00b", "two\nlines", "tab\there", "bell\x07", "c1\u0085"} {
		_, err := c.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{Email: "ctl2@example.com", Password: "correct horse", DisplayName: name}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "display_name") {
			t.Errorf("Register as %q: %v, want invalid_argument naming display_name", name, err)
		}
		_, err = c.UpdateProfile(ctx, connect.NewRequest(&userv1.UpdateProfileRequest{Id: u.GetId(), DisplayName: name}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "display_name") {
			t.Errorf("UpdateProfile to %q: %v, want invalid_argument naming display_name", name, err)
		}
	}
	if _, err := c.UpdateProfile(ctx, connect.NewRequest(&userv1.UpdateProfileRequest{Id: u.GetId(), DisplayName: "Ada Lovelace ✓"})); err != nil {
		t.Errorf("a plain name with a space and a symbol: %v", err)
	}
}
