// Package schema defines the user service's ent schemas.
package schema

import (
	"errors"
	"strings"
	"time"

	"entgo.io/ent"
	"entgo.io/ent/schema/field"
	"entgo.io/ent/schema/index"
	"github.com/google/uuid"
)

// User is an account. Its email is unique and stored lower-cased, so
// uniqueness holds regardless of case on every database.
type User struct {
	ent.Schema
}

// Fields of the User.
func (User) Fields() []ent.Field {
	return []ent.Field{
		field.UUID("id", uuid.UUID{}).
			Default(uuid.New).
			Immutable(),
		field.String("email").
			MaxLen(254).
			NotEmpty().
			Validate(lowerCase),
		field.String("password_hash").
			NotEmpty().
			Sensitive(),
		field.String("display_name").
			MaxLen(64),
		field.Time("create_time").
			Default(time.Now).
			Immutable(),
		field.Time("update_time").
			Default(time.Now).
			UpdateDefault(time.Now),
	}
}

// Indexes of the User.
func (User) Indexes() []ent.Index {
	return []ent.Index{
		// Unique on the lower-cased email: the database, not a racy
		// read-then-write, decides who gets an address.
		index.Fields("email").Unique(),
		// Keyset pagination walks (create_time, id).
		index.Fields("create_time", "id"),
	}
}

// lowerCase rejects emails that were not normalized before storing, which
// would defeat the case-insensitive uniqueness.
func lowerCase(s string) error {
	if s != strings.ToLower(s) {
		return errors.New("email must be lower-cased before it is stored")
	}
	return nil
}
