package schema

import (
	"time"

	"entgo.io/ent"
	"entgo.io/ent/dialect/entsql"
	"entgo.io/ent/schema"
	"entgo.io/ent/schema/field"
	"github.com/google/uuid"
)

// IdempotencyKey records the outcome of a Charge or Refund under the
// caller's idempotency key, so that a retry gets the first outcome: the
// payment the request made or changed, or the reason its charge was
// declined. The key is the primary key: whatever the outcome, at most one
// request ever wins a key, on every database.
type IdempotencyKey struct {
	ent.Schema
}

// Fields of the IdempotencyKey.
func (IdempotencyKey) Fields() []ent.Field {
	return []ent.Field{
		// id is the idempotency key itself.
		field.String("id").
			NotEmpty().
			MaxLen(128).
			Immutable(),
		field.Enum("operation").
			Values("charge", "refund").
			Immutable(),
		// request_hash is the SHA-256, hex, of the request first made with
		// the key.
		field.String("request_hash").
			NotEmpty().
			Immutable(),
		// payment_id is the payment charged or refunded; nil when the charge
		// was declined.
		field.UUID("payment_id", uuid.UUID{}).
			Optional().
			Nillable().
			Immutable(),
		// decline_reason is why the charge was declined; nil unless it was.
		field.String("decline_reason").
			Optional().
			Nillable().
			Immutable(),
		field.Time("create_time").
			Default(time.Now).
			Immutable(),
	}
}

// Annotations of the IdempotencyKey: a key records a payment or a decline,
// never both, never neither.
func (IdempotencyKey) Annotations() []schema.Annotation {
	return []schema.Annotation{
		entsql.Checks(map[string]string{
			"idempotency_key_outcome": "payment_id IS NOT NULL AND decline_reason IS NULL OR payment_id IS NULL AND decline_reason IS NOT NULL",
		}),
	}
}
