// Package account is the user service's domain: what an account is, the
// errors the use cases speak in, and the [Repository] that stores accounts.
// It depends on no database and no transport; the store implements
// Repository, the handler adapts RPCs to it.
package account

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Domain errors. Callers compare with [errors.Is]; the repository wraps them
// with context.
var (
	// ErrNotFound means no account matches the id or email asked for.
	ErrNotFound = errors.New("account not found")
	// ErrEmailTaken means another account already uses the email,
	// compared without regard to case.
	ErrEmailTaken = errors.New("email is already registered")
	// ErrBadCredentials means the email or the password did not match. It
	// deliberately does not say which.
	ErrBadCredentials = errors.New("invalid email or password")
)

// User is an account as the domain sees it.
type User struct {
	// ID is the account's stable identifier.
	ID uuid.UUID
	// Email is the login address, normalized by [NormalizeEmail].
	Email string
	// PasswordHash is the encoded password hash. It never leaves the
	// service.
	PasswordHash string
	// DisplayName is the name shown to other people.
	DisplayName string
	// CreateTime is when the account was registered.
	CreateTime time.Time
	// UpdateTime is when the account last changed.
	UpdateTime time.Time
}

// NewUser is what it takes to create an account; the repository assigns
// the id and the times.
type NewUser struct {
	// Email is the login address; the repository normalizes it.
	Email string
	// PasswordHash is the already encoded password hash.
	PasswordHash string
	// DisplayName is the name shown to other people.
	DisplayName string
}

// Cursor is a position in the list of accounts ordered by creation time,
// then id: [Repository.List] returns accounts strictly after it.
type Cursor struct {
	// CreateTime is the creation time of the last account seen.
	CreateTime time.Time
	// ID is the id of the last account seen, breaking ties in CreateTime.
	ID uuid.UUID
}

// Page is one page of accounts.
type Page struct {
	// Users on this page, oldest first.
	Users []User
	// Next is the cursor to pass to fetch the following page, or nil when
	// this page is the last.
	Next *Cursor
}

// Repository stores accounts. Implementations are safe for concurrent use
// and compare emails without regard to case.
type Repository interface {
	// Create stores a new account and returns it. It returns an error
	// wrapping ErrEmailTaken when the email is in use.
	Create(ctx context.Context, u NewUser) (User, error)
	// GetByID returns the account with the id, or an error wrapping
	// ErrNotFound.
	GetByID(ctx context.Context, id uuid.UUID) (User, error)
	// GetByEmail returns the account with the email, or an error wrapping
	// ErrNotFound.
	GetByEmail(ctx context.Context, email string) (User, error)
	// UpdateDisplayName changes an account's display name and returns the
	// account as changed, or an error wrapping ErrNotFound.
	UpdateDisplayName(ctx context.Context, id uuid.UUID, displayName string) (User, error)
	// List returns up to pageSize accounts ordered by (CreateTime, ID),
	// starting after the cursor, or from the first account when after is
	// nil.
	List(ctx context.Context, pageSize int, after *Cursor) (Page, error)
}

// NormalizeEmail returns the form emails are stored and compared in:
// trimmed and lower-cased.
func NormalizeEmail(email string) string {
	return strings.ToLower(strings.TrimSpace(email))
}
