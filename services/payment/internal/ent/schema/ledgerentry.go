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

// LedgerEntry is one movement of money: a charge taken from a user or a
// refund given back. The ledger is the truth: the money a payment holds is
// the sum of its charge entries less the sum of its refund entries. Entries
// are only ever added, never changed.
type LedgerEntry struct {
	ent.Schema
}

// Fields of the LedgerEntry.
func (LedgerEntry) Fields() []ent.Field {
	return []ent.Field{
		// id is also the refund_id of a refund entry.
		field.UUID("id", uuid.UUID{}).
			Default(uuid.New).
			Immutable(),
		field.Enum("kind").
			Values("charge", "refund").
			Immutable(),
		// idempotency_key is the key of the request that moved the money:
		// unique, so no key ever moves money twice.
		field.String("idempotency_key").
			NotEmpty().
			MaxLen(128).
			Immutable(),
		field.UUID("payment_id", uuid.UUID{}).
			Immutable(),
		field.Int64("amount_minor").
			Positive().
			Immutable(),
		field.String("currency").
			MinLen(3).
			MaxLen(3).
			Immutable(),
		field.String("reason").
			MaxLen(500).
			Default("").
			Immutable(),
		// request_hash is the SHA-256, hex, of the request that moved the
		// money, to tell a retry from a reuse of its key.
		field.String("request_hash").
			NotEmpty().
			Immutable(),
		field.Time("create_time").
			Default(time.Now).
			Immutable(),
	}
}

// Edges of the LedgerEntry.
func (LedgerEntry) Edges() []ent.Edge {
	return []ent.Edge{
		edge.From("payment", Payment.Type).
			Ref("entries").
			Field("payment_id").
			Unique().
			Required().
			Immutable(),
	}
}

// Indexes of the LedgerEntry.
func (LedgerEntry) Indexes() []ent.Index {
	return []ent.Index{
		index.Fields("idempotency_key").Unique(),
		// A payment's refunds are read oldest first.
		index.Fields("payment_id", "create_time"),
	}
}

// Annotations of the LedgerEntry: its invariants, held by the database.
func (LedgerEntry) Annotations() []schema.Annotation {
	return []schema.Annotation{
		entsql.Checks(map[string]string{
			"ledger_entry_kind":   "kind IN ('charge', 'refund')",
			"ledger_entry_amount": "amount_minor > 0",
		}),
	}
}
