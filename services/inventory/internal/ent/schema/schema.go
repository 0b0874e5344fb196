// Package schema defines the inventory service's ent schemas: items with
// their stock, reservations holding stock back, and the request ids that
// make CreateItem and RestockItem idempotent.
package schema

import (
	"time"

	"entgo.io/ent"
	"entgo.io/ent/dialect/entsql"
	"entgo.io/ent/schema"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/index"
)

// Item is a product in the catalogue and its stock. Stock is kept in three
// counters that only move between each other (or grow on restock), so
// available + reserved + committed is every unit ever stocked.
type Item struct {
	ent.Schema
}

// Annotations of the Item: the database itself refuses stock going
// negative, so a bug cannot oversell.
func (Item) Annotations() []schema.Annotation {
	return []schema.Annotation{
		entsql.Checks(map[string]string{
			"item_stock_nonnegative": "available >= 0 AND reserved >= 0 AND committed >= 0",
		}),
	}
}

// Fields of the Item.
func (Item) Fields() []ent.Field {
	return []ent.Field{
		// id is the sku.
		field.String("id").MaxLen(64).NotEmpty().Immutable(),
		field.String("name").MaxLen(200),
		field.String("description").MaxLen(4000),
		field.String("currency").MaxLen(3),
		field.Int64("price_minor"),
		// available can still be reserved.
		field.Int64("available"),
		// reserved is held by reservations neither committed nor released.
		field.Int64("reserved").Default(0),
		// committed was sold: reservations made final.
		field.Int64("committed").Default(0),
		field.Time("create_time").Default(time.Now).Immutable(),
		field.Time("update_time").Default(time.Now).UpdateDefault(time.Now),
	}
}

// Reservation is stock held back under a caller's id.
type Reservation struct {
	ent.Schema
}

// Line is a quantity of one item held by a reservation.
type Line struct {
	SKU      string `json:"sku"`
	Quantity int64  `json:"quantity"`
}

// Fields of the Reservation.
func (Reservation) Fields() []ent.Field {
	return []ent.Field{
		// id is the reservation id the caller chose.
		field.String("id").MaxLen(128).NotEmpty().Immutable(),
		field.Enum("state").Values("held", "committed", "released"),
		field.JSON("lines", []Line{}).Immutable(),
		// expire_time is when a reservation still held is released.
		field.Time("expire_time"),
		field.Time("create_time").Default(time.Now).Immutable(),
		field.Time("update_time").Default(time.Now).UpdateDefault(time.Now),
	}
}

// Indexes of the Reservation.
func (Reservation) Indexes() []ent.Index {
	return []ent.Index{
		// The expiry sweep looks for held reservations past their time.
		index.Fields("state", "expire_time"),
	}
}

// Request records a CreateItem or RestockItem request id once done, so a
// retry of it does nothing more.
type Request struct {
	ent.Schema
}

// Fields of the Request.
func (Request) Fields() []ent.Field {
	return []ent.Field{
		field.String("id").MaxLen(128).NotEmpty().Immutable(),
		field.Enum("kind").Values("create", "restock").Immutable(),
		field.String("sku").MaxLen(64).Immutable(),
		field.Int64("quantity").Immutable(),
		field.Time("create_time").Default(time.Now).Immutable(),
	}
}
