package ledger

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strconv"

	"github.com/google/uuid"
)

// Charge is a request to take money from a user for an order.
type Charge struct {
	// Key is the caller's idempotency key.
	Key string
	// OrderID is the order the charge pays for.
	OrderID string
	// UserID is who pays.
	UserID uuid.UUID
	// Amount is what to take; more than zero.
	Amount Money
}

// Hash identifies the request, its key aside: two charges have the same
// hash exactly when they charge the same user the same amount for the
// same order.
func (c Charge) Hash() string {
	return hash(string(OpCharge), c.OrderID, c.UserID.String(), c.Amount.Currency, strconv.FormatInt(c.Amount.Minor, 10))
}

// RefundRequest is a request to give back money from a payment.
type RefundRequest struct {
	// Key is the caller's idempotency key.
	Key string
	// PaymentID is the payment to refund.
	PaymentID uuid.UUID
	// Amount is what to give back, in the charge's currency; nil gives back
	// all that is left.
	Amount *Money
	// Reason is kept in the ledger with the refund.
	Reason string
}

// Hash identifies the request, its key aside. A refund without an amount
// and one for the amount it would refund are different requests.
func (r RefundRequest) Hash() string {
	amount := []string{"all"}
	if r.Amount != nil {
		amount = []string{r.Amount.Currency, strconv.FormatInt(r.Amount.Minor, 10)}
	}
	return hash(append([]string{string(OpRefund), r.PaymentID.String(), r.Reason}, amount...)...)
}

// hash returns the hex SHA-256 of fields, each prefixed with its length so
// that no two lists of fields encode alike.
func hash(fields ...string) string {
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	for _, f := range fields {
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(f)))])
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil))
}
