// Package schema defines the order service's ent schemas: orders with
// their status history, and the sagas that place them (the table the
// internal/saga package documents).
package schema

import (
	"entgo.io/ent"
	"entgo.io/ent/schema/edge"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/index"
)

// Order is a user's order. Its status follows the saga of the same id,
// written in the same transaction as the saga's row.
type Order struct {
	ent.Schema
}

// Line is one line of an order as stored: a quantity of an item at the
// unit price the catalogue had when the order was placed.
type Line struct {
	SKU            string `json:"sku"`
	Quantity       int64  `json:"quantity"`
	UnitPriceMinor int64  `json:"unit_price_minor"`
}

// Fields of the Order.
func (Order) Fields() []ent.Field {
	return []ent.Field{
		// id is the order id, which is also the id of its saga.
		field.String("id").MaxLen(36).NotEmpty().Immutable(),
		// idempotency_key is the PlaceOrder key: one order per user and key.
		field.String("idempotency_key").MaxLen(128).NotEmpty().Immutable(),
		// request_hash is a hash of the PlaceOrder request, to refuse
		// the key with another request.
		field.String("request_hash").MaxLen(64).NotEmpty().Immutable(),
		field.String("user_id").MaxLen(36).NotEmpty().Immutable(),
		field.Enum("status").Values("pending", "confirmed", "cancelled"),
		field.String("currency").MaxLen(3).Immutable(),
		field.Int64("total_minor").Immutable(),
		field.JSON("lines", []Line{}).Immutable(),
		// payment_id is the charge's payment, once captured.
		field.String("payment_id").MaxLen(128).Default(""),
		// failure_reason says why a cancelled order was cancelled.
		field.Text("failure_reason").Default(""),
		// create_time is when the saga was created, by the database's
		// clock.
		field.Time("create_time").Immutable(),
		// update_time is when the status last changed, by the
		// database's clock.
		field.Time("update_time"),
	}
}

// Edges of the Order.
func (Order) Edges() []ent.Edge {
	return []ent.Edge{
		edge.To("history", StatusChange.Type),
	}
}

// Indexes of the Order.
func (Order) Indexes() []ent.Index {
	return []ent.Index{
		// The database, not a racy read-then-write, keeps one order per
		// key.
		index.Fields("user_id", "idempotency_key").Unique(),
		// ListOrders walks a user's orders by (create_time, id), newest
		// first.
		index.Fields("user_id", "create_time", "id"),
	}
}

// StatusChange is one entry of an order's status history.
type StatusChange struct {
	ent.Schema
}

// Fields of the StatusChange.
func (StatusChange) Fields() []ent.Field {
	return []ent.Field{
		field.String("order_id").MaxLen(36).NotEmpty().Immutable(),
		field.Enum("status").Values("pending", "confirmed", "cancelled").Immutable(),
		field.Text("reason").Default("").Immutable(),
		field.Time("time").Immutable(),
	}
}

// Edges of the StatusChange.
func (StatusChange) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("order", Order.Type).Ref("history").Field("order_id").Unique().Required().Immutable(),
	}
}

// Indexes of the StatusChange.
func (StatusChange) Indexes() []ent.Index {
	return []ent.Index{
		// An order's history is read in order.
		index.Fields("order_id", "time"),
	}
}

// Saga is one saga's record, as internal/saga documents the table. Its
// rows are written only by the saga store's conditional statements;
// lease_expiry, created_at and updated_at come from the database's clock.
type Saga struct {
	ent.Schema
}

// Fields of the Saga.
func (Saga) Fields() []ent.Field {
	return []ent.Field{
		field.String("id").MaxLen(128).NotEmpty().Immutable(),
		field.String("definition"),
		// state is the saga's state, encoded as JSON.
		field.Bytes("state"),
		// status is running, compensating, completed or compensated.
		field.String("status"),
		field.Int("step"),
		field.Bool("in_flight"),
		field.Text("reason"),
		// lease_owner is "" when nobody holds the lease.
		field.String("lease_owner"),
		field.Time("lease_expiry").Optional().Nillable(),
		field.Int64("version"),
		field.Time("created_at").Immutable(),
		field.Time("updated_at"),
	}
}

// Indexes of the Saga.
func (Saga) Indexes() []ent.Index {
	return []ent.Index{
		// Recovery lists the unfinished sagas of a definition. The saga
		// package's table has a partial index (WHERE status IN ...) for
		// it; ent's schema cannot hold one predicate that both databases
		// keep as written (PostgreSQL rewrites it, and the schema check
		// compares the text), so this index has the status instead.
		index.Fields("definition", "status").StorageKey("sagas_unfinished"),
	}
}
