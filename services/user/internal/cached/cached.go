// Package cached puts the user service's reads of a user by id behind the
// cache: a [Repository] wraps the store's, serving GetByID from the cache
// (Redis with client-side caching, or process memory), turning away ids
// the filter knows cannot exist, and invalidating a user everywhere when
// it changes. Password hashes are never cached: a cached user has none,
// and reads that need it (login, by email) go to the store.
package cached

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/google/uuid"

	"github.com/keelplatform/keel/internal/cache"
	"github.com/keelplatform/keel/services/user/internal/account"
)

// Repository is an [account.Repository] whose GetByID goes through a
// cache. It is safe for concurrent use.
type Repository struct {
	account.Repository
	cache  *cache.Cache
	filter *cache.Filter
	logger *slog.Logger
}

var _ account.Repository = (*Repository)(nil)

// New returns repo with its reads by id through c, ids filter having been
// built from every user's id (see the store's IDs).
func New(repo account.Repository, c *cache.Cache, filter *cache.Filter, logger *slog.Logger) *Repository {
	return &Repository{Repository: repo, cache: c, filter: filter, logger: logger}
}

// GetByID implements [account.Repository] from the cache: the user it
// returns has no password hash.
func (r *Repository) GetByID(ctx context.Context, id uuid.UUID) (account.User, error) {
	data, err := r.cache.GetChecked(ctx, r.filter, id.String(), func(ctx context.Context) ([]byte, error) {
		u, err := r.Repository.GetByID(ctx, id)
		if errors.Is(err, account.ErrNotFound) {
			return nil, fmt.Errorf("user %s: %w", id, cache.ErrNotFound)
		}
		if err != nil {
			return nil, err
		}
		u.PasswordHash = "" // never leaves the database through the cache
		return json.Marshal(u)
	})
	if errors.Is(err, cache.ErrNotFound) {
		return account.User{}, account.ErrNotFound
	}
	if err != nil {
		return account.User{}, err
	}
	var u account.User
	if err := json.Unmarshal(data, &u); err != nil {
		return account.User{}, fmt.Errorf("cached user %s: %w", id, err)
	}
	return u, nil
}

// Create implements [account.Repository]: the new id joins the filter.
func (r *Repository) Create(ctx context.Context, nu account.NewUser) (account.User, error) {
	u, err := r.Repository.Create(ctx, nu)
	if err == nil {
		if ferr := r.filter.Add(ctx, u.ID.String()); ferr != nil {
			r.logger.WarnContext(ctx, "user filter: add", slog.Any("error", ferr))
		}
		r.invalidate(ctx, u.ID) // a negative entry cached before it existed
	}
	return u, err
}

// UpdateDisplayName implements [account.Repository]: the user's cached
// copies go.
func (r *Repository) UpdateDisplayName(ctx context.Context, id uuid.UUID, name string) (account.User, error) {
	u, err := r.Repository.UpdateDisplayName(ctx, id, name)
	r.invalidate(ctx, id)
	return u, err
}

func (r *Repository) invalidate(ctx context.Context, id uuid.UUID) {
	if err := r.cache.Invalidate(ctx, id.String()); err != nil {
		r.logger.WarnContext(ctx, "user cache: invalidate", slog.String("id", id.String()), slog.Any("error", err))
	}
}
