package handler_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"

	"connectrpc.com/connect"

	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/saga"
	"github.com/keelplatform/keel/services/order/internal/handler"
	"github.com/keelplatform/keel/services/order/internal/order"
)

// orders is a store holding one order, pending until its saga ends.
type orders struct {
	mu sync.Mutex
	o  order.Order
}

func (s *orders) Order(_ context.Context, id string) (order.Order, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id != s.o.ID {
		return order.Order{}, order.ErrNotFound
	}
	return s.o, nil
}

func (s *orders) ListOrders(context.Context, string, int, *order.Cursor) ([]order.Order, *order.Cursor, error) {
	return nil, nil, nil
}

// sagas records whom the saga it drives acts for, then confirms the order.
type sagas struct {
	store *orders
	user  string // the user the saga's context carried; "" for the platform
	calls int
}

func (s *sagas) Run(ctx context.Context, id string, _ order.State) (saga.Outcome[order.State], error) {
	return s.Wait(ctx, id)
}

func (s *sagas) Wait(ctx context.Context, _ string) (saga.Outcome[order.State], error) {
	s.calls++
	s.user, _ = auth.UserFrom(ctx)
	s.store.mu.Lock()
	s.store.o.Status = order.Confirmed
	s.store.mu.Unlock()
	return saga.Outcome[order.State]{}, nil
}

// TestRetryTakingOverASagaActsAsThePlatform: a user's retry of
// PlaceOrder that finds its order pending waits for the saga, and may
// take it over (its instance died); the saga's steps are the platform's
// calls, internal to it, so the context they run in must carry no user
// (a user's identity is refused by internal methods: permission_denied,
// leaving money taken or stock held).
func TestRetryTakingOverASagaActsAsThePlatform(t *testing.T) {
	const user = "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"
	lines := []order.Requested{{SKU: "TEA", Quantity: 1}}
	id := order.ID(user, "retry-key-0001")
	store := &orders{o: order.Order{ID: id, UserID: user, Status: order.Pending, RequestHash: order.RequestHash(user, lines)}}
	s := &sagas{store: store}
	h := handler.New(store, s, nil, nil, slog.New(slog.DiscardHandler))

	ctx := auth.WithUser(context.Background(), user, "the user's identity token")
	res, err := h.PlaceOrder(ctx, connect.NewRequest(&orderv1.PlaceOrderRequest{
		IdempotencyKey: "retry-key-0001",
		Lines:          []*orderv1.OrderLine{{Sku: "TEA", Quantity: 1}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if res.Msg.GetOrder().GetStatus() != orderv1.OrderStatus_ORDER_STATUS_CONFIRMED {
		t.Fatalf("order %v, want confirmed", res.Msg.GetOrder().GetStatus())
	}
	if s.calls != 1 {
		t.Fatalf("the saga was waited for %d times, want 1", s.calls)
	}
	if s.user != "" {
		t.Fatalf("the saga taken over ran as user %q, want the platform", s.user)
	}
}
