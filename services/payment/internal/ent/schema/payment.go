// Package schema defines the payment service's ent schemas: payments, the
// ledger of money movements and the idempotency keys of answered requests.
package schema

import (
	"time"

	"entgo.io/ent"
	"entgo.io/ent/dialect/entsql"
	"entgo.io/ent/schema"
	"entgo.io/ent/schema/edge"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/index"
	"github.com/google/uuid"
)

// Payment is one captured charge and how much of it was refunded. Its
// refunded_minor is kept with every refund in the transaction that writes
// the refund's ledger entry, so it always equals the sum of the payment's
// refund entries.
type Payment struct {
	ent.Schema
}

// Fields of the Payment.
func (Payment) Fields() []ent.Field {
	return []ent.Field{
		field.UUID("id", uuid.UUID{}).
			Default(uuid.New).
			Immutable(),
		field.String("order_id").
			NotEmpty().
			MaxLen(128).
			Immutable(),
		field.UUID("user_id", uuid.UUID{}).
			Immutable(),
		field.String("currency").
			MinLen(3).
			MaxLen(3).
			Immutable(),
		field.Int64("amount_minor").
			Positive().
			Immutable(),
		field.Int64("refunded_minor").
			NonNegative().
			Default(0),
		field.Time("create_time").
			Default(time.Now).
			Immutable(),
		field.Time("update_time").
			Default(time.Now).
			UpdateDefault(time.Now),
	}
}

// Edges of the Payment.
func (Payment) Edges() []ent.Edge {
	return []ent.Edge{
		edge.To("entries", LedgerEntry.Type),
	}
}

// Indexes of the Payment.
func (Payment) Indexes() []ent.Index {
	return []ent.Index{
		// Reconciling the ledger with orders looks payments up by order.
		index.Fields("order_id"),
	}
}

// Annotations of the Payment. The check holds in the database itself,
// whatever code writes to it: no payment is ever refunded more than it
// was charged.
func (Payment) Annotations() []schema.Annotation {
	return []schema.Annotation{
		entsql.Checks(map[string]string{
			"payment_amounts": "amount_minor > 0 AND refunded_minor >= 0 AND refunded_minor <= amount_minor",
		}),
	}
}
