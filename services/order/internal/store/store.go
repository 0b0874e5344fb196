// Package store keeps orders and the sagas that place them in the order
// service's own database through ent: SQLite by default, PostgreSQL by
// DSN, with versioned migrations applied at start.
//
// The store is the place-order saga's [saga.Store] ([Store.Sagas]): the
// saga rows and the order rows are written in the same transactions, so
// an order's status and history never disagree with its saga, whatever
// crashes.
package store

import (
	"context"
	"fmt"
	"time"

	"entgo.io/ent/dialect/sql"
	"github.com/google/uuid"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/services/order/internal/ent"
	entorder "github.com/keelplatform/keel/services/order/internal/ent/order"
	"github.com/keelplatform/keel/services/order/internal/ent/statuschange"
	"github.com/keelplatform/keel/services/order/internal/order"
)

// Store is the order service's database. It is safe for concurrent use.
type Store struct {
	db     *database.DB
	client *ent.Client
	sql    dialectSQL
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
	d, err := dialectFor(db.Dialect())
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	return &Store{db: db, client: ent.NewClient(ent.Driver(db.Driver())), sql: d}, nil
}

// Close closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// Order returns the order with the id, with its history.
func (s *Store) Order(ctx context.Context, id string) (order.Order, error) {
	row, err := s.client.Order.Query().Where(entorder.ID(id)).WithHistory(byTime).Only(ctx)
	if ent.IsNotFound(err) {
		return order.Order{}, fmt.Errorf("order %s: %w", id, order.ErrNotFound)
	}
	if err != nil {
		return order.Order{}, fmt.Errorf("store: get order %s: %w", id, err)
	}
	return toOrder(row), nil
}

// ListOrders returns up to size orders of the user, newest first, after
// the cursor (nil: from the newest), and the cursor of the next page, nil
// on the last one. It walks the index on (user_id, create_time, id), so
// pages stay cheap however deep they go and orders placed meanwhile
// cause no duplicates.
func (s *Store) ListOrders(ctx context.Context, userID string, size int, after *order.Cursor) ([]order.Order, *order.Cursor, error) {
	if size <= 0 {
		return nil, nil, fmt.Errorf("store: list orders: page size must be positive, got %d", size)
	}
	q := s.client.Order.Query().
		Where(entorder.UserID(userID)).
		Order(entorder.ByCreateTime(sql.OrderDesc()), entorder.ByID(sql.OrderDesc())).
		WithHistory(byTime).
		Limit(size + 1) // one more tells whether a next page exists
	if after != nil {
		t := timestamp(after.CreateTime)
		id := after.ID.String()
		q = q.Where(entorder.Or(
			entorder.CreateTimeLT(t),
			entorder.And(entorder.CreateTimeEQ(t), entorder.IDLT(id)),
		))
	}
	rows, err := q.All(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("store: list orders: %w", err)
	}
	var next *order.Cursor
	if len(rows) > size {
		rows = rows[:size]
		last := rows[len(rows)-1]
		id, err := uuid.Parse(last.ID)
		if err != nil {
			return nil, nil, fmt.Errorf("store: list orders: order id %q is not a UUID", last.ID)
		}
		next = &order.Cursor{CreateTime: timestamp(last.CreateTime), ID: id}
	}
	orders := make([]order.Order, len(rows))
	for i, r := range rows {
		orders[i] = toOrder(r)
	}
	return orders, next, nil
}

// byTime loads an order's history oldest first.
func byTime(q *ent.StatusChangeQuery) {
	q.Order(statuschange.ByTime(), statuschange.ByID())
}

// timestamp is a time as the rows keep it: UTC to the microsecond, which
// both databases keep exactly, without a monotonic clock reading.
func timestamp(t time.Time) time.Time { return t.UTC().Truncate(time.Microsecond) }

func toOrder(r *ent.Order) order.Order {
	o := order.Order{
		ID:             r.ID,
		IdempotencyKey: r.IdempotencyKey,
		RequestHash:    r.RequestHash,
		UserID:         r.UserID,
		Status:         order.Status(r.Status),
		Currency:       r.Currency,
		TotalMinor:     r.TotalMinor,
		Lines:          make([]order.Line, len(r.Lines)),
		PaymentID:      r.PaymentID,
		FailureReason:  r.FailureReason,
		CreateTime:     timestamp(r.CreateTime),
		UpdateTime:     timestamp(r.UpdateTime),
	}
	for i, l := range r.Lines {
		o.Lines[i] = order.Line{SKU: l.SKU, Quantity: l.Quantity, UnitPriceMinor: l.UnitPriceMinor}
	}
	for _, h := range r.Edges.History {
		o.History = append(o.History, order.StatusChange{Status: order.Status(h.Status), Reason: h.Reason, Time: timestamp(h.Time)})
	}
	return o
}
