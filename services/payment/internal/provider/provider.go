// Package provider is the payment service's side of a payment provider,
// the outside party that actually takes money from users and gives it
// back: the [Provider] interface the handler charges and refunds
// through, the errors it answers with, and [Simulator], the built-in
// provider driven by settings, which keeps its own [Books].
package provider

import (
	"context"
	"errors"

	"github.com/keelplatform/keel/services/payment/internal/ledger"
)

// Provider takes money from users and gives it back. Implementations are
// safe for concurrent use.
//
// Both operations are by idempotency key, as a real provider's API is:
// the provider moves money at most once per key, however often it is
// called with it (the service calls it again for a key, concurrently
// even, until an outcome is recorded in its ledger), and answers a
// repeated key with the outcome of its first call.
type Provider interface {
	// Charge takes amount from the user userID under the idempotency key
	// key, which is also the charge's reference for [Provider.Refund].
	//
	// Charge returns nil when the money was taken, an error wrapping a
	// [*Declined] when the provider refuses the charge for good, one
	// wrapping [ErrKeyReused] when key was first used for another
	// request, and any other error, such as [ErrUnavailable], when the
	// provider did not answer: the charge may be tried again with the
	// same key.
	Charge(ctx context.Context, key, userID string, amount ledger.Money) error
	// Refund gives back amount of the charge made under chargeKey, or all
	// that is left of it when amount is nil, under the idempotency key
	// key (a namespace of its own: a refund key never names a charge),
	// and returns what it gave back. A repeated key returns what the
	// first call gave back, even when less is left now.
	//
	// Refund returns an error wrapping [ErrKeyReused] when key was first
	// used for another refund (another charge or amount),
	// [ErrUnknownCharge] when no charge was taken under chargeKey,
	// [ErrCurrencyMismatch] when amount is in another currency than the
	// charge, or [ErrExceedsCharge] when the charge has less left than
	// amount (or nothing), all for good; any other error, such as
	// [ErrUnavailable], when the provider did not answer: the refund may
	// be tried again with the same key.
	Refund(ctx context.Context, key, chargeKey string, amount *ledger.Money) (ledger.Money, error)
}

// ErrUnavailable means the provider did not answer; trying again with the
// same key may succeed.
var ErrUnavailable = errors.New("payment provider unavailable")

// Errors of a provider that refuses a request for good: trying again with
// the same key gets the same answer.
var (
	// ErrKeyReused means the idempotency key was first used for a
	// request with other parameters (another user, amount or charge).
	ErrKeyReused = errors.New("idempotency key was used for another request")
	// ErrUnknownCharge means a refund names no charge the provider took
	// (none under that key, or one it declined).
	ErrUnknownCharge = errors.New("no charge taken under that key")
	// ErrCurrencyMismatch means a refund is in another currency than its
	// charge.
	ErrCurrencyMismatch = errors.New("refund currency differs from the charge's")
	// ErrExceedsCharge means a refund asks for more than is left of its
	// charge: refunds never exceed what was charged.
	ErrExceedsCharge = errors.New("refund exceeds what is left of the charge")
)

// Declined is a charge the provider refused for good: trying again with
// the same key gets the same answer.
type Declined struct {
	// Reason is a stable, machine-readable reason such as
	// [ReasonAmountOverLimit].
	Reason string
}

// Reasons a [Declined] may give.
const (
	// ReasonAmountOverLimit declines a charge larger than the provider
	// takes at once.
	ReasonAmountOverLimit = "amount_over_limit"
	// ReasonUserBlocked declines every charge of a user.
	ReasonUserBlocked = "user_blocked"
)

// Error says the charge was declined and why.
func (d *Declined) Error() string { return "charge declined: " + d.Reason }
