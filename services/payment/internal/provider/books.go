package provider

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/services/payment/internal/ledger"
)

// BooksName is the base name of the [Books] file in its directory:
// <dir>/payment-provider.db.
const BooksName = "payment-provider"

// booksFiles holds the books' schema migrations (SQLite only: the books
// are always a file of their own).
//
//go:embed books/sqlite/*.sql
var booksFiles embed.FS

// Books are a provider's own record of the money it moved, kept apart
// from the payment service's ledger as an outside provider's are: every
// charge by its key (taken, with what was refunded of it, or declined)
// and every refund by its key. They live in a SQLite file of their own,
// <dir>/payment-provider.db, each change committed before the provider
// answers, so they survive the payment process being killed at any
// point; processes sharing the directory share the books. Books are safe
// for concurrent use, by several processes too.
type Books struct {
	db  *database.DB
	sql *sql.DB
}

// OpenBooks opens the books in dir, creating them if missing.
func OpenBooks(ctx context.Context, dir string) (*Books, error) {
	db, err := database.Open(ctx, database.Config{Driver: database.DriverSQLite, DataDir: dir, Name: BooksName})
	if err != nil {
		return nil, fmt.Errorf("provider books: %w", err)
	}
	migrations, err := fs.Sub(booksFiles, "books")
	if err == nil {
		err = db.Migrate(ctx, migrations)
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("provider books: migrate: %w", err)
	}
	raw, ok := db.Driver().(interface{ DB() *sql.DB })
	if !ok {
		_ = db.Close()
		return nil, errors.New("provider books: the database driver gives no *sql.DB")
	}
	return &Books{db: db, sql: raw.DB()}, nil
}

// Close closes the books.
func (b *Books) Close() error {
	if err := b.db.Close(); err != nil {
		return fmt.Errorf("provider books: %w", err)
	}
	return nil
}

// charge records the outcome of the first charge under key: taken when
// declineReason is empty, else declined. A key already recorded keeps
// its first outcome, which charge returns, or [ErrKeyReused] when it was
// recorded for another user or amount. The record is one statement:
// concurrent charges with one key record one outcome.
func (b *Books) charge(ctx context.Context, key, userID string, amount ledger.Money, declineReason string) error {
	res, err := b.sql.ExecContext(ctx,
		`INSERT INTO charges (key, user_id, currency, amount_minor, decline_reason, create_time)
		 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING`,
		key, userID, amount.Currency, amount.Minor, declineReason, now())
	if err != nil {
		return fmt.Errorf("provider books: record charge: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("provider books: record charge: %w", err)
	} else if n == 1 {
		return outcome(declineReason)
	}
	// The key was charged before: answer as the first time.
	var first ChargeRecord
	err = b.sql.QueryRowContext(ctx,
		`SELECT user_id, currency, amount_minor, decline_reason FROM charges WHERE key = ?`, key).
		Scan(&first.UserID, &first.Amount.Currency, &first.Amount.Minor, &first.DeclineReason)
	if err != nil {
		return fmt.Errorf("provider books: read charge: %w", err)
	}
	if first.UserID != userID || first.Amount != amount {
		return ErrKeyReused
	}
	return outcome(first.DeclineReason)
}

// outcome is the answer to a charge recorded with declineReason.
func outcome(declineReason string) error {
	if declineReason != "" {
		return &Declined{Reason: declineReason}
	}
	return nil
}

// refund gives back requested of the charge under chargeKey, or all that
// is left of it when requested is nil, under key, in one transaction:
// the charge's refunded total rises, conditionally on staying within the
// charge, and the refund is recorded. It returns what was given back. A
// key already recorded changes nothing: refund returns what was given
// back under it when it was recorded for the same charge and request,
// [ErrKeyReused] otherwise.
func (b *Books) refund(ctx context.Context, key, chargeKey string, requested *ledger.Money) (ledger.Money, error) {
	tx, err := b.sql.BeginTx(ctx, nil)
	if err != nil {
		return ledger.Money{}, fmt.Errorf("provider books: begin refund: %w", err)
	}
	amount, err := refundIn(ctx, tx, key, chargeKey, requested)
	if err != nil {
		_ = tx.Rollback()
		if errors.Is(err, errRepeat) {
			return amount, nil
		}
		return ledger.Money{}, err
	}
	if err := tx.Commit(); err != nil {
		return ledger.Money{}, fmt.Errorf("provider books: commit refund: %w", err)
	}
	return amount, nil
}

// refundIn is refund in tx. Its first statement is a write to the
// charge's row, which takes SQLite's write lock at once: refunds run one
// after the other, each seeing the ones before.
func refundIn(ctx context.Context, tx *sql.Tx, key, chargeKey string, requested *ledger.Money) (ledger.Money, error) {
	if _, err := tx.ExecContext(ctx, `UPDATE charges SET refunded_minor = refunded_minor WHERE key = ?`, chargeKey); err != nil {
		return ledger.Money{}, fmt.Errorf("provider books: lock charge: %w", err)
	}
	var (
		first     RefundRecord
		firstAsks sql.NullInt64
	)
	switch err := tx.QueryRowContext(ctx, `SELECT charge_key, currency, requested_minor, amount_minor FROM refunds WHERE key = ?`, key).
		Scan(&first.ChargeKey, &first.Amount.Currency, &firstAsks, &first.Amount.Minor); {
	case err == nil:
		// Refunded before under this key: nothing more moves.
		if first.ChargeKey != chargeKey || !sameRequest(requested, first.Amount.Currency, firstAsks) {
			return ledger.Money{}, ErrKeyReused
		}
		return first.Amount, errRepeat
	case !errors.Is(err, sql.ErrNoRows):
		return ledger.Money{}, fmt.Errorf("provider books: read refund: %w", err)
	}

	var c ChargeRecord
	switch err := tx.QueryRowContext(ctx,
		`SELECT currency, amount_minor, decline_reason, refunded_minor FROM charges WHERE key = ?`, chargeKey).
		Scan(&c.Amount.Currency, &c.Amount.Minor, &c.DeclineReason, &c.Refunded); {
	case errors.Is(err, sql.ErrNoRows):
		return ledger.Money{}, ErrUnknownCharge
	case err != nil:
		return ledger.Money{}, fmt.Errorf("provider books: read charge: %w", err)
	case c.DeclineReason != "":
		return ledger.Money{}, ErrUnknownCharge
	}
	left := c.Amount.Minor - c.Refunded
	amount := ledger.Money{Currency: c.Amount.Currency, Minor: left}
	var asks sql.NullInt64
	if requested != nil {
		if requested.Currency != c.Amount.Currency {
			return ledger.Money{}, ErrCurrencyMismatch
		}
		amount.Minor = requested.Minor
		asks = sql.NullInt64{Int64: requested.Minor, Valid: true}
	}
	if amount.Minor <= 0 || amount.Minor > left {
		return ledger.Money{}, ErrExceedsCharge
	}
	res, err := tx.ExecContext(ctx,
		`UPDATE charges SET refunded_minor = refunded_minor + ? WHERE key = ? AND refunded_minor + ? <= amount_minor`,
		amount.Minor, chargeKey, amount.Minor)
	if err != nil {
		return ledger.Money{}, fmt.Errorf("provider books: refund charge: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return ledger.Money{}, fmt.Errorf("provider books: refund charge: %w", err)
	} else if n != 1 {
		// Unreachable under the write lock; refusing beats refunding
		// twice.
		return ledger.Money{}, ErrExceedsCharge
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO refunds (key, charge_key, currency, requested_minor, amount_minor, create_time) VALUES (?, ?, ?, ?, ?, ?)`,
		key, chargeKey, amount.Currency, asks, amount.Minor, now()); err != nil {
		return ledger.Money{}, fmt.Errorf("provider books: record refund: %w", err)
	}
	return amount, nil
}

// sameRequest reports whether requested, a refund's amount (nil: all that
// is left), is what a refund recorded in currency with asks asked for.
func sameRequest(requested *ledger.Money, currency string, asks sql.NullInt64) bool {
	if requested == nil {
		return !asks.Valid
	}
	return asks.Valid && requested.Minor == asks.Int64 && requested.Currency == currency
}

// errRepeat marks a refund whose key was recorded for the same request:
// the transaction is rolled back and the caller answered with what was
// given back the first time.
var errRepeat = errors.New("refund repeated")

// ChargeRecord is a charge in a provider's books.
type ChargeRecord struct {
	// Key is the charge's idempotency key.
	Key string
	// UserID is who was charged.
	UserID string
	// Amount is what was charged (or asked for, when declined).
	Amount ledger.Money
	// DeclineReason is why the charge was declined, nothing taken; empty
	// for a charge taken.
	DeclineReason string
	// Refunded is what was given back of the charge, in minor units of
	// its currency: the sum of its refunds.
	Refunded int64
}

// RefundRecord is a refund in a provider's books.
type RefundRecord struct {
	// Key is the refund's idempotency key.
	Key string
	// ChargeKey is the key of the charge refunded.
	ChargeKey string
	// Amount is what was given back.
	Amount ledger.Money
}

// Statement is everything a provider's books hold, to reconcile them with
// the payment service's ledger.
type Statement struct {
	// Charges are the charges, taken or declined, by key.
	Charges map[string]ChargeRecord
	// Refunds are the refunds, by key.
	Refunds map[string]RefundRecord
}

// Statement returns what the books hold now.
func (b *Books) Statement(ctx context.Context) (Statement, error) {
	return statement(ctx, b.sql)
}

// ReadStatement reads the books in dir, read-only, without opening them
// for a provider: for audits of a payment service that runs, or was
// killed. It fails if dir holds no books.
func ReadStatement(ctx context.Context, dir string) (Statement, error) {
	path := filepath.Join(dir, BooksName+".db")
	if _, err := os.Stat(path); err != nil {
		return Statement{}, fmt.Errorf("provider books: %w", err)
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		return Statement{}, fmt.Errorf("provider books: open %s: %w", path, err)
	}
	defer db.Close()
	return statement(ctx, db)
}

func statement(ctx context.Context, db *sql.DB) (Statement, error) {
	s := Statement{Charges: map[string]ChargeRecord{}, Refunds: map[string]RefundRecord{}}
	rows, err := db.QueryContext(ctx, `SELECT key, user_id, currency, amount_minor, decline_reason, refunded_minor FROM charges`)
	if err != nil {
		return Statement{}, fmt.Errorf("provider books: read charges: %w", err)
	}
	for rows.Next() {
		var c ChargeRecord
		if err := rows.Scan(&c.Key, &c.UserID, &c.Amount.Currency, &c.Amount.Minor, &c.DeclineReason, &c.Refunded); err != nil {
			_ = rows.Close()
			return Statement{}, fmt.Errorf("provider books: read charges: %w", err)
		}
		s.Charges[c.Key] = c
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return Statement{}, fmt.Errorf("provider books: read charges: %w", err)
	}
	rows, err = db.QueryContext(ctx, `SELECT key, charge_key, currency, amount_minor FROM refunds`)
	if err != nil {
		return Statement{}, fmt.Errorf("provider books: read refunds: %w", err)
	}
	for rows.Next() {
		var r RefundRecord
		if err := rows.Scan(&r.Key, &r.ChargeKey, &r.Amount.Currency, &r.Amount.Minor); err != nil {
			_ = rows.Close()
			return Statement{}, fmt.Errorf("provider books: read refunds: %w", err)
		}
		s.Refunds[r.Key] = r
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return Statement{}, fmt.Errorf("provider books: read refunds: %w", err)
	}
	return s, nil
}

// now is the time recorded with a change, as UTC RFC 3339 text.
func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }
