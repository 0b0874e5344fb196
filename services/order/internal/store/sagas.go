package store

import (
	"context"
	stdsql "database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"entgo.io/ent/dialect"

	"github.com/keelplatform/keel/internal/saga"
	"github.com/keelplatform/keel/services/order/internal/ent"
	entorder "github.com/keelplatform/keel/services/order/internal/ent/order"
	"github.com/keelplatform/keel/services/order/internal/ent/schema"
	"github.com/keelplatform/keel/services/order/internal/ent/statuschange"
	"github.com/keelplatform/keel/services/order/internal/order"
)

// Sagas returns the store as the [saga.Store] of the place-order saga.
//
// Each method is one conditional statement on the sagas table, the very
// statement the [saga.Store] documentation shows (Create adds a SELECT
// when the id exists), and Create and Save write the order in the same
// transaction: Create inserts it PENDING with its first history entry,
// Save records the payment id once the saga state has one and moves the
// order to CONFIRMED (saga completed) or CANCELLED with the saga's reason
// (saga compensated), adding a history entry. Sagas of other definitions
// touch no order.
//
// Lease expiry is decided by the database's clock alone: PostgreSQL's
// now(), and on SQLite the 'now' of SQLite's date functions, the clock of
// the machine that holds the database file (every process sharing a
// SQLite file runs there). lease_expiry, created_at and updated_at are
// computed in the statements, never sent from a process's clock.
//
// On SQLite, the first statement of each transaction is its write (the
// conditional INSERT or UPDATE), which takes the write lock at once: a
// transaction that read first could not write after another writer
// committed (SQLITE_BUSY_SNAPSHOT).
func (s *Store) Sagas() saga.Store { return sagaStore{s} }

// sagaStore implements [saga.Store] on the sagas table.
type sagaStore struct{ s *Store }

var _ saga.Store = sagaStore{}

// sagaColumns are the columns of a saga record, in the order scanRecord
// reads them.
const sagaColumns = "id, definition, state, status, step, in_flight, reason, lease_owner, lease_expiry, version, created_at, updated_at"

// dialectSQL holds the saga statements of one database, with the
// database's clock written into them.
type dialectSQL struct {
	// ttl turns a lease TTL into the argument the statements' expiry
	// expression takes.
	ttl func(time.Duration) any

	create, get, unfinished, acquire, renew, save, release string
}

// dialectFor returns the saga statements of the ent dialect name.
func dialectFor(name string) (dialectSQL, error) {
	var now, expiry, live string
	var d dialectSQL
	rebind := func(q string) string { return q }
	switch name {
	case dialect.SQLite:
		// 'now' is stable within a statement. Times are written in one
		// fixed format, which the driver reads back as UTC; julianday
		// compares them as instants.
		now = `strftime('%Y-%m-%d %H:%M:%f', 'now')`
		expiry = `strftime('%Y-%m-%d %H:%M:%f', 'now', ?)`
		live = `julianday(lease_expiry) > julianday('now')`
		d.ttl = func(ttl time.Duration) any { return fmt.Sprintf("%+.3f seconds", ttl.Seconds()) }
	case dialect.Postgres:
		// now() is the start of the transaction, whose first statement
		// this is.
		now = `now()`
		expiry = `now() + (?::bigint * interval '1 microsecond')`
		live = `lease_expiry > now()`
		d.ttl = func(ttl time.Duration) any { return ttl.Microseconds() }
		rebind = func(q string) string {
			var b strings.Builder
			n := 0
			for _, r := range q {
				if r == '?' {
					n++
					b.WriteString("$" + strconv.Itoa(n))
					continue
				}
				b.WriteRune(r)
			}
			return b.String()
		}
	default:
		return dialectSQL{}, fmt.Errorf("saga store: unsupported dialect %q", name)
	}
	r := strings.NewReplacer("{now}", now, "{expiry}", expiry, "{live}", live, "{cols}", sagaColumns)
	q := func(s string) string { return rebind(r.Replace(s)) }
	// Arguments: id, definition, state, status, step, in_flight, reason,
	// lease_owner, ttl.
	d.create = q(`INSERT INTO sagas (` + sagaColumns + `)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, {expiry}, 1, {now}, {now})
		ON CONFLICT (id) DO NOTHING
		RETURNING {cols}`)
	// Arguments: id.
	d.get = q(`SELECT {cols} FROM sagas WHERE id = ?`)
	// Arguments: definition. The partial index sagas_unfinished serves it.
	d.unfinished = q(`SELECT {cols} FROM sagas
		WHERE definition = ? AND status IN ('running', 'compensating')
		ORDER BY created_at, id`)
	// Arguments: owner, ttl, id.
	d.acquire = q(`UPDATE sagas SET lease_owner = ?, lease_expiry = {expiry}, version = version + 1
		WHERE id = ? AND status IN ('running', 'compensating')
		  AND (lease_owner = '' OR lease_expiry IS NULL OR NOT ({live}))
		RETURNING {cols}`)
	// Arguments: ttl, id, owner.
	d.renew = q(`UPDATE sagas SET lease_expiry = {expiry}
		WHERE id = ? AND lease_owner = ? AND lease_owner <> '' AND {live}`)
	// Arguments: state, status, step, in_flight, reason, id, version,
	// owner.
	d.save = q(`UPDATE sagas SET state = ?, status = ?, step = ?, in_flight = ?, reason = ?,
		       version = version + 1, updated_at = {now}
		WHERE id = ? AND version = ? AND lease_owner = ? AND lease_owner <> '' AND {live}
		RETURNING {cols}`)
	// Arguments: id, owner.
	d.release = q(`UPDATE sagas SET lease_owner = '', lease_expiry = NULL
		WHERE id = ? AND lease_owner = ? AND lease_owner <> ''`)
	return d, nil
}

// Create implements [saga.Store.Create].
func (st sagaStore) Create(ctx context.Context, rec saga.Record, ttl time.Duration) (saga.Record, bool, error) {
	q := st.s.sql
	var stored saga.Record
	created := false
	err := st.s.inTx(ctx, func(tx *ent.Tx) error {
		rows, err := tx.QueryContext(ctx, q.create,
			rec.ID, rec.Definition, stateBytes(rec.State), string(rec.Status), rec.Step, rec.InFlight, rec.Reason,
			rec.LeaseOwner, q.ttl(ttl))
		if err != nil {
			return fmt.Errorf("insert saga: %w", err)
		}
		got, ok, err := scanOne(rows)
		if err != nil || !ok {
			return err // exists: nothing written
		}
		stored, created = got, true
		return applyOrder(ctx, tx, got, saga.Event{Kind: saga.Created, Step: -1})
	})
	if err != nil {
		return saga.Record{}, false, fmt.Errorf("saga store: create %s: %w", rec.ID, err)
	}
	if created {
		return stored, true, nil
	}
	stored, err = st.Get(ctx, rec.ID)
	return stored, false, err
}

// Get implements [saga.Store.Get].
func (st sagaStore) Get(ctx context.Context, id string) (saga.Record, error) {
	rows, err := st.s.client.QueryContext(ctx, st.s.sql.get, id)
	if err != nil {
		return saga.Record{}, fmt.Errorf("saga store: get %s: %w", id, err)
	}
	rec, ok, err := scanOne(rows)
	if err != nil {
		return saga.Record{}, fmt.Errorf("saga store: get %s: %w", id, err)
	}
	if !ok {
		return saga.Record{}, fmt.Errorf("saga store: %s: %w", id, saga.ErrNotFound)
	}
	return rec, nil
}

// Unfinished implements [saga.Store.Unfinished]. It returns the sagas
// oldest first.
func (st sagaStore) Unfinished(ctx context.Context, definition string) ([]saga.Record, error) {
	rows, err := st.s.client.QueryContext(ctx, st.s.sql.unfinished, definition)
	if err != nil {
		return nil, fmt.Errorf("saga store: list unfinished: %w", err)
	}
	defer rows.Close()
	var recs []saga.Record
	for rows.Next() {
		rec, err := scanRecord(rows)
		if err != nil {
			return nil, fmt.Errorf("saga store: list unfinished: %w", err)
		}
		recs = append(recs, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("saga store: list unfinished: %w", err)
	}
	return recs, nil
}

// Acquire implements [saga.Store.Acquire].
func (st sagaStore) Acquire(ctx context.Context, id, owner string, ttl time.Duration) (saga.Record, error) {
	q := st.s.sql
	rows, err := st.s.client.QueryContext(ctx, q.acquire, owner, q.ttl(ttl), id)
	if err != nil {
		return saga.Record{}, fmt.Errorf("saga store: acquire %s: %w", id, err)
	}
	rec, ok, err := scanOne(rows)
	if err != nil {
		return saga.Record{}, fmt.Errorf("saga store: acquire %s: %w", id, err)
	}
	if !ok {
		return saga.Record{}, fmt.Errorf("saga store: acquire %s for %s: %w", id, owner, saga.ErrNotAcquired)
	}
	return rec, nil
}

// Renew implements [saga.Store.Renew].
func (st sagaStore) Renew(ctx context.Context, id, owner string, ttl time.Duration) error {
	q := st.s.sql
	res, err := st.s.client.ExecContext(ctx, q.renew, q.ttl(ttl), id, owner)
	if err != nil {
		return fmt.Errorf("saga store: renew %s: %w", id, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("saga store: renew %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("saga store: renew %s for %s: %w", id, owner, saga.ErrLeaseLost)
	}
	return nil
}

// Save implements [saga.Store.Save].
func (st sagaStore) Save(ctx context.Context, rec saga.Record, ev saga.Event) (saga.Record, error) {
	var stored saga.Record
	err := st.s.inTx(ctx, func(tx *ent.Tx) error {
		rows, err := tx.QueryContext(ctx, st.s.sql.save,
			stateBytes(rec.State), string(rec.Status), rec.Step, rec.InFlight, rec.Reason,
			rec.ID, rec.Version, rec.LeaseOwner)
		if err != nil {
			return fmt.Errorf("update saga: %w", err)
		}
		got, ok, err := scanOne(rows)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("version %d for %s: %w", rec.Version, rec.LeaseOwner, saga.ErrLeaseLost)
		}
		stored = got
		return applyOrder(ctx, tx, got, ev)
	})
	if err != nil {
		return saga.Record{}, fmt.Errorf("saga store: save %s (%s): %w", rec.ID, ev.Kind, err)
	}
	return stored, nil
}

// Release implements [saga.Store.Release].
func (st sagaStore) Release(ctx context.Context, id, owner string) error {
	if _, err := st.s.client.ExecContext(ctx, st.s.sql.release, id, owner); err != nil {
		return fmt.Errorf("saga store: release %s: %w", id, err)
	}
	return nil
}

// applyOrder keeps the order of a place-order saga in step with the saga
// record rec that the transaction tx has just written, as ev says.
func applyOrder(ctx context.Context, tx *ent.Tx, rec saga.Record, ev saga.Event) error {
	if rec.Definition != order.Definition {
		return nil
	}
	var st order.State
	if err := json.Unmarshal(rec.State, &st); err != nil {
		return fmt.Errorf("decode place-order state: %w", err)
	}
	if ev.Kind == saga.Created {
		if st.OrderID != rec.ID {
			return fmt.Errorf("place-order saga %s carries order %s", rec.ID, st.OrderID)
		}
		t := timestamp(rec.CreatedAt)
		lines := make([]schema.Line, len(st.Lines))
		for i, l := range st.Lines {
			lines[i] = schema.Line{SKU: l.SKU, Quantity: l.Quantity, UnitPriceMinor: l.UnitPriceMinor}
		}
		err := tx.Order.Create().SetID(rec.ID).SetIdempotencyKey(st.IdempotencyKey).SetRequestHash(st.RequestHash).
			SetUserID(st.UserID).SetStatus(entorder.StatusPending).SetCurrency(st.Currency).
			SetTotalMinor(st.TotalMinor).SetLines(lines).SetCreateTime(t).SetUpdateTime(t).
			Exec(ctx)
		if err != nil {
			return fmt.Errorf("insert order: %w", err)
		}
		return addHistory(ctx, tx, rec.ID, order.Pending, "", t)
	}

	var next order.Status
	switch rec.Status {
	case saga.Completed:
		next = order.Confirmed
	case saga.Compensated:
		next = order.Cancelled
	}
	// Only the writes that end a step change the state.
	learned := st.PaymentID != "" && (ev.Kind == saga.StepDone || ev.Kind == saga.CompensationDone)
	if next == "" && !learned {
		return nil
	}
	t := timestamp(rec.UpdatedAt)
	u := tx.Order.Update().Where(entorder.ID(rec.ID), entorder.StatusEQ(entorder.StatusPending))
	if learned {
		u.SetPaymentID(st.PaymentID)
	}
	if next != "" {
		u.SetStatus(entorder.Status(next)).SetUpdateTime(t)
		if next == order.Cancelled {
			u.SetFailureReason(rec.Reason)
		}
	}
	n, err := u.Save(ctx)
	if err != nil {
		return fmt.Errorf("update order: %w", err)
	}
	if next == "" || n == 0 {
		return nil
	}
	reason := ""
	if next == order.Cancelled {
		reason = rec.Reason
	}
	return addHistory(ctx, tx, rec.ID, next, reason, t)
}

func addHistory(ctx context.Context, tx *ent.Tx, id string, s order.Status, reason string, t time.Time) error {
	err := tx.StatusChange.Create().SetOrderID(id).SetStatus(statuschange.Status(s)).SetReason(reason).SetTime(t).Exec(ctx)
	if err != nil {
		return fmt.Errorf("insert status change: %w", err)
	}
	return nil
}

// inTx runs fn in a transaction, committing when it returns nil. fn must
// write before it reads: on SQLite a transaction that reads first cannot
// then write once another has committed.
func (s *Store) inTx(ctx context.Context, fn func(tx *ent.Tx) error) error {
	tx, err := s.client.Tx(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// stateBytes never sends NULL for the NOT NULL state column.
func stateBytes(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// scanOne reads the first row of rows, if any, and closes them.
func scanOne(rows *stdsql.Rows) (saga.Record, bool, error) {
	defer rows.Close()
	if !rows.Next() {
		return saga.Record{}, false, rows.Err()
	}
	rec, err := scanRecord(rows)
	if err != nil {
		return saga.Record{}, false, err
	}
	return rec, true, rows.Close()
}

// scanRecord reads a row of [sagaColumns]. The drivers differ in what
// they hand back: PostgreSQL booleans and times; SQLite integers for
// booleans and, where it cannot tell a column's declared type (RETURNING),
// text for times.
func scanRecord(rows *stdsql.Rows) (saga.Record, error) {
	var (
		rec                        saga.Record
		status                     string
		inFlight, expiry, cat, uat any
	)
	if err := rows.Scan(&rec.ID, &rec.Definition, &rec.State, &status, &rec.Step, &inFlight, &rec.Reason,
		&rec.LeaseOwner, &expiry, &rec.Version, &cat, &uat); err != nil {
		return saga.Record{}, fmt.Errorf("scan saga: %w", err)
	}
	rec.Status = saga.Status(status)
	var err error
	if rec.InFlight, err = asBool(inFlight); err != nil {
		return saga.Record{}, fmt.Errorf("saga %s: in_flight: %w", rec.ID, err)
	}
	if expiry != nil {
		if rec.LeaseExpiry, err = asTime(expiry); err != nil {
			return saga.Record{}, fmt.Errorf("saga %s: lease_expiry: %w", rec.ID, err)
		}
	}
	if rec.CreatedAt, err = asTime(cat); err != nil {
		return saga.Record{}, fmt.Errorf("saga %s: created_at: %w", rec.ID, err)
	}
	if rec.UpdatedAt, err = asTime(uat); err != nil {
		return saga.Record{}, fmt.Errorf("saga %s: updated_at: %w", rec.ID, err)
	}
	return rec, nil
}

func asBool(v any) (bool, error) {
	switch v := v.(type) {
	case bool:
		return v, nil
	case int64:
		return v != 0, nil
	}
	return false, fmt.Errorf("unexpected %T", v)
}

// timeLayouts are the text forms of times SQLite hands back: the saga
// statements' own, and the driver's.
var timeLayouts = []string{"2006-01-02 15:04:05.999999999", "2006-01-02 15:04:05.999999999-07:00", time.RFC3339Nano}

func asTime(v any) (time.Time, error) {
	var s string
	switch v := v.(type) {
	case time.Time:
		return v.UTC(), nil
	case string:
		s = v
	case []byte:
		s = string(v)
	default:
		return time.Time{}, fmt.Errorf("unexpected %T", v)
	}
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("unparsable time %q", s)
}
