package service_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	paymentv1 "github.com/keelplatform/keel/gen/go/shop/payment/v1"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
)

var (
	pending   = orderv1.OrderStatus_ORDER_STATUS_PENDING
	confirmed = orderv1.OrderStatus_ORDER_STATUS_CONFIRMED
	cancelled = orderv1.OrderStatus_ORDER_STATUS_CANCELLED
)

// forEachDriver runs test against a fresh shop whose order service
// stores on each database.
func forEachDriver(t *testing.T, test func(t *testing.T, s *shop)) {
	for _, d := range orderDrivers {
		t.Run(d, func(t *testing.T) { test(t, newShop(t, d)) })
	}
}

// history returns the statuses of an order's history.
func history(o *orderv1.Order) []orderv1.OrderStatus {
	var out []orderv1.OrderStatus
	for _, c := range o.GetHistory() {
		out = append(out, c.GetStatus())
	}
	return out
}

func sameStatuses(a []orderv1.OrderStatus, b ...orderv1.OrderStatus) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// cancelledWith checks that err is PlaceOrder's answer for a cancelled
// order: failed_precondition naming the order and the reason, with the
// order as a detail, and returns that order.
func cancelledWith(t *testing.T, err error, reason string) *orderv1.Order {
	t.Helper()
	ce, ok := errors.AsType[*connect.Error](err)
	if !ok || ce.Code() != connect.CodeFailedPrecondition {
		t.Fatalf("PlaceOrder: %v, want failed_precondition", err)
	}
	var o *orderv1.Order
	for _, d := range ce.Details() {
		if v, err := d.Value(); err == nil {
			if got, ok := v.(*orderv1.Order); ok {
				o = got
			}
		}
	}
	if o == nil || o.GetStatus() != cancelled {
		t.Fatalf("PlaceOrder error carries order %v, want a cancelled one", o)
	}
	if !strings.Contains(ce.Message(), o.GetOrderId()) || !strings.Contains(ce.Message(), reason) {
		t.Errorf("PlaceOrder message %q does not name the order %s and the reason %q", ce.Message(), o.GetOrderId(), reason)
	}
	return o
}

// TestPlaceOrderConfirms: an order in stock and under the decline limit
// ends CONFIRMED, priced from the catalogue, with its stock committed and
// one charge of its total.
func TestPlaceOrderConfirms(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *shop) {
		o, err := s.place("happy-path-0001", "TEA", 2, "MUG", 1)
		if err != nil {
			t.Fatal(err)
		}
		const total = 2*teaPrice + mugPrice
		if o.GetStatus() != confirmed || o.GetTotal().GetAmountMinor() != total || o.GetTotal().GetCurrencyCode() != "EUR" ||
			o.GetUserId() != s.userID || o.GetPaymentId() == "" || o.GetFailureReason() != "" {
			t.Fatalf("order %v", o)
		}
		if l := o.GetLines(); len(l) != 2 || l[0].GetUnitPrice().GetAmountMinor() != teaPrice || l[1].GetUnitPrice().GetAmountMinor() != mugPrice {
			t.Errorf("lines %v, want the catalogue's prices", l)
		}
		if !sameStatuses(history(o), pending, confirmed) {
			t.Errorf("history %v", history(o))
		}
		if got := s.get(o.GetOrderId()); got.GetStatus() != confirmed || !sameStatuses(history(got), pending, confirmed) {
			t.Errorf("GetOrder: %v", got)
		}
		if a, b := s.available("TEA"), s.available("MUG"); a != teaStock-2 || b != mugStock-1 {
			t.Errorf("available TEA %d, MUG %d; want %d, %d", a, b, teaStock-2, mugStock-1)
		}
		s.wantCommitted(o.GetOrderId())
		captured, refunds := s.recorder.payments()
		if len(captured) != 1 || captured[0] != o.GetPaymentId() || refunds != 0 {
			t.Fatalf("payments captured %v, refunds %d; want the order's one", captured, refunds)
		}
		if p := s.payment(o.GetPaymentId()); p.GetAmount().GetAmountMinor() != total || p.GetStatus() != paymentv1.PaymentStatus_PAYMENT_STATUS_CAPTURED ||
			p.GetOrderId() != o.GetOrderId() {
			t.Errorf("payment %v", p)
		}
	})
}

// TestDeclinedPaymentCancels: a declined charge cancels the order with
// the reason, releases its stock and leaves nothing charged.
func TestDeclinedPaymentCancels(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *shop) {
		_, err := s.place("declined-0001", "GOLD", 1)
		o := cancelledWith(t, err, "payment declined")
		const reason = "charge-payment: payment declined: amount_over_limit"
		got := s.get(o.GetOrderId())
		if got.GetStatus() != cancelled || got.GetFailureReason() != reason || !sameStatuses(history(got), pending, cancelled) ||
			got.GetHistory()[1].GetReason() != reason || got.GetPaymentId() != "" {
			t.Fatalf("GetOrder: %v, want cancelled with %q", got, reason)
		}
		if n := s.available("GOLD"); n != goldStock {
			t.Errorf("GOLD available %d, want %d: the stock was not released", n, goldStock)
		}
		captured, refunds := s.recorder.payments()
		if _, declined := s.recorder.calls(); len(captured) != 0 || refunds != 0 || declined != 1 {
			t.Errorf("captured %v, refunds %d, declines %d; want nothing captured, one decline", captured, refunds, declined)
		}
	})
}

// TestStockShortCancels: an order the stock cannot cover is cancelled
// with the reason before anything is charged.
func TestStockShortCancels(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *shop) {
		_, err := s.place("stock-short-0001", "TEA", 1, "MUG", mugStock+1)
		o := cancelledWith(t, err, "out of stock")
		const reason = "reserve-stock: out of stock: sku MUG (requested 4, available 3)"
		if got := s.get(o.GetOrderId()); got.GetStatus() != cancelled || got.GetFailureReason() != reason {
			t.Fatalf("GetOrder: %v, want cancelled with %q", got, reason)
		}
		if a, b := s.available("TEA"), s.available("MUG"); a != teaStock || b != mugStock {
			t.Errorf("available TEA %d, MUG %d; want all of it", a, b)
		}
		if charges, _ := s.recorder.calls(); charges != 0 {
			t.Errorf("%d charges, want none", charges)
		}
	})
}

// TestSameKeyConcurrentlyPlacesOneOrder: twenty concurrent PlaceOrders
// with one key, spread over two order instances sharing the database,
// while the first is still under way (charges are slow), and one more
// after: one order, one charge, one reservation.
func TestSameKeyConcurrentlyPlacesOneOrder(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *shop) {
		instances := []orderv1connect.OrderServiceClient{s.orders, s.startOrders()}
		s.recorder.chargeDelay.Store(int64(200 * time.Millisecond))
		const n = 20
		ids := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				o, err := s.placeWith(instances[i%len(instances)], "same-key-0001", "TEA", 3)
				if err != nil {
					t.Errorf("PlaceOrder %d: %v", i, err)
					return
				}
				if o.GetStatus() != confirmed {
					t.Errorf("PlaceOrder %d: status %v", i, o.GetStatus())
				}
				ids[i] = o.GetOrderId()
			})
		}
		wg.Wait()
		again, err := s.place("same-key-0001", "TEA", 3)
		if err != nil {
			t.Fatal(err)
		}
		for i, id := range ids {
			if id != again.GetOrderId() {
				t.Fatalf("call %d got order %s, the retry %s", i, id, again.GetOrderId())
			}
		}
		captured, _ := s.recorder.payments()
		if charges, _ := s.recorder.calls(); len(captured) != 1 || charges != 1 {
			t.Errorf("%d charge calls, payments %v; want one", charges, captured)
		}
		if a := s.available("TEA"); a != teaStock-3 {
			t.Errorf("TEA available %d, want %d", a, teaStock-3)
		}
		res, err := s.orders.ListOrders(context.Background(), connect.NewRequest(&orderv1.ListOrdersRequest{UserId: s.userID}))
		if err != nil || len(res.Msg.GetOrders()) != 1 {
			t.Fatalf("ListOrders: %v, %v; want one order", res, err)
		}
	})
}

// TestKeyReusedWithAnotherRequestIsRefused: a used key with other lines
// or another user is invalid_argument naming idempotency_key; the same
// lines in another order are the same request.
func TestKeyReusedWithAnotherRequestIsRefused(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *shop) {
		first, err := s.place("reused-key-0001", "TEA", 1, "MUG", 1)
		if err != nil {
			t.Fatal(err)
		}
		for name, lines := range map[string][]any{
			"other quantity": {"TEA", 2, "MUG", 1},
			"other sku":      {"TEA", 1},
		} {
			_, err := s.place("reused-key-0001", lines...)
			if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "idempotency_key") {
				t.Errorf("%s: %v, want invalid_argument naming idempotency_key", name, err)
			}
		}
		same, err := s.place("reused-key-0001", "MUG", 1, "TEA", 1)
		if err != nil || same.GetOrderId() != first.GetOrderId() {
			t.Errorf("the same lines in another order: %v, %v; want the first order", same, err)
		}
		if charges, _ := s.recorder.calls(); charges != 1 {
			t.Errorf("%d charges, want one", charges)
		}
		// Keys are each user's own: another user's order under the same
		// key is another order.
		res, err := s.users.Register(context.Background(), connect.NewRequest(&userv1.RegisterRequest{
			Email: "grace@example.com", Password: "correct horse battery", DisplayName: "Grace",
		}))
		if err != nil {
			t.Fatal(err)
		}
		other := *s
		other.userID = res.Msg.GetUser().GetId()
		theirs, err := other.place("reused-key-0001", "TEA", 1, "MUG", 1)
		if err != nil || theirs.GetOrderId() == first.GetOrderId() || theirs.GetUserId() != other.userID {
			t.Errorf("another user's order under the same key: %v, %v; want an order of their own", theirs, err)
		}
	})
}

// TestInvalidOrdersAreRefusedBeforeAnything: requests naming no user, no
// item, two currencies or a sku twice are invalid_argument naming the
// field, and leave no order; an unknown order id is not_found.
func TestInvalidOrdersAreRefusedBeforeAnything(t *testing.T) {
	s := newShop(t, orderDrivers[0])
	nobody := *s
	nobody.userID = "9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b"
	for _, tc := range []struct {
		name  string
		shop  *shop
		lines []any
		field string
	}{
		{"unknown user", &nobody, []any{"TEA", 1}, "user_id"},
		{"unknown sku", s, []any{"TEA", 1, "NOPE", 1}, "lines[1].sku NOPE"},
		{"two currencies", s, []any{"TEA", 1, "BOOK", 1}, "lines[1]"},
		{"sku twice", s, []any{"TEA", 1, "TEA", 2}, "lines[1].sku TEA"},
	} {
		_, err := tc.shop.place("invalid-"+strings.ReplaceAll(tc.name, " ", "-"), tc.lines...)
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: %v, want invalid_argument naming %s", tc.name, err, tc.field)
		}
	}
	res, err := s.orders.ListOrders(context.Background(), connect.NewRequest(&orderv1.ListOrdersRequest{UserId: s.userID}))
	if err != nil || len(res.Msg.GetOrders()) != 0 {
		t.Errorf("ListOrders: %v, %v; want no order", res, err)
	}
	_, err = s.orders.GetOrder(context.Background(), connect.NewRequest(&orderv1.GetOrderRequest{OrderId: "no-such-order"}))
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("GetOrder of an unknown id: %v, want not_found", err)
	}
}

// TestListOrdersPagesNewestFirst walks a user's orders with page tokens.
func TestListOrdersPagesNewestFirst(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *shop) {
		var placed []string
		for i := range 5 {
			o, err := s.place(fmt.Sprintf("list-orders-%04d", i), "TEA", 1)
			if err != nil {
				t.Fatal(err)
			}
			placed = append([]string{o.GetOrderId()}, placed...) // newest first
		}
		var listed []string
		token := ""
		for pages := 0; ; pages++ {
			res, err := s.orders.ListOrders(context.Background(), connect.NewRequest(&orderv1.ListOrdersRequest{UserId: s.userID, PageSize: 2, PageToken: token}))
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range res.Msg.GetOrders() {
				listed = append(listed, o.GetOrderId())
			}
			if token = res.Msg.GetNextPageToken(); token == "" {
				break
			}
			if pages > 5 {
				t.Fatal("too many pages")
			}
		}
		if fmt.Sprint(listed) != fmt.Sprint(placed) {
			t.Errorf("listed %v, want %v", listed, placed)
		}
		_, err := s.orders.ListOrders(context.Background(), connect.NewRequest(&orderv1.ListOrdersRequest{UserId: s.userID, PageToken: "bogus"}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("a bogus page token: %v, want invalid_argument", err)
		}
	})
}

// TestChargeWithLostAnswersCancelsAndRefunds: the payment service charges
// but its answers are lost until the saga gives up on the charge (its
// outcome unknown): the order is cancelled, its stock released, and the
// charge that did happen is refunded in full.
func TestChargeWithLostAnswersCancelsAndRefunds(t *testing.T) {
	forEachDriver(t, func(t *testing.T, s *shop) {
		// Three saga attempts of at most three calls each (the call
		// policy retries unavailable) are all lost; the compensation's
		// calls after them get through.
		s.recorder.loseCharges.Store(9)
		_, err := s.place("lost-answers-0001", "TEA", 2)
		o := cancelledWith(t, err, "charge-payment: no success after 3 attempts")
		got := s.get(o.GetOrderId())
		if got.GetStatus() != cancelled || got.GetPaymentId() == "" {
			t.Fatalf("GetOrder: %v, want cancelled with the payment it refunded", got)
		}
		if n := s.available("TEA"); n != teaStock {
			t.Errorf("TEA available %d, want %d", n, teaStock)
		}
		captured, refunds := s.recorder.payments()
		if len(captured) != 1 || captured[0] != got.GetPaymentId() || refunds != 1 {
			t.Fatalf("captured %v, refunds %d; want the one charge refunded", captured, refunds)
		}
		if p := s.payment(got.GetPaymentId()); p.GetStatus() != paymentv1.PaymentStatus_PAYMENT_STATUS_REFUNDED ||
			p.GetRefunded().GetAmountMinor() != p.GetAmount().GetAmountMinor() {
			t.Errorf("payment %v, want refunded in full", p)
		}
	})
}
