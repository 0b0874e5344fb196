// Package store keeps the inventory in its own database through ent:
// SQLite by default, PostgreSQL by DSN, with versioned migrations applied
// at start. Every change to stock is one transaction whose conditional
// updates let the database decide who gets the last unit: concurrent
// reservations never oversell, on either database.
package store

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"slices"
	"time"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/services/inventory/internal/ent"
	"github.com/keelplatform/keel/services/inventory/internal/ent/item"
	"github.com/keelplatform/keel/services/inventory/internal/ent/request"
	"github.com/keelplatform/keel/services/inventory/internal/ent/reservation"
	"github.com/keelplatform/keel/services/inventory/internal/ent/schema"
	"github.com/keelplatform/keel/services/inventory/internal/stock"
)

// Store is the inventory's database. It is safe for concurrent use.
type Store struct {
	db     *database.DB
	client *ent.Client
}

// Open opens the database cfg describes and applies the [Migrations] it
// has not applied yet.
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

// Close closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// now is the time stored in rows: UTC to the microsecond, which both
// databases keep exactly.
func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

// inTx runs fn in a transaction, committing when it returns nil. fn must
// write before it reads: on SQLite a transaction that reads first cannot
// then write once another has committed.
func (s *Store) inTx(ctx context.Context, fn func(tx *ent.Tx) error) error {
	tx, err := s.client.Tx(ctx)
	if err != nil {
		return fmt.Errorf("store: begin: %w", err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}

// CreateItem adds an item with its initial stock, once per request id: a
// second call with the same id returns the item the first one created.
func (s *Store) CreateItem(ctx context.Context, requestID string, it stock.Item) (stock.Item, error) {
	err := s.inTx(ctx, func(tx *ent.Tx) error {
		if err := recordRequest(ctx, tx, requestID, request.KindCreate, it.SKU, it.Available); err != nil {
			return err
		}
		t := now()
		err := tx.Item.Create().SetID(it.SKU).SetName(it.Name).SetDescription(it.Description).
			SetCurrency(it.Currency).SetPriceMinor(it.PriceMinor).SetAvailable(it.Available).
			SetCreateTime(t).SetUpdateTime(t).Exec(ctx)
		if database.IsUniqueViolation(err) {
			return stock.ErrExists
		}
		if err != nil {
			return fmt.Errorf("store: create item: %w", err)
		}
		return nil
	})
	if errors.Is(err, errDone) {
		// The request was done before: answer as it did.
		return s.replay(ctx, requestID)
	}
	if err != nil {
		return stock.Item{}, err
	}
	return s.GetItem(ctx, it.SKU)
}

// errDone is returned inside a transaction whose request id was recorded
// by an earlier call.
var errDone = errors.New("request already done")

// recordRequest records a request id as the transaction's first write,
// or returns errDone when it was recorded before.
func recordRequest(ctx context.Context, tx *ent.Tx, id string, kind request.Kind, sku string, quantity int64) error {
	err := tx.Request.Create().SetID(id).SetKind(kind).SetSku(sku).SetQuantity(quantity).SetCreateTime(now()).Exec(ctx)
	if database.IsUniqueViolation(err) {
		return errDone
	}
	if err != nil {
		return fmt.Errorf("store: record request: %w", err)
	}
	return nil
}

// replay returns the item a recorded request was about.
func (s *Store) replay(ctx context.Context, requestID string) (stock.Item, error) {
	r, err := s.client.Request.Get(ctx, requestID)
	if err != nil {
		return stock.Item{}, fmt.Errorf("store: read request %s: %w", requestID, err)
	}
	return s.GetItem(ctx, r.Sku)
}

// Restock adds quantity to an item's stock, once per request id.
func (s *Store) Restock(ctx context.Context, requestID, sku string, quantity int64) (stock.Item, error) {
	err := s.inTx(ctx, func(tx *ent.Tx) error {
		if err := recordRequest(ctx, tx, requestID, request.KindRestock, sku, quantity); err != nil {
			return err
		}
		n, err := tx.Item.Update().Where(item.ID(sku)).AddAvailable(quantity).SetUpdateTime(now()).Save(ctx)
		if err != nil {
			return fmt.Errorf("store: restock %s: %w", sku, err)
		}
		if n == 0 {
			return stock.ErrNotFound
		}
		return nil
	})
	if errors.Is(err, errDone) {
		return s.replay(ctx, requestID)
	}
	if err != nil {
		return stock.Item{}, err
	}
	return s.GetItem(ctx, sku)
}

// GetItem returns the item with the sku.
func (s *Store) GetItem(ctx context.Context, sku string) (stock.Item, error) {
	row, err := s.client.Item.Get(ctx, sku)
	if ent.IsNotFound(err) {
		return stock.Item{}, stock.ErrNotFound
	}
	if err != nil {
		return stock.Item{}, fmt.Errorf("store: get item %s: %w", sku, err)
	}
	return toItem(row), nil
}

// ListItems returns up to size items ordered by sku, after the sku given
// (none: from the start), and whether more follow.
func (s *Store) ListItems(ctx context.Context, size int, after string) ([]stock.Item, bool, error) {
	q := s.client.Item.Query().Order(ent.Asc(item.FieldID)).Limit(size + 1)
	if after != "" {
		q = q.Where(item.IDGT(after))
	}
	rows, err := q.All(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("store: list items: %w", err)
	}
	more := len(rows) > size
	if more {
		rows = rows[:size]
	}
	items := make([]stock.Item, len(rows))
	for i, r := range rows {
		items[i] = toItem(r)
	}
	return items, more, nil
}

// SKUs yields the sku of every item, for the cache's filter of skus that
// exist, reading them a page at a time.
func SKUs(ctx context.Context, s *Store) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		after := ""
		for {
			q := s.client.Item.Query().Order(ent.Asc(item.FieldID)).Limit(1000)
			if after != "" {
				q = q.Where(item.IDGT(after))
			}
			ids, err := q.IDs(ctx)
			if err != nil {
				yield("", fmt.Errorf("store: list skus: %w", err))
				return
			}
			for _, id := range ids {
				if !yield(id, nil) {
					return
				}
			}
			if len(ids) < 1000 {
				return
			}
			after = ids[len(ids)-1]
		}
	}
}

// Reserve holds back stock for every line under the reservation id, all
// or nothing, until expire. A second call with the same id and lines
// returns the reservation as it is now; with other lines it is
// [stock.ErrConflict]. A line that cannot be held is an
// [*stock.InsufficientError] (or [stock.ErrNotFound] for an unknown sku),
// and nothing is held.
func (s *Store) Reserve(ctx context.Context, id string, lines []stock.Line, expire time.Time) (stock.Reservation, error) {
	rows := make([]schema.Line, len(lines))
	for i, l := range lines {
		rows[i] = schema.Line{SKU: l.SKU, Quantity: l.Quantity}
	}
	err := s.inTx(ctx, func(tx *ent.Tx) error {
		t := now()
		// The reservation row first: it is the transaction's first write,
		// and a second caller with the same id stops here.
		err := tx.Reservation.Create().SetID(id).SetState(reservation.StateHeld).SetLines(rows).
			SetExpireTime(expire.UTC()).SetCreateTime(t).SetUpdateTime(t).Exec(ctx)
		if database.IsUniqueViolation(err) {
			return errDone
		}
		if err != nil {
			return fmt.Errorf("store: record reservation: %w", err)
		}
		for _, l := range lines {
			n, err := tx.Item.Update().
				Where(item.ID(l.SKU), item.AvailableGTE(l.Quantity)).
				AddAvailable(-l.Quantity).AddReserved(l.Quantity).SetUpdateTime(t).
				Save(ctx)
			if err != nil {
				return fmt.Errorf("store: hold %s: %w", l.SKU, err)
			}
			if n == 0 {
				it, err := tx.Item.Get(ctx, l.SKU)
				if ent.IsNotFound(err) {
					return fmt.Errorf("sku %s: %w", l.SKU, stock.ErrNotFound)
				}
				if err != nil {
					return fmt.Errorf("store: read %s: %w", l.SKU, err)
				}
				return &stock.InsufficientError{SKU: l.SKU, Requested: l.Quantity, Available: it.Available}
			}
		}
		return nil
	})
	if errors.Is(err, errDone) {
		existing, err := s.GetReservation(ctx, id)
		if err != nil {
			return stock.Reservation{}, err
		}
		if !sameLines(existing.Lines, lines) {
			return stock.Reservation{}, stock.ErrConflict
		}
		return existing, nil
	}
	if err != nil {
		return stock.Reservation{}, err
	}
	return stock.Reservation{ID: id, State: stock.Held, Lines: lines, ExpireTime: expire.UTC()}, nil
}

func sameLines(a, b []stock.Line) bool {
	key := func(ls []stock.Line) []stock.Line {
		c := slices.Clone(ls)
		slices.SortFunc(c, func(x, y stock.Line) int {
			if x.SKU < y.SKU {
				return -1
			}
			if x.SKU > y.SKU {
				return 1
			}
			return 0
		})
		return c
	}
	return slices.Equal(key(a), key(b))
}

// GetReservation returns the reservation with the id.
func (s *Store) GetReservation(ctx context.Context, id string) (stock.Reservation, error) {
	row, err := s.client.Reservation.Get(ctx, id)
	if ent.IsNotFound(err) {
		return stock.Reservation{}, stock.ErrNotFound
	}
	if err != nil {
		return stock.Reservation{}, fmt.Errorf("store: get reservation %s: %w", id, err)
	}
	return toReservation(row), nil
}

// Commit makes a held reservation final: its stock moves from reserved to
// committed. Committing a committed reservation does nothing; a released
// one is [stock.ErrWrongState].
func (s *Store) Commit(ctx context.Context, id string) (stock.Reservation, error) {
	return s.settle(ctx, id, stock.Committed)
}

// Release gives a held reservation's stock back. Releasing a released
// reservation does nothing, so a saga can always compensate; a committed
// one is [stock.ErrWrongState]. Releasing an id never reserved returns
// ok false and fences the id: it is recorded released with no lines, so
// a reservation with that id that arrives later (a request that was
// still on its way when its saga gave up on it) holds nothing and is
// refused as [stock.ErrConflict].
func (s *Store) Release(ctx context.Context, id string) (r stock.Reservation, ok bool, err error) {
	for {
		r, err = s.settle(ctx, id, stock.Released)
		if !errors.Is(err, stock.ErrNotFound) {
			// A fence holds no lines: it was never a reservation.
			return r, err == nil && len(r.Lines) > 0, err
		}
		t := now()
		err = s.client.Reservation.Create().SetID(id).SetState(reservation.StateReleased).SetLines([]schema.Line{}).
			SetExpireTime(t).SetCreateTime(t).SetUpdateTime(t).Exec(ctx)
		if err == nil {
			return stock.Reservation{}, false, nil
		}
		if !database.IsUniqueViolation(err) {
			return stock.Reservation{}, false, fmt.Errorf("store: fence reservation %s: %w", id, err)
		}
		// A reservation with the id was made meanwhile: release it.
	}
}

// settle moves a held reservation to final (committed or released) and
// its stock with it, in one transaction whose first write is the state
// change, conditional on the reservation still being held: of two
// concurrent calls one moves the stock, the other finds it done.
func (s *Store) settle(ctx context.Context, id string, final stock.State) (stock.Reservation, error) {
	var lines []schema.Line
	err := s.inTx(ctx, func(tx *ent.Tx) error {
		t := now()
		n, err := tx.Reservation.Update().
			Where(reservation.ID(id), reservation.StateEQ(reservation.StateHeld)).
			SetState(reservation.State(final)).SetUpdateTime(t).
			Save(ctx)
		if err != nil {
			return fmt.Errorf("store: settle reservation %s: %w", id, err)
		}
		if n == 0 {
			return errNotHeld
		}
		row, err := tx.Reservation.Get(ctx, id)
		if err != nil {
			return fmt.Errorf("store: read reservation %s: %w", id, err)
		}
		lines = row.Lines
		for _, l := range lines {
			u := tx.Item.Update().Where(item.ID(l.SKU)).AddReserved(-l.Quantity).SetUpdateTime(t)
			if final == stock.Committed {
				u = u.AddCommitted(l.Quantity)
			} else {
				u = u.AddAvailable(l.Quantity)
			}
			if err := u.Exec(ctx); err != nil {
				return fmt.Errorf("store: move stock of %s: %w", l.SKU, err)
			}
		}
		return nil
	})
	if errors.Is(err, errNotHeld) {
		r, err := s.GetReservation(ctx, id)
		if err != nil {
			return stock.Reservation{}, err
		}
		if r.State != final {
			return r, fmt.Errorf("reservation %s is %s: %w", id, r.State, stock.ErrWrongState)
		}
		return r, nil // done before
	}
	if err != nil {
		return stock.Reservation{}, err
	}
	return s.GetReservation(ctx, id)
}

var errNotHeld = errors.New("reservation not held")

// ExpireBefore releases the held reservations whose time ran out before t
// and returns those it released (a reservation settled meanwhile by its
// caller is left out).
func (s *Store) ExpireBefore(ctx context.Context, t time.Time) ([]stock.Reservation, error) {
	ids, err := s.client.Reservation.Query().
		Where(reservation.StateEQ(reservation.StateHeld), reservation.ExpireTimeLT(t.UTC())).
		Limit(500).IDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: find expired reservations: %w", err)
	}
	var released []stock.Reservation
	for _, id := range ids {
		r, ok, err := s.Release(ctx, id)
		switch {
		case err != nil && !errors.Is(err, stock.ErrWrongState):
			return released, err
		case ok:
			released = append(released, r)
		}
	}
	return released, nil
}

func toItem(r *ent.Item) stock.Item {
	return stock.Item{
		SKU: r.ID, Name: r.Name, Description: r.Description, Currency: r.Currency, PriceMinor: r.PriceMinor,
		Available: r.Available, Reserved: r.Reserved, Committed: r.Committed, UpdateTime: r.UpdateTime,
	}
}

func toReservation(r *ent.Reservation) stock.Reservation {
	lines := make([]stock.Line, len(r.Lines))
	for i, l := range r.Lines {
		lines[i] = stock.Line{SKU: l.SKU, Quantity: l.Quantity}
	}
	return stock.Reservation{ID: r.ID, State: stock.State(r.State), Lines: lines, ExpireTime: r.ExpireTime}
}
