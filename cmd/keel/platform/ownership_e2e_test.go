package platform_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	paymentv1 "github.com/keelplatform/keel/gen/go/shop/payment/v1"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	storefrontv1 "github.com/keelplatform/keel/gen/go/shop/storefront/v1"
	"github.com/keelplatform/keel/gen/go/shop/storefront/v1/storefrontv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/testkit"
)

// TestOwnershipThroughTheEdge: with two customers logged in, each reads
// and changes only what is theirs, over every protocol: the other's
// account, orders (one by one, listed, or as the storefront's order
// view, which asks the order service as the caller) and payments are
// permission_denied, and an order placed in the other's name too; the
// owner reads them all.
func TestOwnershipThroughTheEdge(t *testing.T) {
	s := startShop(t) // the customer "Matrix", logged in
	ctx := context.Background()
	users := userv1connect.NewUserServiceClient(http.DefaultClient, s.url)
	if _, err := users.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{Email: "eve@example.com", Password: s.password, DisplayName: "Eve"})); err != nil {
		t.Fatal(err)
	}
	login, err := users.Login(ctx, connect.NewRequest(&userv1.LoginRequest{Email: "eve@example.com", Password: s.password}))
	if err != nil {
		t.Fatal(err)
	}
	eve, eveID := login.Msg.GetAccessToken(), login.Msg.GetUser().GetId()

	placed, err := orderv1connect.NewOrderServiceClient(http.DefaultClient, s.url, bearer(s.token)).PlaceOrder(ctx, connect.NewRequest(&orderv1.PlaceOrderRequest{
		IdempotencyKey: "ownership-1", UserId: s.userID,
		Lines: []*orderv1.OrderLine{{Sku: "KEEL-MUG", Quantity: 1}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	order := placed.Msg.GetOrder()

	for name, c := range map[string]struct {
		client *http.Client
		opts   []connect.ClientOption
	}{
		"connect": {http.DefaultClient, []connect.ClientOption{connect.WithProtoJSON()}},
		"grpc":    {testkit.H2CClient(), []connect.ClientOption{connect.WithGRPC()}},
		"grpcweb": {http.DefaultClient, []connect.ClientOption{connect.WithGRPCWeb()}},
	} {
		t.Run(name, func(t *testing.T) {
			as := func(token string) []connect.ClientOption {
				return append([]connect.ClientOption{bearer(token)}, c.opts...)
			}
			// Each call, made with token, and what it reads.
			calls := map[string]func(token string) error{
				"GetUser": func(token string) error {
					_, err := userv1connect.NewUserServiceClient(c.client, s.url, as(token)...).GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: s.userID}))
					return err
				},
				"UpdateProfile": func(token string) error {
					_, err := userv1connect.NewUserServiceClient(c.client, s.url, as(token)...).UpdateProfile(ctx, connect.NewRequest(&userv1.UpdateProfileRequest{Id: s.userID, DisplayName: "Matrix"}))
					return err
				},
				"GetOrder": func(token string) error {
					_, err := orderv1connect.NewOrderServiceClient(c.client, s.url, as(token)...).GetOrder(ctx, connect.NewRequest(&orderv1.GetOrderRequest{OrderId: order.GetOrderId()}))
					return err
				},
				"ListOrders": func(token string) error {
					_, err := orderv1connect.NewOrderServiceClient(c.client, s.url, as(token)...).ListOrders(ctx, connect.NewRequest(&orderv1.ListOrdersRequest{UserId: s.userID}))
					return err
				},
				"GetPayment": func(token string) error {
					_, err := paymentv1connect.NewPaymentServiceClient(c.client, s.url, as(token)...).GetPayment(ctx, connect.NewRequest(&paymentv1.GetPaymentRequest{PaymentId: order.GetPaymentId()}))
					return err
				},
				"GetOrderView": func(token string) error {
					_, err := storefrontv1connect.NewStorefrontServiceClient(c.client, s.url, as(token)...).GetOrderView(ctx, connect.NewRequest(&storefrontv1.GetOrderViewRequest{OrderId: order.GetOrderId()}))
					return err
				},
			}
			for method, call := range calls {
				if err := call(eve); connect.CodeOf(err) != connect.CodePermissionDenied {
					t.Errorf("%s of another customer's: %v, want permission_denied", method, err)
				}
				if err := call(s.token); err != nil {
					t.Errorf("%s of one's own: %v", method, err)
				}
			}
			_, err := orderv1connect.NewOrderServiceClient(c.client, s.url, as(eve)...).PlaceOrder(ctx, connect.NewRequest(&orderv1.PlaceOrderRequest{
				IdempotencyKey: "ownership-eve-" + name, UserId: s.userID,
				Lines: []*orderv1.OrderLine{{Sku: "KEEL-MUG", Quantity: 1}},
			}))
			if connect.CodeOf(err) != connect.CodePermissionDenied {
				t.Errorf("PlaceOrder in another customer's name: %v, want permission_denied", err)
			}
			// Without a user id, the order is the logged-in customer's.
			own, err := orderv1connect.NewOrderServiceClient(c.client, s.url, as(eve)...).PlaceOrder(ctx, connect.NewRequest(&orderv1.PlaceOrderRequest{
				IdempotencyKey: "ownership-own-" + name, Lines: []*orderv1.OrderLine{{Sku: "KEEL-MUG", Quantity: 1}},
			}))
			if err != nil || own.Msg.GetOrder().GetUserId() != eveID {
				t.Errorf("PlaceOrder with no user id: %v, %v; want an order of %s", own, err, eveID)
			}
			// Without a user id, the list is the logged-in customer's.
			mine, err := orderv1connect.NewOrderServiceClient(c.client, s.url, as(eve)...).ListOrders(ctx, connect.NewRequest(&orderv1.ListOrdersRequest{}))
			if err != nil || len(mine.Msg.GetOrders()) == 0 {
				t.Fatalf("ListOrders with no user id: %v, %v; want Eve's orders", mine, err)
			}
			for _, o := range mine.Msg.GetOrders() {
				if o.GetUserId() != eveID {
					t.Errorf("ListOrders with no user id listed an order of %s, want only %s's", o.GetUserId(), eveID)
				}
			}
		})
	}
}

// TestServicesHoldDirectCallersToTheContract: a caller that reaches a
// service's own port, past the edge, gets no more than through it: a
// public method answers anyone, a method that needs a login needs a
// verified identity, an internal one a platform process's (a user's is
// permission_denied), and an identity signed with another key is
// refused.
func TestServicesHoldDirectCallersToTheContract(t *testing.T) {
	s := startShop(t)
	addr := map[string]string{}
	for _, svc := range s.p.Services() {
		name, a, _ := strings.Cut(svc, "@")
		addr[name] = "http://" + a
	}
	ctx := context.Background()
	userIdentity, _, err := auth.SignIdentity([]byte(testIdentityKey), s.userID)
	if err != nil {
		t.Fatal(err)
	}
	forged, _, _ := auth.SignProcess([]byte("a-key-the-platform-does-not-hold!"), "order")
	reserve := &inventoryv1.ReserveStockRequest{ReservationId: "direct-1", Lines: []*inventoryv1.StockLine{{Sku: "KEEL-MUG", Quantity: 1}}}
	inventory := func(opts ...connect.ClientOption) inventoryv1connect.InventoryServiceClient {
		return inventoryv1connect.NewInventoryServiceClient(http.DefaultClient, addr["inventory"], opts...)
	}
	users := func(opts ...connect.ClientOption) userv1connect.UserServiceClient {
		return userv1connect.NewUserServiceClient(http.DefaultClient, addr["user"], opts...)
	}
	for name, tc := range map[string]struct {
		call func() error
		want connect.Code
	}{
		"public, no identity": {func() error {
			_, err := inventory().GetItem(ctx, connect.NewRequest(&inventoryv1.GetItemRequest{Sku: "KEEL-MUG"}))
			return err
		}, 0},
		"login needed, no identity": {func() error {
			_, err := users().GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: s.userID}))
			return err
		}, connect.CodeUnauthenticated},
		"login needed, the user's identity": {func() error {
			_, err := users(withHeader(auth.IdentityHeader, userIdentity)).GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: s.userID}))
			return err
		}, 0},
		"internal, no identity": {func() error {
			_, err := inventory().ReserveStock(ctx, connect.NewRequest(reserve))
			return err
		}, connect.CodeUnauthenticated},
		"internal, a user's identity": {func() error {
			_, err := inventory(withHeader(auth.IdentityHeader, userIdentity)).ReserveStock(ctx, connect.NewRequest(reserve))
			return err
		}, connect.CodePermissionDenied},
		"internal, a forged process identity": {func() error {
			_, err := inventory(withHeader(auth.IdentityHeader, forged)).ReserveStock(ctx, connect.NewRequest(reserve))
			return err
		}, connect.CodeUnauthenticated},
		"an order for no one": {func() error {
			_, err := orderv1connect.NewOrderServiceClient(http.DefaultClient, addr["order"], testkit.AsPlatform(t, testIdentityKey, "test")).PlaceOrder(ctx,
				connect.NewRequest(&orderv1.PlaceOrderRequest{IdempotencyKey: "direct-no-user", Lines: []*orderv1.OrderLine{{Sku: "KEEL-MUG", Quantity: 1}}}))
			return err
		}, connect.CodeInvalidArgument},
		"internal, a platform process": {func() error {
			_, err := inventory(testkit.AsPlatform(t, testIdentityKey, "test")).ReserveStock(ctx, connect.NewRequest(reserve))
			return err
		}, 0},
	} {
		t.Run(name, func(t *testing.T) {
			err := tc.call()
			if (tc.want == 0 && err != nil) || (tc.want != 0 && connect.CodeOf(err) != tc.want) {
				t.Fatalf("%v, want %v", err, map[bool]string{true: "success", false: tc.want.String()}[tc.want == 0])
			}
		})
	}
}
