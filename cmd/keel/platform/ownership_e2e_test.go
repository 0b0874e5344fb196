package platform_test

import (
	"context"
	"net/http"
	"testing"

	"connectrpc.com/connect"

	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	paymentv1 "github.com/keelplatform/keel/gen/go/shop/payment/v1"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	storefrontv1 "github.com/keelplatform/keel/gen/go/shop/storefront/v1"
	"github.com/keelplatform/keel/gen/go/shop/storefront/v1/storefrontv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
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
	eve := login.Msg.GetAccessToken()

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
			as := func(token string) []connect.ClientOption { return append([]connect.ClientOption{bearer(token)}, c.opts...) }
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
		})
	}
}
