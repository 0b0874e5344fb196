package edge_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/keelplatform/keel/edge"
	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/testkit"
)

var (
	tokenKey    = []byte("login-token-key-login-token-key-0")
	identityKey = []byte("identity-key-identity-key-identit")
)

// shopUpstream answers a few shop methods with what it was sent: the
// identity the edge vouched for (verified with the identity key, as the
// services verify it), and whether a token or a caller's own identity
// header came through.
type shopUpstream struct {
	userv1connect.UnimplementedUserServiceHandler
	inventoryv1connect.UnimplementedInventoryServiceHandler
	calls atomic.Int64
}

// seen describes the identity headers of a call: "user=<id>" for an
// identity that verifies, "forged" for one that does not, "anonymous"
// for none, with "+token" when the Authorization header came through.
func seen(h http.Header) string {
	s := "anonymous"
	if v := h.Get(auth.IdentityHeader); v != "" {
		s = "forged"
		if user, err := auth.VerifyIdentity(identityKey, v); err == nil {
			s = "user=" + user
		}
	}
	if h.Get("Authorization") != "" {
		s += "+token"
	}
	return s
}

func (u *shopUpstream) GetUser(_ context.Context, req *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	u.calls.Add(1)
	return connect.NewResponse(&userv1.GetUserResponse{User: &userv1.User{Id: req.Msg.GetId(), DisplayName: seen(req.Header())}}), nil
}

func (u *shopUpstream) GetItem(_ context.Context, req *connect.Request[inventoryv1.GetItemRequest]) (*connect.Response[inventoryv1.GetItemResponse], error) {
	u.calls.Add(1)
	return connect.NewResponse(&inventoryv1.GetItemResponse{Item: &inventoryv1.Item{Sku: req.Msg.GetSku(), Name: seen(req.Header())}}), nil
}

func (u *shopUpstream) ReserveStock(context.Context, *connect.Request[inventoryv1.ReserveStockRequest]) (*connect.Response[inventoryv1.ReserveStockResponse], error) {
	u.calls.Add(1)
	return connect.NewResponse(&inventoryv1.ReserveStockResponse{}), nil
}

// startAuthEdge starts an edge that authenticates, in front of the shop
// upstream (serving as both "user" and "inventory").
func startAuthEdge(t *testing.T) (string, *shopUpstream) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	up := &shopUpstream{}
	upstream := server.New(server.Config{}, slog.New(slog.DiscardHandler))
	upstream.Handle(userv1connect.NewUserServiceHandler(up))
	upstream.Handle(inventoryv1connect.NewInventoryServiceHandler(up))
	if err := upstream.Listen(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = upstream.Serve(ctx) }()
	registry := discovery.NewStatic()
	for _, name := range []string{"user", "inventory"} {
		if err := registry.Register(ctx, discovery.Instance{ID: name + "-1", Service: name, Addr: upstream.Addr()}); err != nil {
			t.Fatal(err)
		}
	}
	e, err := edge.New(edge.Config{
		Server:   server.Config{Addr: "127.0.0.1:0"},
		Services: []string{userv1connect.UserServiceName, inventoryv1connect.InventoryServiceName},
		Auth:     &edge.Auth{Tokens: auth.HS256{Keys: [][]byte{tokenKey}}, IdentityKey: identityKey},
	}, registry, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Listen(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = e.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return "http://" + e.Addr(), up
}

// headers sets request headers on every call, as name, value pairs.
func headers(kv ...string) connect.ClientOption {
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			for i := 0; i+1 < len(kv); i += 2 {
				req.Header().Set(kv[i], kv[i+1])
			}
			return next(ctx, req)
		}
	}))
}

// TestLoginIsEnforcedAsTheContractSays calls methods whose contracts say
// public (GetItem), login required (GetUser) and internal (ReserveStock)
// through the edge in every protocol, with no token, a valid one, forged
// and expired ones, and a caller's own identity header: the edge lets
// through what the contract allows, in the caller's protocol refuses the
// rest before any upstream call, and the upstream sees only the identity
// the edge vouches for, never the token.
func TestLoginIsEnforcedAsTheContractSays(t *testing.T) {
	t.Parallel()
	url, up := startAuthEdge(t)
	const ada = "5c1d9b6e-7f2a-4b3c-8d4e-1f2a3b4c5d6e"
	valid, _, err := auth.Issuer{Key: tokenKey, TTL: time.Hour}.Issue(ada)
	if err != nil {
		t.Fatal(err)
	}
	forged, _, _ := auth.Issuer{Key: []byte("somebody-elses-key-somebody-else"), TTL: time.Hour}.Issue(ada)
	expired, _, _ := auth.Issuer{Key: tokenKey, TTL: time.Nanosecond}.Issue(ada)
	ownIdentity, _, _ := auth.SignIdentity([]byte("a-caller-made-up-identity-key-000"), ada)

	type call func(opts ...connect.ClientOption) (string, error)
	getItem := func(client *http.Client, proto connect.ClientOption) call {
		return func(opts ...connect.ClientOption) (string, error) {
			c := inventoryv1connect.NewInventoryServiceClient(client, url, append(opts, proto)...)
			res, err := c.GetItem(context.Background(), connect.NewRequest(&inventoryv1.GetItemRequest{Sku: "KEEL-MUG"}))
			if err != nil {
				return "", err
			}
			return res.Msg.GetItem().GetName(), nil
		}
	}
	getUser := func(client *http.Client, proto connect.ClientOption) call {
		return func(opts ...connect.ClientOption) (string, error) {
			c := userv1connect.NewUserServiceClient(client, url, append(opts, proto)...)
			res, err := c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: ada}))
			if err != nil {
				return "", err
			}
			return res.Msg.GetUser().GetDisplayName(), nil
		}
	}
	reserve := func(client *http.Client, proto connect.ClientOption) call {
		return func(opts ...connect.ClientOption) (string, error) {
			c := inventoryv1connect.NewInventoryServiceClient(client, url, append(opts, proto)...)
			_, err := c.ReserveStock(context.Background(), connect.NewRequest(&inventoryv1.ReserveStockRequest{
				ReservationId: "r-1", Lines: []*inventoryv1.StockLine{{Sku: "KEEL-MUG", Quantity: 1}},
			}))
			return "", err
		}
	}
	protocols := map[string]struct {
		client *http.Client
		opt    connect.ClientOption
	}{
		"connect": {http.DefaultClient, connect.WithProtoJSON()},
		"grpc":    {testkit.H2CClient(), connect.WithGRPC()},
		"grpcweb": {http.DefaultClient, connect.WithGRPCWeb()},
	}
	bearer := func(token string) connect.ClientOption { return headers("Authorization", "Bearer "+token) }
	for name, p := range protocols {
		t.Run(name, func(t *testing.T) {
			cases := []struct {
				name string
				call call
				opts []connect.ClientOption
				code connect.Code // 0: ok
				saw  string       // what the upstream saw, when ok
			}{
				{"public, anonymous", getItem(p.client, p.opt), nil, 0, "anonymous"},
				{"public, logged in", getItem(p.client, p.opt), []connect.ClientOption{bearer(valid)}, 0, "user=" + ada},
				{"public, forged token", getItem(p.client, p.opt), []connect.ClientOption{bearer(forged)}, connect.CodeUnauthenticated, ""},
				{"login, anonymous", getUser(p.client, p.opt), nil, connect.CodeUnauthenticated, ""},
				{"login, logged in", getUser(p.client, p.opt), []connect.ClientOption{bearer(valid)}, 0, "user=" + ada},
				{"login, forged token", getUser(p.client, p.opt), []connect.ClientOption{bearer(forged)}, connect.CodeUnauthenticated, ""},
				{"login, expired token", getUser(p.client, p.opt), []connect.ClientOption{bearer(expired)}, connect.CodeUnauthenticated, ""},
				{"login, not a bearer", getUser(p.client, p.opt), []connect.ClientOption{headers("Authorization", "Basic YWRhOmhvcnNl")}, connect.CodeUnauthenticated, ""},
				{"login, own identity header", getUser(p.client, p.opt), []connect.ClientOption{headers(auth.IdentityHeader, ownIdentity)}, connect.CodeUnauthenticated, ""},
				{"login, own identity header and a token", getUser(p.client, p.opt), []connect.ClientOption{headers(auth.IdentityHeader, ownIdentity, "Authorization", "Bearer "+valid)}, 0, "user=" + ada},
				{"internal, logged in", reserve(p.client, p.opt), []connect.ClientOption{bearer(valid)}, connect.CodePermissionDenied, ""},
				{"internal, anonymous", reserve(p.client, p.opt), nil, connect.CodePermissionDenied, ""},
			}
			for _, tc := range cases {
				before := up.calls.Load()
				got, err := tc.call(tc.opts...)
				if tc.code != 0 {
					if connect.CodeOf(err) != tc.code {
						t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
					}
					if up.calls.Load() != before {
						t.Errorf("%s: refused, yet the upstream was called", tc.name)
					}
					continue
				}
				if err != nil || got != tc.saw {
					t.Errorf("%s: upstream saw %q (%v), want %q", tc.name, got, err, tc.saw)
				}
			}
		})
	}
	// The messages say what to do, in the caller's protocol.
	_, err = getUser(http.DefaultClient, connect.WithProtoJSON())()
	if ce, ok := err.(*connect.Error); !ok || !strings.Contains(ce.Message(), "Authorization: Bearer") {
		t.Errorf("anonymous call: %v, want a message saying how to log in", err)
	}
}

// TestIdentityFollowsTheCallToPeers: a service acting for a user calls a
// peer through a client with the identity interceptor; the peer sees the
// same user, and a forged identity is refused before the handler.
func TestIdentityFollowsTheCallToPeers(t *testing.T) {
	t.Parallel()
	ids, err := auth.NewIdentities(identityKey, "front")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	serve := func(register func(*server.Server)) string {
		s := server.New(server.Config{}, slog.New(slog.DiscardHandler), server.WithInterceptors(ids))
		register(s)
		if err := s.Listen(); err != nil {
			t.Fatal(err)
		}
		go func() { _ = s.Serve(ctx) }()
		return "http://" + s.Addr()
	}
	// The peer answers with the user its context carries.
	peer := serve(func(s *server.Server) {
		s.Handle(userv1connect.NewUserServiceHandler(&whoAmI{}, s.HandlerOptions()...))
	})
	// The front calls the peer for the user who called it.
	front := serve(func(s *server.Server) {
		c := userv1connect.NewUserServiceClient(http.DefaultClient, peer, connect.WithInterceptors(ids))
		s.Handle(inventoryv1connect.NewInventoryServiceHandler(&relay{peer: c}, s.HandlerOptions()...))
	})
	const ada = "5c1d9b6e-7f2a-4b3c-8d4e-1f2a3b4c5d6e"
	identity, _, err := auth.SignIdentity(identityKey, ada)
	if err != nil {
		t.Fatal(err)
	}
	c := inventoryv1connect.NewInventoryServiceClient(http.DefaultClient, front, headers(auth.IdentityHeader, identity))
	res, err := c.GetItem(ctx, connect.NewRequest(&inventoryv1.GetItemRequest{Sku: "KEEL-MUG"}))
	if err != nil || res.Msg.GetItem().GetName() != ada {
		t.Fatalf("the peer saw %q (%v), want %s", res.Msg.GetItem().GetName(), err, ada)
	}
	// Without identity (GetItem is public) the front calls the peer as
	// itself, a process of the platform, and the peer sees no user; with
	// a forged identity the front refuses the call.
	res, err = inventoryv1connect.NewInventoryServiceClient(http.DefaultClient, front).GetItem(ctx, connect.NewRequest(&inventoryv1.GetItemRequest{Sku: "KEEL-MUG"}))
	if err != nil || res.Msg.GetItem().GetName() != "" {
		t.Fatalf("anonymous: the peer saw %q (%v), want nobody", res.Msg.GetItem().GetName(), err)
	}
	forged, _, _ := auth.SignIdentity([]byte("a-caller-made-up-identity-key-000"), ada)
	_, err = inventoryv1connect.NewInventoryServiceClient(http.DefaultClient, front, headers(auth.IdentityHeader, forged)).GetItem(ctx, connect.NewRequest(&inventoryv1.GetItemRequest{Sku: "KEEL-MUG"}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("forged identity: %v, want unauthenticated", err)
	}
}

type whoAmI struct {
	userv1connect.UnimplementedUserServiceHandler
}

func (whoAmI) GetUser(ctx context.Context, _ *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	user, _ := auth.UserFrom(ctx)
	return connect.NewResponse(&userv1.GetUserResponse{User: &userv1.User{Id: user}}), nil
}

type relay struct {
	inventoryv1connect.UnimplementedInventoryServiceHandler
	peer userv1connect.UserServiceClient
}

func (r *relay) GetItem(ctx context.Context, _ *connect.Request[inventoryv1.GetItemRequest]) (*connect.Response[inventoryv1.GetItemResponse], error) {
	res, err := r.peer.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: "5c1d9b6e-7f2a-4b3c-8d4e-1f2a3b4c5d6e"}))
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&inventoryv1.GetItemResponse{Item: &inventoryv1.Item{Name: res.Msg.GetUser().GetId()}}), nil
}
