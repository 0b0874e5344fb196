// Package handler serves the shop.payment.v1.PaymentService contract: it
// adapts each RPC to the ledger domain, charges and refunds through the
// payment provider, makes Charge and Refund idempotent by key (with the
// provider as well as in the ledger), and maps domain errors to Connect
// codes.
//
// Requests are validated against the contract's protovalidate rules by a
// server interceptor before they get here; the handler still never trusts
// that and refuses empty or odd input itself, a zero amount first of all.
// Messages sent to callers name the bad field or the missing resource and
// nothing more: internal causes are logged, not sent.
package handler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	paymentv1 "github.com/keelplatform/keel/gen/go/shop/payment/v1"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/services/payment/internal/ledger"
	"github.com/keelplatform/keel/services/payment/internal/provider"
)

// Bounds of the contract's string fields, in characters.
const (
	minKeyLen    = 8
	maxKeyLen    = 128
	maxIDLen     = 128
	maxReasonLen = 500
)

// recordTimeout bounds recording a charge the provider has answered, which
// goes on when the caller goes away.
const recordTimeout = 10 * time.Second

// currencyCode matches an ISO 4217 code, as the contract's Money does.
var currencyCode = regexp.MustCompile(`^[A-Z]{3}$`)

// Handler implements [paymentv1connect.PaymentServiceHandler]. It is safe
// for concurrent use.
type Handler struct {
	payments ledger.Repository
	provider provider.Provider
	logger   *slog.Logger
	crash    func(point string)
}

// The points of Charge and Refund at which a crash drill (internal/drill)
// may kill the process, to show that no money is lost, taken twice or
// given back twice whenever the payment service dies. At each, the
// provider and the ledger part until a retry with the key (the order
// saga retries its steps until they are recorded) brings them together.
const (
	// CrashAfterProvider: the provider took the money; nothing is
	// recorded and no answer sent. A retry with the key charges the
	// provider again (which takes the money once per key) and records it.
	CrashAfterProvider = "charge:after-provider"
	// CrashAfterCapture: the charge and its ledger entry are recorded;
	// no answer sent. A retry with the key is answered from the record.
	CrashAfterCapture = "charge:after-capture"
	// CrashAfterProviderRefund: the provider gave the money back; the
	// ledger does not say so and no answer was sent. A retry with the
	// key refunds at the provider again (which gives back once per key,
	// and answers with what it gave back the first time) and records it.
	CrashAfterProviderRefund = "refund:after-provider"
	// CrashAfterRefundRecord: the refund and its ledger entry are
	// recorded; no answer sent. A retry with the key is answered from
	// the record.
	CrashAfterRefundRecord = "refund:after-record"
)

// ProviderRefundKey returns the idempotency key under which the provider
// is asked to refund, for a Refund with the caller's key: derived from it
// alone, so every retry of a refund, in any process, after any crash,
// asks the provider with the same key.
func ProviderRefundKey(key string) string { return "refund:" + key }

// Option configures a [Handler].
type Option func(*Handler)

// WithCrashDrill calls crash at each of the Crash* points, for crash
// tests: see internal/drill.
func WithCrashDrill(crash func(point string)) Option {
	return func(h *Handler) { h.crash = crash }
}

var _ paymentv1connect.PaymentServiceHandler = (*Handler)(nil)

// New returns a Handler recording payments in payments, charging through
// p and logging internal errors to logger.
func New(payments ledger.Repository, p provider.Provider, logger *slog.Logger, opts ...Option) (*Handler, error) {
	if payments == nil {
		return nil, errors.New("handler: nil ledger repository")
	}
	if p == nil {
		return nil, errors.New("handler: nil payment provider")
	}
	if logger == nil {
		return nil, errors.New("handler: nil logger")
	}
	h := &Handler{payments: payments, provider: p, logger: logger, crash: func(string) {}}
	for _, o := range opts {
		o(h)
	}
	return h, nil
}

// Charge implements [paymentv1connect.PaymentServiceHandler.Charge].
//
// A charge whose key is recorded is answered from the record, the
// provider not called again: the payment as it is now, or the same
// decline. Otherwise the provider is charged; a decline is recorded under
// the key, a capture is recorded with its ledger entry and its key in one
// transaction, and a provider that does not answer leaves nothing
// recorded, so a retry with the key charges again. When two calls with
// one key race, the database lets one record its outcome and the other
// answers from it.
func (h *Handler) Charge(ctx context.Context, req *connect.Request[paymentv1.ChargeRequest]) (*connect.Response[paymentv1.ChargeResponse], error) {
	c, err := chargeFrom(req.Msg)
	if err != nil {
		return nil, err
	}
	rec, err := h.payments.Key(ctx, c.Key)
	switch {
	case err == nil:
		return h.replayCharge(ctx, req.Spec(), rec, c)
	case !errors.Is(err, ledger.ErrNotFound):
		return nil, h.internal(ctx, req.Spec(), err)
	}

	err = h.provider.Charge(ctx, c.Key, c.UserID.String(), c.Amount)
	if errors.Is(err, provider.ErrKeyReused) {
		// The provider took or declined another request under this key,
		// which a crash kept out of the ledger.
		return nil, keyReused()
	}
	if declined, ok := errors.AsType[*provider.Declined](err); ok {
		recordCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
		defer cancel()
		switch err := h.payments.Decline(recordCtx, c, declined.Reason); {
		case errors.Is(err, ledger.ErrKeyRecorded):
			return h.replayChargeOf(ctx, req.Spec(), c)
		case err != nil:
			return nil, h.internal(ctx, req.Spec(), err)
		}
		return nil, declinedError(declined.Reason)
	}
	if err != nil {
		return nil, h.providerError(ctx, req.Spec(), "charging", err)
	}

	// The provider took the money: record it even if the caller has gone
	// meanwhile, so the ledger does not miss it.
	h.crash(CrashAfterProvider)
	recordCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	p, err := h.payments.Capture(recordCtx, c)
	switch {
	case errors.Is(err, ledger.ErrKeyRecorded):
		return h.replayChargeOf(ctx, req.Spec(), c)
	case err != nil:
		// The provider took the money and the ledger does not say so. A
		// retry with the key charges the provider again, which takes the
		// money at most once per key, and records it then.
		return nil, h.internal(ctx, req.Spec(), err)
	}
	h.crash(CrashAfterCapture)
	return connect.NewResponse(&paymentv1.ChargeResponse{Payment: toProto(p)}), nil
}

// replayChargeOf answers c from the outcome recorded under its key by the
// request that won it.
func (h *Handler) replayChargeOf(ctx context.Context, spec connect.Spec, c ledger.Charge) (*connect.Response[paymentv1.ChargeResponse], error) {
	rec, err := h.payments.Key(ctx, c.Key)
	if err != nil {
		return nil, h.internal(ctx, spec, err)
	}
	return h.replayCharge(ctx, spec, rec, c)
}

// replayCharge answers c from rec, the outcome recorded under its key.
func (h *Handler) replayCharge(ctx context.Context, spec connect.Spec, rec ledger.KeyRecord, c ledger.Charge) (*connect.Response[paymentv1.ChargeResponse], error) {
	if !rec.Matches(ledger.OpCharge, c.Hash()) {
		return nil, keyReused()
	}
	if rec.DeclineReason != "" {
		return nil, declinedError(rec.DeclineReason)
	}
	p, err := h.payments.Payment(ctx, rec.PaymentID)
	if err != nil {
		return nil, h.internal(ctx, spec, err)
	}
	return connect.NewResponse(&paymentv1.ChargeResponse{Payment: toProto(p)}), nil
}

// Refund implements [paymentv1connect.PaymentServiceHandler.Refund].
//
// A refund whose key is recorded is answered with the payment as it is
// now, the provider not called again. Otherwise the provider gives back
// money of the payment's charge under [ProviderRefundKey] of the key (it
// works out "all that is left" itself when the request has no amount,
// refuses more than is left, and gives back at most once per key), then
// the refund is recorded in the ledger with what the provider gave back,
// serialized with the other refunds of the payment. A provider that
// does not answer leaves nothing recorded; a crash between the provider
// and the ledger leaves the refund at the provider only, until a retry
// with the key, which the provider answers with what it gave back the
// first time, records it.
func (h *Handler) Refund(ctx context.Context, req *connect.Request[paymentv1.RefundRequest]) (*connect.Response[paymentv1.RefundResponse], error) {
	r, err := refundFrom(req.Msg)
	if err != nil {
		return nil, err
	}
	rec, err := h.payments.Key(ctx, r.Key)
	switch {
	case err == nil:
		return h.replayRefund(ctx, req.Spec(), rec, r)
	case !errors.Is(err, ledger.ErrNotFound):
		return nil, h.internal(ctx, req.Spec(), err)
	}
	p, err := h.payments.Payment(ctx, r.PaymentID)
	switch {
	case errors.Is(err, ledger.ErrNotFound):
		return nil, paymentNotFound(r.PaymentID.String())
	case err != nil:
		return nil, h.internal(ctx, req.Spec(), err)
	}
	// No check of the amount against what the ledger says is left: the
	// provider, which gives back first, decides with its own books. A
	// retry racing a call with the same key that has just recorded the
	// refund gets what the provider gave back the first time, then finds
	// the key recorded and replays it.

	amount, err := h.provider.Refund(ctx, ProviderRefundKey(r.Key), p.ChargeKey, r.Amount)
	switch {
	case errors.Is(err, provider.ErrKeyReused):
		return nil, keyReused()
	case errors.Is(err, provider.ErrExceedsCharge):
		return nil, h.refundRefused(ctx, req.Spec(), r, ledger.ErrExceedsRefundable)
	case errors.Is(err, provider.ErrCurrencyMismatch):
		return nil, h.refundRefused(ctx, req.Spec(), r, ledger.ErrCurrencyMismatch)
	case errors.Is(err, provider.ErrUnknownCharge):
		// The ledger has a payment the provider never took: the books
		// disagree, which is for an operator to look at.
		return nil, h.internal(ctx, req.Spec(), fmt.Errorf("refund of payment %s: the provider has no charge under its key: %w", p.ID, err))
	case err != nil:
		return nil, h.providerError(ctx, req.Spec(), "refunding", err)
	}

	// The provider gave the money back: record it even if the caller has
	// gone meanwhile, so the ledger does not miss it.
	h.crash(CrashAfterProviderRefund)
	recordCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	p, err = h.payments.Refund(recordCtx, r, amount)
	switch {
	case errors.Is(err, ledger.ErrKeyRecorded):
		rec, err := h.payments.Key(ctx, r.Key)
		if err != nil {
			return nil, h.internal(ctx, req.Spec(), err)
		}
		return h.replayRefund(ctx, req.Spec(), rec, r)
	case err != nil:
		// The provider gave the money back and the ledger does not say
		// so. A retry with the key asks the provider again, which gives
		// back at most once per key, and records it then.
		return nil, h.internal(ctx, req.Spec(), fmt.Errorf("record a refund the provider made: %w", err))
	}
	h.crash(CrashAfterRefundRecord)
	return connect.NewResponse(&paymentv1.RefundResponse{Payment: toProto(p)}), nil
}

// refundRefused maps the refusal of r, for err, to its Connect error.
func (h *Handler) refundRefused(ctx context.Context, spec connect.Spec, r ledger.RefundRequest, err error) error {
	switch {
	case errors.Is(err, ledger.ErrCurrencyMismatch):
		return invalidArgument("amount.currency_code must be the currency of the charge")
	case errors.Is(err, ledger.ErrExceedsRefundable) && r.Amount == nil:
		return connect.NewError(connect.CodeFailedPrecondition, errors.New("the payment has nothing left to refund"))
	case errors.Is(err, ledger.ErrExceedsRefundable):
		return connect.NewError(connect.CodeFailedPrecondition, errors.New("amount exceeds what is left to refund of the payment"))
	default:
		return h.internal(ctx, spec, err)
	}
}

// replayRefund answers r from rec, the outcome recorded under its key.
func (h *Handler) replayRefund(ctx context.Context, spec connect.Spec, rec ledger.KeyRecord, r ledger.RefundRequest) (*connect.Response[paymentv1.RefundResponse], error) {
	if !rec.Matches(ledger.OpRefund, r.Hash()) {
		return nil, keyReused()
	}
	p, err := h.payments.Payment(ctx, rec.PaymentID)
	if err != nil {
		return nil, h.internal(ctx, spec, err)
	}
	return connect.NewResponse(&paymentv1.RefundResponse{Payment: toProto(p)}), nil
}

// GetPayment implements [paymentv1connect.PaymentServiceHandler.GetPayment].
func (h *Handler) GetPayment(ctx context.Context, req *connect.Request[paymentv1.GetPaymentRequest]) (*connect.Response[paymentv1.GetPaymentResponse], error) {
	raw := req.Msg.GetPaymentId()
	if raw == "" {
		return nil, invalidArgument("payment_id is required")
	}
	id, err := uuid.Parse(raw)
	if err != nil {
		return nil, paymentNotFound(raw)
	}
	p, err := h.payments.Payment(ctx, id)
	switch {
	case errors.Is(err, ledger.ErrNotFound):
		return nil, paymentNotFound(raw)
	case err != nil:
		return nil, h.internal(ctx, req.Spec(), err)
	}
	if err := auth.RequireOwner(ctx, p.UserID.String(), "payment "+raw); err != nil {
		return nil, err
	}
	return connect.NewResponse(&paymentv1.GetPaymentResponse{Payment: toProto(p)}), nil
}

// chargeFrom checks a ChargeRequest field by field.
func chargeFrom(m *paymentv1.ChargeRequest) (ledger.Charge, error) {
	if err := checkKey(m.GetIdempotencyKey()); err != nil {
		return ledger.Charge{}, err
	}
	if n := utf8.RuneCountInString(m.GetOrderId()); n < 1 || n > maxIDLen {
		return ledger.Charge{}, invalidArgument(fmt.Sprintf("order_id must be 1 to %d characters", maxIDLen))
	}
	user, err := uuid.Parse(m.GetUserId())
	if err != nil {
		return ledger.Charge{}, invalidArgument("user_id must be a UUID")
	}
	amount, err := moneyFrom("amount", m.GetAmount())
	if err != nil {
		return ledger.Charge{}, err
	}
	return ledger.Charge{Key: m.GetIdempotencyKey(), OrderID: m.GetOrderId(), UserID: user, Amount: amount}, nil
}

// refundFrom checks a RefundRequest field by field.
func refundFrom(m *paymentv1.RefundRequest) (ledger.RefundRequest, error) {
	if err := checkKey(m.GetIdempotencyKey()); err != nil {
		return ledger.RefundRequest{}, err
	}
	raw := m.GetPaymentId()
	if n := utf8.RuneCountInString(raw); n < 1 || n > maxIDLen {
		return ledger.RefundRequest{}, invalidArgument(fmt.Sprintf("payment_id must be 1 to %d characters", maxIDLen))
	}
	id, err := uuid.Parse(raw)
	if err != nil {
		return ledger.RefundRequest{}, paymentNotFound(raw)
	}
	if utf8.RuneCountInString(m.GetReason()) > maxReasonLen {
		return ledger.RefundRequest{}, invalidArgument(fmt.Sprintf("reason must be at most %d characters", maxReasonLen))
	}
	r := ledger.RefundRequest{Key: m.GetIdempotencyKey(), PaymentID: id, Reason: m.GetReason()}
	if m.GetAmount() != nil {
		amount, err := moneyFrom("amount", m.GetAmount())
		if err != nil {
			return ledger.RefundRequest{}, err
		}
		r.Amount = &amount
	}
	return r, nil
}

func checkKey(key string) error {
	if n := utf8.RuneCountInString(key); n < minKeyLen || n > maxKeyLen {
		return invalidArgument(fmt.Sprintf("idempotency_key must be %d to %d characters", minKeyLen, maxKeyLen))
	}
	return nil
}

// moneyFrom checks an amount of money, which must be more than zero.
func moneyFrom(field string, m *moneyv1.Money) (ledger.Money, error) {
	switch {
	case m == nil:
		return ledger.Money{}, invalidArgument(field + " is required")
	case !currencyCode.MatchString(m.GetCurrencyCode()):
		return ledger.Money{}, invalidArgument(field + ".currency_code must be an ISO 4217 code such as USD")
	case m.GetAmountMinor() <= 0:
		return ledger.Money{}, invalidArgument(field + " must be more than zero")
	}
	return ledger.Money{Currency: m.GetCurrencyCode(), Minor: m.GetAmountMinor()}, nil
}

// providerError maps a provider that did not answer while doing (e.g.
// "charging"): the caller's own deadline or cancellation as such,
// anything else as unavailable.
func (h *Handler) providerError(ctx context.Context, spec connect.Spec, doing string, err error) error {
	switch {
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return connect.NewError(connect.CodeDeadlineExceeded, fmt.Errorf("deadline exceeded while %s; retry with the same idempotency_key", doing))
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return connect.NewError(connect.CodeCanceled, fmt.Errorf("canceled while %s", doing))
	}
	h.logger.WarnContext(ctx, "payment service: provider did not answer",
		slog.String("procedure", spec.Procedure),
		slog.Any("error", err))
	return connect.NewError(connect.CodeUnavailable, errors.New("payment provider unavailable; retry with the same idempotency_key"))
}

// internal logs err and returns a Connect error that says nothing about it.
func (h *Handler) internal(ctx context.Context, spec connect.Spec, err error) error {
	h.logger.ErrorContext(ctx, "payment service: internal error",
		slog.String("procedure", spec.Procedure),
		slog.Any("error", err))
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

func declinedError(reason string) error {
	err := connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("charge declined: %s", reason))
	if detail, derr := connect.NewErrorDetail(&paymentv1.PaymentDeclined{Reason: reason}); derr == nil {
		err.AddDetail(detail)
	}
	return err
}

func keyReused() error {
	return invalidArgument("idempotency_key was already used with a different request")
}

func paymentNotFound(id string) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf("payment %q not found", id))
}

func invalidArgument(msg string) error {
	return connect.NewError(connect.CodeInvalidArgument, errors.New(msg))
}

func toProto(p ledger.Payment) *paymentv1.Payment {
	out := &paymentv1.Payment{
		PaymentId:  p.ID.String(),
		OrderId:    p.OrderID,
		UserId:     p.UserID.String(),
		Amount:     toMoney(p.Amount),
		Refunded:   toMoney(ledger.Money{Currency: p.Amount.Currency, Minor: p.Refunded}),
		Status:     toStatus(p.Status()),
		CreateTime: timestamppb.New(p.CreateTime),
		Refunds:    make([]*paymentv1.Refund, len(p.Refunds)),
	}
	for i, r := range p.Refunds {
		out.Refunds[i] = &paymentv1.Refund{
			RefundId:   r.ID.String(),
			Amount:     toMoney(r.Amount),
			Reason:     r.Reason,
			CreateTime: timestamppb.New(r.CreateTime),
		}
	}
	return out
}

func toMoney(m ledger.Money) *moneyv1.Money {
	return &moneyv1.Money{CurrencyCode: m.Currency, AmountMinor: m.Minor}
}

func toStatus(s ledger.Status) paymentv1.PaymentStatus {
	switch s {
	case ledger.Captured:
		return paymentv1.PaymentStatus_PAYMENT_STATUS_CAPTURED
	case ledger.PartiallyRefunded:
		return paymentv1.PaymentStatus_PAYMENT_STATUS_PARTIALLY_REFUNDED
	case ledger.Refunded:
		return paymentv1.PaymentStatus_PAYMENT_STATUS_REFUNDED
	default:
		return paymentv1.PaymentStatus_PAYMENT_STATUS_UNSPECIFIED
	}
}
