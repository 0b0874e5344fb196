// Package store keeps the user service's accounts in SQL through ent. It
// implements [account.Repository] on SQLite and PostgreSQL alike.
package store

import (
	"context"
	"fmt"
	"iter"
	"time"

	"github.com/google/uuid"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/services/user/internal/account"
	"github.com/keelplatform/keel/services/user/internal/ent"
	"github.com/keelplatform/keel/services/user/internal/ent/user"
)

// Store is an [account.Repository] over ent. It is safe for concurrent use.
type Store struct {
	db     *database.DB
	client *ent.Client
}

var _ account.Repository = (*Store)(nil)

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

// IDs yields the id of every user, for the cache's filter of ids that
// exist, reading them a page at a time.
func (s *Store) IDs(ctx context.Context) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		var after *uuid.UUID
		for {
			q := s.client.User.Query().Order(ent.Asc(user.FieldID)).Limit(1000)
			if after != nil {
				q = q.Where(user.IDGT(*after))
			}
			ids, err := q.IDs(ctx)
			if err != nil {
				yield("", fmt.Errorf("store: list user ids: %w", err))
				return
			}
			for _, id := range ids {
				if !yield(id.String(), nil) {
					return
				}
			}
			if len(ids) < 1000 {
				return
			}
			after = &ids[len(ids)-1]
		}
	}
}

// Close closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

// Create implements [account.Repository.Create].
func (s *Store) Create(ctx context.Context, u account.NewUser) (account.User, error) {
	now := timestamp(time.Now())
	row, err := s.client.User.Create().
		SetEmail(account.NormalizeEmail(u.Email)).
		SetPasswordHash(u.PasswordHash).
		SetDisplayName(u.DisplayName).
		SetCreateTime(now).
		SetUpdateTime(now).
		Save(ctx)
	if err != nil {
		if database.IsUniqueViolation(err) {
			return account.User{}, fmt.Errorf("store: create user: %w", account.ErrEmailTaken)
		}
		return account.User{}, fmt.Errorf("store: create user: %w", err)
	}
	return toAccount(row), nil
}

// GetByID implements [account.Repository.GetByID].
func (s *Store) GetByID(ctx context.Context, id uuid.UUID) (account.User, error) {
	row, err := s.client.User.Get(ctx, id)
	if err != nil {
		return account.User{}, fmt.Errorf("store: get user %s: %w", id, notFound(err))
	}
	return toAccount(row), nil
}

// GetByEmail implements [account.Repository.GetByEmail]. The email is
// normalized first, so any case finds the account.
func (s *Store) GetByEmail(ctx context.Context, email string) (account.User, error) {
	row, err := s.client.User.Query().
		Where(user.Email(account.NormalizeEmail(email))).
		Only(ctx)
	if err != nil {
		// The email is personal data: keep it out of errors, which get logged.
		return account.User{}, fmt.Errorf("store: get user by email: %w", notFound(err))
	}
	return toAccount(row), nil
}

// UpdateDisplayName implements [account.Repository.UpdateDisplayName].
func (s *Store) UpdateDisplayName(ctx context.Context, id uuid.UUID, displayName string) (account.User, error) {
	row, err := s.client.User.UpdateOneID(id).
		SetDisplayName(displayName).
		SetUpdateTime(timestamp(time.Now())).
		Save(ctx)
	if err != nil {
		return account.User{}, fmt.Errorf("store: update user %s: %w", id, notFound(err))
	}
	return toAccount(row), nil
}

// List implements [account.Repository.List] with keyset pagination on
// (create_time, id), which an index serves: pages stay stable and cheap
// however deep they go, and rows inserted meanwhile cause no duplicates.
func (s *Store) List(ctx context.Context, pageSize int, after *account.Cursor) (account.Page, error) {
	if pageSize <= 0 {
		return account.Page{}, fmt.Errorf("store: list users: page size must be positive, got %d", pageSize)
	}
	q := s.client.User.Query().
		Order(user.ByCreateTime(), user.ByID()).
		Limit(pageSize + 1) // one more tells whether a next page exists
	if after != nil {
		t := timestamp(after.CreateTime)
		q = q.Where(user.Or(
			user.CreateTimeGT(t),
			user.And(user.CreateTimeEQ(t), user.IDGT(after.ID)),
		))
	}
	rows, err := q.All(ctx)
	if err != nil {
		return account.Page{}, fmt.Errorf("store: list users: %w", err)
	}
	var page account.Page
	if len(rows) > pageSize {
		rows = rows[:pageSize]
		last := rows[len(rows)-1]
		page.Next = &account.Cursor{CreateTime: timestamp(last.CreateTime), ID: last.ID}
	}
	page.Users = make([]account.User, len(rows))
	for i, row := range rows {
		page.Users[i] = toAccount(row)
	}
	return page, nil
}

// timestamp normalizes a time to what both databases store exactly: UTC,
// microseconds (PostgreSQL's precision), no monotonic clock reading. Cursor
// comparisons rely on stored and compared times being identical.
func timestamp(t time.Time) time.Time {
	return t.UTC().Truncate(time.Microsecond)
}

func notFound(err error) error {
	if ent.IsNotFound(err) {
		return account.ErrNotFound
	}
	return err
}

func toAccount(row *ent.User) account.User {
	return account.User{
		ID:           row.ID,
		Email:        row.Email,
		PasswordHash: row.PasswordHash,
		DisplayName:  row.DisplayName,
		CreateTime:   timestamp(row.CreateTime),
		UpdateTime:   timestamp(row.UpdateTime),
	}
}
