package service_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/internal/saga"
	"github.com/keelplatform/keel/services/order/internal/order"
	"github.com/keelplatform/keel/services/order/internal/placeorder"
	"github.com/keelplatform/keel/services/order/internal/store"
)

// errCrash stops a saga's driver at a boundary as if its process died.
var errCrash = errors.New("crash drill")

// leaveMidFlight places an order the way an order instance does, through
// the service's store and saga definition, but stops the saga's driver at
// the boundary stopAt as if the instance died there: nothing more is
// written and its lease (1s) is left to expire. It returns the order id.
func (s *shop) leaveMidFlight(key, stopAt string, lines ...order.Line) string {
	t := s.t
	t.Helper()
	id, err := s.runSaga(key, func(b saga.Boundary) error {
		if b.String() == stopAt {
			return errCrash
		}
		return nil
	}, lines...)
	if !errors.Is(err, errCrash) {
		t.Fatalf("Run stopped at %s with %v, want the crash drill", stopAt, err)
	}
	st, err := store.Open(context.Background(), s.orderDatabase())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	o, err := st.Order(context.Background(), id)
	if err != nil || o.Status != order.Pending {
		t.Fatalf("order left at %s: %+v, %v; want it pending", stopAt, o, err)
	}
	return id
}

// runSaga places an order of lines under key the way an order instance
// does, through the service's store and saga definition, calling
// boundary at every boundary its driver passes, and returns the order id
// and the saga's outcome.
func (s *shop) runSaga(key string, boundary func(saga.Boundary) error, lines ...order.Line) (string, error) {
	t := s.t
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, s.orderDatabase())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	peers := placeorder.Peers{
		Inventory: s.items,
		Payment:   paymentv1connect.NewPaymentServiceClient(http.DefaultClient, "http://"+peerAddr(s.peers, "payment")),
	}
	orch, err := saga.New(st.Sagas(), placeorder.Definition(peers), saga.Options{
		LeaseTTL: time.Second,
		Backoff:  10 * time.Millisecond,
		Logger:   slog.New(slog.DiscardHandler),
		Boundary: boundary,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer orch.Close()
	requested := make([]order.Requested, len(lines))
	state := order.State{OrderID: order.ID(s.userID, key), IdempotencyKey: key, UserID: s.userID, Currency: "EUR", Lines: lines}
	for i, l := range lines {
		requested[i] = order.Requested{SKU: l.SKU, Quantity: l.Quantity}
		state.TotalMinor += l.Quantity * l.UnitPriceMinor
	}
	state.RequestHash = order.RequestHash(s.userID, requested)
	_, err = orch.Run(ctx, state.OrderID, state)
	return state.OrderID, err
}

// peerAddr returns the address of service in peers, a KEEL_PEERS list.
func peerAddr(peers, service string) string {
	for entry := range strings.SplitSeq(peers, ",") {
		if name, addr, _ := strings.Cut(entry, "="); name == service {
			return addr
		}
	}
	return ""
}

// TestRecoveryFinishesSagasLeftMidFlight: sagas whose instance died
// after the charge, and while compensating, are carried on to their end
// by an order instance started afterwards: the charge made once, the
// stock committed or released, the order CONFIRMED or CANCELLED, and a
// retry of PlaceOrder answered with it.
func TestRecoveryFinishesSagasLeftMidFlight(t *testing.T) {
	for _, d := range orderDrivers {
		t.Run(d, func(t *testing.T) {
			s := newPeers(t, d)
			charged := s.leaveMidFlight("recover-charged", "after-action:"+placeorder.ChargePayment,
				order.Line{SKU: "TEA", Quantity: 2, UnitPriceMinor: teaPrice})
			if captured, _ := s.recorder.payments(); len(captured) != 1 {
				t.Fatalf("captured %v before the crash, want one payment", captured)
			}
			declined := s.leaveMidFlight("recover-declined", "before-compensation:"+placeorder.ReserveStock,
				order.Line{SKU: "GOLD", Quantity: 1, UnitPriceMinor: goldPrice})
			if n := s.available("GOLD"); n != goldStock-1 {
				t.Fatalf("GOLD available %d before recovery, want the reservation held", n)
			}

			s.orders = s.startOrders()
			for _, id := range []string{charged, declined} {
				eventually(t, "order "+id+" recovered", func() error {
					if st := s.get(id).GetStatus(); st == pending {
						return fmt.Errorf("still %v", st)
					}
					return nil
				})
			}

			o := s.get(charged)
			if o.GetStatus() != confirmed || !sameStatuses(history(o), pending, confirmed) {
				t.Errorf("charged order %v, want confirmed", o)
			}
			captured, refunds := s.recorder.payments()
			if charges, _ := s.recorder.calls(); len(captured) != 1 || captured[0] != o.GetPaymentId() || refunds != 0 || charges != 3 {
				t.Errorf("%d charge calls, captured %v, %d refunds; want the charge replayed with its key (two calls) and the decline: one payment", charges, captured, refunds)
			}
			s.wantCommitted(charged)
			if n := s.available("TEA"); n != teaStock-2 {
				t.Errorf("TEA available %d, want %d", n, teaStock-2)
			}
			again, err := s.place("recover-charged", "TEA", 2)
			if err != nil || again.GetOrderId() != charged || again.GetStatus() != confirmed {
				t.Errorf("PlaceOrder again: %v, %v; want the confirmed order", again, err)
			}

			o = s.get(declined)
			if o.GetStatus() != cancelled || !strings.Contains(o.GetFailureReason(), "payment declined") {
				t.Errorf("declined order %v, want cancelled", o)
			}
			if n := s.available("GOLD"); n != goldStock {
				t.Errorf("GOLD available %d after recovery, want %d", n, goldStock)
			}
			_, err = s.place("recover-declined", "GOLD", 1)
			cancelledWith(t, err, "payment declined")

			// The reservation of the declined order is released for good.
			res, err := s.items.ReleaseReservation(context.Background(), connect.NewRequest(&inventoryv1.ReleaseReservationRequest{ReservationId: declined}))
			if err != nil || res.Msg.GetReservation().GetState() != inventoryv1.ReservationState_RESERVATION_STATE_RELEASED {
				t.Errorf("reservation of the declined order: %v, %v", res, err)
			}
		})
	}
}
