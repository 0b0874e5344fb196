// Package order holds the order service's domain: orders, their lines and
// status history, the state of the place-order saga that drives an order
// to its end, and the rules that tie an order to its PlaceOrder request
// (its id and request hash, both derived from the request).
package order

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Definition is the name of the place-order saga in the saga store.
const Definition = "place-order"

// Status is where an order stands.
type Status string

// The statuses of an order. An order is Pending while its saga runs
// (compensating included) and ends Confirmed or Cancelled.
const (
	// Pending: the place-order saga is under way.
	Pending Status = "pending"
	// Confirmed: the saga completed: stock committed, payment captured.
	Confirmed Status = "confirmed"
	// Cancelled: the saga was compensated: nothing is reserved or
	// charged; the order's failure reason says why.
	Cancelled Status = "cancelled"
)

// ErrNotFound is returned for an order that does not exist.
var ErrNotFound = errors.New("order not found")

// Line is a quantity of one item at the catalogue's unit price when the
// order was placed.
type Line struct {
	SKU            string `json:"sku"`
	Quantity       int64  `json:"quantity"`
	UnitPriceMinor int64  `json:"unit_price_minor"`
}

// StatusChange is one entry of an order's history.
type StatusChange struct {
	Status Status
	Reason string
	Time   time.Time
}

// Order is an order as the store holds it.
type Order struct {
	ID             string
	IdempotencyKey string
	// RequestHash is [RequestHash] of the PlaceOrder request.
	RequestHash   string
	UserID        string
	Status        Status
	Currency      string
	TotalMinor    int64
	Lines         []Line
	PaymentID     string
	FailureReason string
	CreateTime    time.Time
	UpdateTime    time.Time
	// History is the status history, oldest first.
	History []StatusChange
}

// State is the state of a place-order saga: the order as placed, and what
// the steps learn (the payment id). The saga store creates the order row
// from it, in the transaction that creates the saga.
type State struct {
	OrderID        string `json:"order_id"`
	IdempotencyKey string `json:"idempotency_key"`
	RequestHash    string `json:"request_hash"`
	UserID         string `json:"user_id"`
	Currency       string `json:"currency"`
	Lines          []Line `json:"lines"`
	TotalMinor     int64  `json:"total_minor"`
	// PaymentID is the payment the charge-payment step captured (or that
	// its compensation found under the step's key).
	PaymentID string `json:"payment_id,omitempty"`
}

// Requested is a line as the caller asked for it: unit prices the caller
// sends are ignored, so they are not part of the request.
type Requested struct {
	SKU      string
	Quantity int64
}

// idNamespace is the UUID namespace of order ids (a random UUID, fixed
// forever: changing it changes the id of every key).
var idNamespace = uuid.MustParse("3b0f5a54-8c1e-4f7a-9a59-2f0c6d3e8b17")

// ID returns the id of the order a user places under a PlaceOrder
// idempotency key: a name-based UUID (version 5) of the two. Keys are the
// user's own (two users may both pick "order-1"); every call by the user
// with the key, in any instance, names the same order and the same saga,
// so the saga store's create-once is what makes PlaceOrder idempotent.
// The key itself (up to 128 characters) would make saga step keys longer
// than the payment contract's 128.
func ID(userID, idempotencyKey string) string {
	return uuid.NewSHA1(idNamespace, []byte(userID+"\x00"+idempotencyKey)).String()
}

// RequestHash returns a hash of a PlaceOrder request: its user and its
// lines (sku and quantity, in sku order, so the order of the lines does
// not matter). The idempotency key is not part of it: the hash tells
// whether a second request under one key asks for the same thing.
func RequestHash(userID string, lines []Requested) string {
	sorted := slices.Clone(lines)
	slices.SortFunc(sorted, func(a, b Requested) int { return strings.Compare(a.SKU, b.SKU) })
	h := sha256.New()
	field := func(s string) {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(s))))
		h.Write([]byte(s))
	}
	field("order-request-v1")
	field(userID)
	for _, l := range sorted {
		field(l.SKU)
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(l.Quantity)))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Cursor is a position in a user's orders, newest first: the create time
// and id of the last order of a page.
type Cursor struct {
	CreateTime time.Time
	ID         uuid.UUID
}
