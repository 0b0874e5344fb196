// Package store keeps the payment service's payments, its ledger and its
// idempotency keys in SQL through ent. It implements [ledger.Repository]
// on SQLite and PostgreSQL alike.
//
// The tables, which the platform's reconciliation may read directly:
//
//   - payments: one row per captured charge, with refunded_minor, the sum
//     of its refunds.
//   - ledger_entries: one row per money movement, kind 'charge' or
//     'refund', with its payment_id, amount_minor, currency, reason,
//     create_time, idempotency_key (unique) and request_hash. The money
//     held is the sum of the charges less the sum of the refunds.
//   - idempotency_keys: the outcome of every Charge and Refund answered,
//     by key: a payment, or a decline reason.
//
// Every write that moves money is one transaction holding the ledger
// entry, the payment's change and the idempotency key.
package store

import (
	"context"
	stdsql "database/sql"
	"errors"
	"fmt"
	"time"

	"entgo.io/ent/dialect/sql"
	"github.com/google/uuid"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/services/payment/internal/ent"
	"github.com/keelplatform/keel/services/payment/internal/ent/idempotencykey"
	"github.com/keelplatform/keel/services/payment/internal/ent/ledgerentry"
	"github.com/keelplatform/keel/services/payment/internal/ent/payment"
	"github.com/keelplatform/keel/services/payment/internal/ledger"
)

// Store is a [ledger.Repository] over ent. It is safe for concurrent use.
type Store struct {
	db     *database.DB
	client *ent.Client
}

var _ ledger.Repository = (*Store)(nil)

// Open opens the database cfg describes and applies the [Migrations] it
// has not applied yet (see [database.DB.Migrate]). It fails, and the
// service with it, if an applied migration was changed or is missing.
func Open(ctx context.Context, cfg database.Config) (*Store, error) {
	db, err := database.Open(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := db.Migrate(ctx, Migrations()); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: migrate schema on %s: %w", db.Dialect(), err)
	}
	return &Store{db: db, client: ent.NewClient(ent.Driver(db.Driver()))}, nil
}

// DefaultMaxOpenConns is the documented default of the service's
// database/max_open_conns.
const DefaultMaxOpenConns = database.DefaultMaxOpenConns

// SetMaxOpenConns bounds the database connections the store holds open at
// once; n <= 0 means no bound. Past the bound, a call waits for a free
// connection instead of opening one more. Without a bound, a burst of
// refunds of one payment, each holding a connection while it waits for the
// payment's row lock, would open as many connections as there are calls,
// past PostgreSQL's max_connections.
func (s *Store) SetMaxOpenConns(n int) {
	if d, ok := s.db.Driver().(interface{ DB() *stdsql.DB }); ok {
		d.DB().SetMaxOpenConns(n)
	}
}

// Close closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// Key implements [ledger.Repository.Key].
func (s *Store) Key(ctx context.Context, key string) (ledger.KeyRecord, error) {
	row, err := s.client.IdempotencyKey.Get(ctx, key)
	if err != nil {
		// The key is the caller's and may be anything: keep it out of
		// errors, which get logged.
		return ledger.KeyRecord{}, fmt.Errorf("store: get idempotency key: %w", notFound(err))
	}
	return toKeyRecord(row), nil
}

// Capture implements [ledger.Repository.Capture]. The transaction's first
// statement records the key, which is a write: on SQLite it takes the
// write lock at once, so the transaction never has to upgrade a read
// snapshot another writer made stale (SQLITE_BUSY_SNAPSHOT); on
// PostgreSQL a concurrent capture with the same key waits on it and then
// fails on the primary key.
func (s *Store) Capture(ctx context.Context, c ledger.Charge) (ledger.Payment, error) {
	now := timestamp(time.Now())
	id := uuid.New()
	hash := c.Hash()
	var p *ent.Payment
	err := s.inTx(ctx, func(tx *ent.Tx) error {
		if err := tx.IdempotencyKey.Create().
			SetID(c.Key).
			SetOperation(idempotencykey.OperationCharge).
			SetRequestHash(hash).
			SetPaymentID(id).
			SetCreateTime(now).
			Exec(ctx); err != nil {
			return keyError(err)
		}
		var err error
		p, err = tx.Payment.Create().
			SetID(id).
			SetOrderID(c.OrderID).
			SetUserID(c.UserID).
			SetCurrency(c.Amount.Currency).
			SetAmountMinor(c.Amount.Minor).
			SetCreateTime(now).
			SetUpdateTime(now).
			Save(ctx)
		if err != nil {
			return fmt.Errorf("create payment: %w", err)
		}
		if err := tx.LedgerEntry.Create().
			SetKind(ledgerentry.KindCharge).
			SetIdempotencyKey(c.Key).
			SetPaymentID(id).
			SetAmountMinor(c.Amount.Minor).
			SetCurrency(c.Amount.Currency).
			SetRequestHash(hash).
			SetCreateTime(now).
			Exec(ctx); err != nil {
			return fmt.Errorf("record charge in the ledger: %w", err)
		}
		return nil
	})
	if err != nil {
		return ledger.Payment{}, fmt.Errorf("store: capture charge: %w", err)
	}
	return toPayment(p, []*ent.LedgerEntry{{Kind: ledgerentry.KindCharge, IdempotencyKey: c.Key}}), nil
}

// Decline implements [ledger.Repository.Decline].
func (s *Store) Decline(ctx context.Context, c ledger.Charge, reason string) error {
	err := s.client.IdempotencyKey.Create().
		SetID(c.Key).
		SetOperation(idempotencykey.OperationCharge).
		SetRequestHash(c.Hash()).
		SetDeclineReason(reason).
		SetCreateTime(timestamp(time.Now())).
		Exec(ctx)
	if err != nil {
		return fmt.Errorf("store: record decline: %w", keyError(err))
	}
	return nil
}

// Refund implements [ledger.Repository.Refund]. The transaction starts by
// writing the payment's row (its update_time), which locks the row on
// PostgreSQL until the transaction ends, as SELECT ... FOR UPDATE would,
// and takes the write lock on SQLite: refunds of one payment run one after
// the other, each reading what the one before left to refund. The update
// of refunded_minor is conditional as well, and the database's CHECK
// refuses a refunded_minor above amount_minor: three guards against a
// refund exceeding its charge.
func (s *Store) Refund(ctx context.Context, r ledger.RefundRequest, amount ledger.Money) (ledger.Payment, error) {
	now := timestamp(time.Now())
	hash := r.Hash()
	var p *ent.Payment
	err := s.inTx(ctx, func(tx *ent.Tx) error {
		locked, err := tx.Payment.Update().
			Where(payment.ID(r.PaymentID)).
			SetUpdateTime(now).
			Save(ctx)
		if err != nil {
			return fmt.Errorf("lock payment: %w", err)
		}
		// Under the lock, a concurrent request with this key has either
		// committed (seen here) or not recorded the key yet.
		switch _, err := tx.IdempotencyKey.Get(ctx, r.Key); {
		case err == nil:
			return ledger.ErrKeyRecorded
		case !ent.IsNotFound(err):
			return fmt.Errorf("get idempotency key: %w", err)
		}
		if locked == 0 {
			return ledger.ErrNotFound
		}
		p, err = tx.Payment.Get(ctx, r.PaymentID)
		if err != nil {
			return fmt.Errorf("get payment: %w", err)
		}
		if r.Amount != nil && *r.Amount != amount {
			return fmt.Errorf("refund of %d %s differs from the %d %s asked for", amount.Minor, amount.Currency, r.Amount.Minor, r.Amount.Currency)
		}
		if amount.Currency != p.Currency {
			return ledger.ErrCurrencyMismatch
		}
		if amount.Minor <= 0 || amount.Minor > p.AmountMinor-p.RefundedMinor {
			return ledger.ErrExceedsRefundable
		}
		if err := tx.IdempotencyKey.Create().
			SetID(r.Key).
			SetOperation(idempotencykey.OperationRefund).
			SetRequestHash(hash).
			SetPaymentID(p.ID).
			SetCreateTime(now).
			Exec(ctx); err != nil {
			return keyError(err)
		}
		if err := tx.LedgerEntry.Create().
			SetKind(ledgerentry.KindRefund).
			SetIdempotencyKey(r.Key).
			SetPaymentID(p.ID).
			SetAmountMinor(amount.Minor).
			SetCurrency(p.Currency).
			SetReason(r.Reason).
			SetRequestHash(hash).
			SetCreateTime(now).
			Exec(ctx); err != nil {
			return fmt.Errorf("record refund in the ledger: %w", err)
		}
		n, err := tx.Payment.Update().
			Where(payment.ID(p.ID), payment.RefundedMinorLTE(p.AmountMinor-amount.Minor)).
			AddRefundedMinor(amount.Minor).
			Save(ctx)
		if err != nil {
			return fmt.Errorf("add refund to payment: %w", err)
		}
		if n != 1 {
			// Unreachable while the row is locked; if it is not, refusing
			// beats refunding twice.
			return ledger.ErrExceedsRefundable
		}
		return nil
	})
	if err != nil {
		return ledger.Payment{}, fmt.Errorf("store: refund payment %s: %w", r.PaymentID, err)
	}
	return s.Payment(ctx, r.PaymentID)
}

// Payment implements [ledger.Repository.Payment].
func (s *Store) Payment(ctx context.Context, id uuid.UUID) (ledger.Payment, error) {
	row, err := s.client.Payment.Query().
		Where(payment.ID(id)).
		WithEntries(func(q *ent.LedgerEntryQuery) {
			q.Order(ledgerentry.ByCreateTime(), ledgerentry.ByID())
		}).
		Only(ctx)
	if err != nil {
		return ledger.Payment{}, fmt.Errorf("store: get payment %s: %w", id, notFound(err))
	}
	return toPayment(row, row.Edges.Entries), nil
}

// Totals implements [ledger.Repository.Totals].
func (s *Store) Totals(ctx context.Context) (map[string]ledger.Totals, error) {
	var rows []struct {
		Currency string `json:"currency"`
		Kind     string `json:"kind"`
		Sum      int64  `json:"sum"`
		Count    int    `json:"count"`
	}
	err := s.client.LedgerEntry.Query().
		GroupBy(ledgerentry.FieldCurrency, ledgerentry.FieldKind).
		Aggregate(
			func(sel *sql.Selector) string {
				return sql.As(sql.Sum(sel.C(ledgerentry.FieldAmountMinor)), "sum")
			},
			ent.Count(),
		).
		Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("store: sum the ledger: %w", err)
	}
	totals := map[string]ledger.Totals{}
	for _, r := range rows {
		t := totals[r.Currency]
		switch ledgerentry.Kind(r.Kind) {
		case ledgerentry.KindCharge:
			t.Charged, t.Charges = r.Sum, r.Count
		case ledgerentry.KindRefund:
			t.Refunded, t.Refunds = r.Sum, r.Count
		}
		totals[r.Currency] = t
	}
	return totals, nil
}

// inTx runs fn in a transaction, committing if it returns nil.
func (s *Store) inTx(ctx context.Context, fn func(tx *ent.Tx) error) error {
	tx, err := s.client.Tx(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		if rbErr := tx.Rollback(); rbErr != nil {
			return errors.Join(err, fmt.Errorf("rollback: %w", rbErr))
		}
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// keyError turns the unique violation of a key recorded first into
// [ledger.ErrKeyRecorded].
func keyError(err error) error {
	if database.IsUniqueViolation(err) {
		return ledger.ErrKeyRecorded
	}
	return fmt.Errorf("record idempotency key: %w", err)
}

// timestamp normalizes a time to what both databases store exactly: UTC,
// microseconds (PostgreSQL's precision), no monotonic clock reading.
func timestamp(t time.Time) time.Time {
	return t.UTC().Truncate(time.Microsecond)
}

func notFound(err error) error {
	if ent.IsNotFound(err) {
		return ledger.ErrNotFound
	}
	return err
}

func toKeyRecord(row *ent.IdempotencyKey) ledger.KeyRecord {
	r := ledger.KeyRecord{
		Key:         row.ID,
		Operation:   ledger.Operation(row.Operation),
		RequestHash: row.RequestHash,
	}
	if row.PaymentID != nil {
		r.PaymentID = *row.PaymentID
	}
	if row.DeclineReason != nil {
		r.DeclineReason = *row.DeclineReason
	}
	return r
}

// toPayment returns the payment of row, with its charge's key and its
// refunds from entries, the payment's ledger entries in order.
func toPayment(row *ent.Payment, entries []*ent.LedgerEntry) ledger.Payment {
	p := ledger.Payment{
		ID:         row.ID,
		OrderID:    row.OrderID,
		UserID:     row.UserID,
		Amount:     ledger.Money{Currency: row.Currency, Minor: row.AmountMinor},
		Refunded:   row.RefundedMinor,
		CreateTime: timestamp(row.CreateTime),
	}
	for _, e := range entries {
		if e.Kind == ledgerentry.KindCharge {
			p.ChargeKey = e.IdempotencyKey
			continue
		}
		p.Refunds = append(p.Refunds, ledger.Refund{
			ID:         e.ID,
			Amount:     ledger.Money{Currency: e.Currency, Minor: e.AmountMinor},
			Reason:     e.Reason,
			CreateTime: timestamp(e.CreateTime),
		})
	}
	return p
}
