// Package placeorder defines the place-order saga over the order
// service's peers:
//
//  1. reserve-stock: inventory.ReserveStock with the order id as the
//     reservation id; compensated by ReleaseReservation of that id
//     (which also fences the id against a reservation still on its way).
//  2. charge-payment: payment.Charge of the order's total under the
//     step's key; the payment id goes into the saga state. Compensated by
//     a Refund of everything left of the charge made under the action
//     key, with the compensation key.
//  3. commit-stock: inventory.CommitReservation of the order id. It is
//     the step past the pivot (the charge): [saga.Step.Retriable], so a
//     transient failure is retried until it succeeds rather than undoing
//     a charge; a permanent failure (the reservation expired meanwhile)
//     still refunds and releases.
//
// Errors of peers are classified by Connect code: failed_precondition,
// invalid_argument, not_found, already_exists and permission_denied are
// [saga.Permanent] (the call had no effect and never will); everything
// else (unavailable, deadline_exceeded, internal...) is transient, and
// the saga retries it as its options say, on top of the retries the
// call policy already made of these idempotent calls. The reasons the
// steps give, which end up in a cancelled order's failure_reason and in
// the PlaceOrder error, name what failed (out of stock, payment
// declined) and never carry transport internals: those are logged.
package placeorder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"connectrpc.com/connect"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	paymentv1 "github.com/keelplatform/keel/gen/go/shop/payment/v1"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/internal/saga"
	"github.com/keelplatform/keel/services/order/internal/order"
)

// The steps' names, which are part of their idempotency keys and of the
// saga boundaries crash drills name ("after-action:charge-payment"): never
// rename them.
const (
	ReserveStock  = "reserve-stock"
	ChargePayment = "charge-payment"
	CommitStock   = "commit-stock"
)

// Peers are the services the saga calls.
type Peers struct {
	Inventory inventoryv1connect.InventoryServiceClient
	Payment   paymentv1connect.PaymentServiceClient
	// Logger receives the causes of transient failures.
	Logger *slog.Logger
}

// Definition returns the place-order saga over peers.
func Definition(p Peers) saga.Definition[order.State] {
	return saga.Definition[order.State]{
		Name: order.Definition,
		Steps: []saga.Step[order.State]{
			{Name: ReserveStock, Action: p.reserve, Compensate: p.release},
			{Name: ChargePayment, Action: p.charge, Compensate: p.refund},
			{Name: CommitStock, Action: p.commit, Retriable: true},
		},
	}
}

func (p Peers) reserve(ctx context.Context, x saga.Exec, s *order.State) error {
	req := &inventoryv1.ReserveStockRequest{ReservationId: s.OrderID}
	for _, l := range s.Lines {
		req.Lines = append(req.Lines, &inventoryv1.StockLine{Sku: l.SKU, Quantity: l.Quantity})
	}
	_, err := p.Inventory.ReserveStock(ctx, connect.NewRequest(req))
	if short, ok := detail[*inventoryv1.InsufficientStock](err); ok {
		return saga.Permanent(fmt.Errorf("out of stock: sku %s (requested %d, available %d)", short.GetSku(), short.GetRequested(), short.GetAvailable()))
	}
	return p.classify(ctx, x, "inventory", err)
}

func (p Peers) release(ctx context.Context, x saga.Exec, s *order.State) error {
	_, err := p.Inventory.ReleaseReservation(ctx, connect.NewRequest(&inventoryv1.ReleaseReservationRequest{ReservationId: s.OrderID}))
	return p.classify(ctx, x, "inventory", err)
}

func (p Peers) charge(ctx context.Context, x saga.Exec, s *order.State) error {
	if s.TotalMinor == 0 {
		return nil // a free order: nothing to charge (the payment contract refuses zero)
	}
	res, err := p.Payment.Charge(ctx, connect.NewRequest(chargeRequest(x.Key, s)))
	if declined, ok := detail[*paymentv1.PaymentDeclined](err); ok {
		return saga.Permanent(fmt.Errorf("payment declined: %s", declined.GetReason()))
	}
	if err != nil {
		return p.classify(ctx, x, "payment", err)
	}
	s.PaymentID = res.Msg.GetPayment().GetPaymentId()
	return nil
}

// refund gives back what the charge-payment action took. When the action
// succeeded, the state has the payment id. When it did not (its outcome
// was unknown: its answer may have been lost), the payment contract
// offers no lookup by key, so the charge is asked for again with the
// action's key and the same request: the payment service answers a key
// it knows as it did the first time (the payment, or the decline) and
// takes the money at most once per key. If the first charge never
// happened, that call makes it, and the refund below gives it back: the
// key is then spent, so a late charge with it takes nothing more.
func (p Peers) refund(ctx context.Context, x saga.Exec, s *order.State) error {
	if s.TotalMinor == 0 {
		return nil
	}
	if s.PaymentID == "" {
		res, err := p.Payment.Charge(ctx, connect.NewRequest(chargeRequest(x.ActionKey, s)))
		if _, ok := detail[*paymentv1.PaymentDeclined](err); ok {
			return nil // declined: nothing was taken
		}
		if err != nil {
			return p.transient(ctx, x, "payment", err)
		}
		s.PaymentID = res.Msg.GetPayment().GetPaymentId()
	}
	_, err := p.Payment.Refund(ctx, connect.NewRequest(&paymentv1.RefundRequest{
		IdempotencyKey: x.Key,
		PaymentId:      s.PaymentID,
		Reason:         "order " + s.OrderID + " cancelled",
	}))
	switch connect.CodeOf(err) {
	case connect.CodeNotFound:
		return nil // no such payment: nothing to refund
	case connect.CodeFailedPrecondition:
		// Nothing left to refund, if the payment is refunded in full
		// (by an earlier refund under another key).
		got, gerr := p.Payment.GetPayment(ctx, connect.NewRequest(&paymentv1.GetPaymentRequest{PaymentId: s.PaymentID}))
		if gerr == nil && got.Msg.GetPayment().GetStatus() == paymentv1.PaymentStatus_PAYMENT_STATUS_REFUNDED {
			return nil
		}
	}
	if err != nil {
		return p.transient(ctx, x, "payment", err)
	}
	return nil
}

func (p Peers) commit(ctx context.Context, x saga.Exec, s *order.State) error {
	_, err := p.Inventory.CommitReservation(ctx, connect.NewRequest(&inventoryv1.CommitReservationRequest{ReservationId: s.OrderID}))
	return p.classify(ctx, x, "inventory", err)
}

func chargeRequest(key string, s *order.State) *paymentv1.ChargeRequest {
	return &paymentv1.ChargeRequest{
		IdempotencyKey: key,
		OrderId:        s.OrderID,
		UserId:         s.UserID,
		Amount:         &moneyv1.Money{CurrencyCode: s.Currency, AmountMinor: s.TotalMinor},
	}
}

// classify returns err, a peer call's error, as a step's error: nil,
// permanent for the codes that say the call had no effect and never
// will, transient for the others.
func (p Peers) classify(ctx context.Context, x saga.Exec, service string, err error) error {
	if err == nil {
		return nil
	}
	switch code := connect.CodeOf(err); code {
	case connect.CodeFailedPrecondition, connect.CodeInvalidArgument, connect.CodeNotFound,
		connect.CodeAlreadyExists, connect.CodePermissionDenied:
		// A Keel service's message names the field or resource and is
		// meant for callers.
		msg := code.String()
		if ce, ok := errors.AsType[*connect.Error](err); ok && ce.Message() != "" {
			msg += ": " + ce.Message()
		}
		return saga.Permanent(fmt.Errorf("%s refused: %s", service, msg))
	}
	return p.transient(ctx, x, service, err)
}

// transient logs err, a peer call's error, and returns it as a transient
// failure that names the service and the code only.
func (p Peers) transient(ctx context.Context, x saga.Exec, service string, err error) error {
	code := connect.CodeOf(err)
	if p.Logger != nil {
		p.Logger.WarnContext(ctx, "place-order: "+service+" call failed",
			slog.String("saga", x.SagaID), slog.String("step", x.Step), slog.String("key", x.Key),
			slog.Int("attempt", x.Attempt), slog.Any("error", err))
	}
	return &peerError{service: service, code: code, err: err}
}

// peerError is a transient failure of a peer: its message names the
// service and the code, its cause stays available to errors.Is and As.
type peerError struct {
	service string
	code    connect.Code
	err     error
}

func (e *peerError) Error() string { return e.service + ": " + e.code.String() }
func (e *peerError) Unwrap() error { return e.err }

// detail returns the first error detail of type T in err, a Connect
// error.
func detail[T any](err error) (T, bool) {
	var zero T
	ce, ok := errors.AsType[*connect.Error](err)
	if !ok {
		return zero, false
	}
	for _, d := range ce.Details() {
		v, derr := d.Value()
		if derr != nil {
			continue
		}
		if t, ok := v.(T); ok {
			return t, true
		}
	}
	return zero, false
}
