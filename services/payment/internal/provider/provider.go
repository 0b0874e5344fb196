// Package provider is the payment service's side of a payment provider,
// the outside party that actually takes money from users: the [Provider]
// interface the handler charges through, the errors it answers with, and
// [Simulator], the built-in provider driven by settings.
package provider

import (
	"context"
	"errors"

	"github.com/keelplatform/keel/services/payment/internal/ledger"
)

// Provider takes money from users. Implementations are safe for
// concurrent use.
type Provider interface {
	// Charge takes amount from the user userID. key is the caller's
	// idempotency key: a provider charges at most once per key, however
	// often Charge is called with it (the service may call it again for a
	// key, concurrently even, until an outcome is recorded).
	//
	// Charge returns nil when the money was taken, an error wrapping a
	// [*Declined] when the provider refuses the charge for good, and any
	// other error, such as [ErrUnavailable], when the provider did not
	// answer: the charge may be tried again with the same key.
	Charge(ctx context.Context, key, userID string, amount ledger.Money) error
}

// ErrUnavailable means the provider did not answer; trying again with the
// same key may succeed.
var ErrUnavailable = errors.New("payment provider unavailable")

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
