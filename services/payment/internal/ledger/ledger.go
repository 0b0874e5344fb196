// Package ledger is the payment service's domain: what a payment, a refund
// and an amount of money are, the requests that move money, the errors the
// use cases speak in, and the [Repository] that records payments and the
// ledger of their money movements. It depends on no database and no
// transport; the store implements Repository, the handler adapts RPCs to
// it.
package ledger

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
)

// Domain errors. Callers compare with [errors.Is]; the repository wraps them
// with context.
var (
	// ErrNotFound means no payment, or no idempotency key, matches the one
	// asked for.
	ErrNotFound = errors.New("not found")
	// ErrKeyRecorded means another request recorded its outcome under the
	// idempotency key first: nothing was written, and the caller replays
	// what [Repository.Key] now returns.
	ErrKeyRecorded = errors.New("idempotency key already recorded")
	// ErrCurrencyMismatch means a refund is in another currency than its
	// charge.
	ErrCurrencyMismatch = errors.New("currency differs from the charge's")
	// ErrExceedsRefundable means a refund asks for more than is left to
	// refund of its payment (nothing at all, when the payment is fully
	// refunded).
	ErrExceedsRefundable = errors.New("amount exceeds what is left to refund")
)

// Money is an amount in the minor unit of a currency (cents for USD), so
// arithmetic stays exact.
type Money struct {
	// Currency is an ISO 4217 code such as "USD".
	Currency string
	// Minor is the amount in minor units.
	Minor int64
}

// Status is where a payment is in its life.
type Status int

// The statuses of a payment, from what was refunded of it.
const (
	// Captured means the money was taken and nothing given back.
	Captured Status = iota + 1
	// PartiallyRefunded means part of the money was given back.
	PartiallyRefunded
	// Refunded means all of the money was given back.
	Refunded
)

// Payment is one captured charge and what was refunded of it.
type Payment struct {
	// ID is the payment's identifier.
	ID uuid.UUID
	// OrderID is the order the charge pays for.
	OrderID string
	// ChargeKey is the idempotency key of the charge, under which the
	// payment provider took the money: its reference for refunds.
	ChargeKey string
	// UserID is who paid.
	UserID uuid.UUID
	// Amount is what was charged.
	Amount Money
	// Refunded is what was given back so far, in Amount's currency: the
	// sum of Refunds.
	Refunded int64
	// CreateTime is when the charge was captured.
	CreateTime time.Time
	// Refunds are the refunds of the payment, oldest first.
	Refunds []Refund
}

// Status returns the payment's status, from what was refunded of it.
func (p Payment) Status() Status {
	switch {
	case p.Refunded <= 0:
		return Captured
	case p.Refunded < p.Amount.Minor:
		return PartiallyRefunded
	default:
		return Refunded
	}
}

// Refund is money given back from a payment: one refund entry of the
// ledger.
type Refund struct {
	// ID is the refund's identifier, the id of its ledger entry.
	ID uuid.UUID
	// Amount is what was given back.
	Amount Money
	// Reason is what the caller said when asking for the refund.
	Reason string
	// CreateTime is when the refund was made.
	CreateTime time.Time
}

// Operation names the kind of request an idempotency key was used for.
type Operation string

// The operations that take an idempotency key.
const (
	// OpCharge is a Charge.
	OpCharge Operation = "charge"
	// OpRefund is a Refund.
	OpRefund Operation = "refund"
)

// KeyRecord is the outcome recorded under an idempotency key: the payment
// the request charged or refunded, or why its charge was declined.
type KeyRecord struct {
	// Key is the idempotency key.
	Key string
	// Operation is the kind of request first made with the key.
	Operation Operation
	// RequestHash identifies the request first made with the key (see
	// [Charge.Hash] and [RefundRequest.Hash]).
	RequestHash string
	// PaymentID is the payment charged or refunded; uuid.Nil when the
	// charge was declined.
	PaymentID uuid.UUID
	// DeclineReason is why the charge was declined; empty unless it was.
	DeclineReason string
}

// Matches reports whether the record was made by a request with the same
// operation and hash, that is, whether a request is a retry of the first
// one rather than a reuse of its key.
func (r KeyRecord) Matches(op Operation, hash string) bool {
	return r.Operation == op && r.RequestHash == hash
}

// Totals sums the ledger per currency.
type Totals struct {
	// Charged is the sum of the charge entries, in minor units.
	Charged int64
	// Refunded is the sum of the refund entries, in minor units.
	Refunded int64
	// Charges and Refunds count the entries of each kind.
	Charges, Refunds int
}

// Net returns the money the ledger holds: charged less refunded.
func (t Totals) Net() int64 { return t.Charged - t.Refunded }

// Repository records payments, their refunds and the ledger. Every money
// movement is written with its ledger entry and its idempotency key in one
// transaction. Implementations are safe for concurrent use.
type Repository interface {
	// Key returns the outcome recorded under an idempotency key, or an
	// error wrapping ErrNotFound.
	Key(ctx context.Context, key string) (KeyRecord, error)
	// Capture records a captured charge: the payment, its charge entry in
	// the ledger and its key, in one transaction. It returns an error
	// wrapping ErrKeyRecorded, having written nothing, when the key was
	// recorded first.
	Capture(ctx context.Context, c Charge) (Payment, error)
	// Decline records under its key that a charge was declined, for
	// reason. It returns an error wrapping ErrKeyRecorded when the key was
	// recorded first.
	Decline(ctx context.Context, c Charge, reason string) error
	// Refund records that amount, r's amount or all that was left of its
	// payment (see [RefundRequest.AmountOf]), was given back: the refund
	// entry in the ledger, the payment's refunded total and the key, in
	// one transaction, serialized with every other refund of the payment
	// so refunds never exceed the charge. It returns the payment after
	// the refund, or an error wrapping ErrKeyRecorded (nothing written),
	// ErrNotFound (no such payment), ErrCurrencyMismatch or
	// ErrExceedsRefundable (amount is more than is left now).
	Refund(ctx context.Context, r RefundRequest, amount Money) (Payment, error)
	// Payment returns a payment with its refunds, or an error wrapping
	// ErrNotFound.
	Payment(ctx context.Context, id uuid.UUID) (Payment, error)
	// Totals sums the whole ledger per currency, to reconcile it with
	// what callers believe they charged and refunded.
	Totals(ctx context.Context) (map[string]Totals, error)
}
