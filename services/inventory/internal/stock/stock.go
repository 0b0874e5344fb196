// Package stock is the inventory's domain: items and the reservations that
// hold their stock back, with the errors the store reports.
package stock

import (
	"errors"
	"fmt"
	"time"
)

// Item is a product and its stock.
type Item struct {
	SKU         string
	Name        string
	Description string
	// Currency is the ISO 4217 code of PriceMinor.
	Currency string
	// PriceMinor is the price of one unit in minor units.
	PriceMinor int64
	// Available can still be reserved.
	Available int64
	// Reserved is held by reservations neither committed nor released.
	Reserved int64
	// Committed was sold.
	Committed  int64
	UpdateTime time.Time
}

// Line is a quantity of one item.
type Line struct {
	SKU      string
	Quantity int64
}

// State is where a reservation is in its life.
type State string

// Reservation states.
const (
	Held      State = "held"
	Committed State = "committed"
	Released  State = "released"
)

// Reservation is stock held back under a caller's id.
type Reservation struct {
	ID         string
	State      State
	Lines      []Line
	ExpireTime time.Time
}

// Errors the store reports.
var (
	// ErrNotFound: no item with the sku, or no reservation with the id.
	ErrNotFound = errors.New("not found")
	// ErrExists: CreateItem with a sku already in the catalogue.
	ErrExists = errors.New("sku already exists")
	// ErrWrongState: committing a released reservation, or releasing a
	// committed one.
	ErrWrongState = errors.New("reservation is in the wrong state")
	// ErrConflict: a reservation id reused with other lines.
	ErrConflict = errors.New("reservation id already used with other lines")
)

// InsufficientError says which line of a reservation could not be held.
type InsufficientError struct {
	SKU       string
	Requested int64
	Available int64
}

func (e *InsufficientError) Error() string {
	return fmt.Sprintf("not enough stock of %s: %d requested, %d available", e.SKU, e.Requested, e.Available)
}
