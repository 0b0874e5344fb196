// Package service assembles the user service: its store, its handler and a
// server that speaks every protocol on one port. The user binary
// (services/user) and `keel up` both start it through [New].
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/services/user/internal/handler"
	"github.com/keelplatform/keel/services/user/internal/password"
	"github.com/keelplatform/keel/services/user/internal/store"
)

// Name is the user service's logical name in discovery.
const Name = "user"

// Config configures the user service. The zero value of each field means
// its documented default, except TokenKey, which is required.
type Config struct {
	// Server is how the service listens.
	Server server.Config
	// Database is where accounts are stored. Default: SQLite file
	// "user.db" under "data".
	Database database.Config
	// TokenKey signs login tokens (HS256); at least 32 bytes.
	TokenKey []byte
	// TokenTTL is how long a login token is valid. Default 1h.
	TokenTTL time.Duration
	// Hashing are the argon2id parameters for new password hashes.
	// Default: password.DefaultParams.
	Hashing password.Params
}

// Service is a user service ready to serve. Create it with [New].
type Service struct {
	*server.Server
	store *store.Store
}

// New opens the store (migrating its schema) and builds the server.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (*Service, error) {
	if cfg.Database.Name == "" {
		cfg.Database.Name = Name
	}
	if cfg.Database.Driver == "" && cfg.Database.DataDir == "" {
		cfg.Database.DataDir = "data"
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = time.Hour
	}
	if cfg.Hashing == (password.Params{}) {
		cfg.Hashing = password.DefaultParams
	}
	st, err := store.Open(ctx, cfg.Database)
	if err != nil {
		return nil, fmt.Errorf("user store: %w", err)
	}
	h, err := handler.New(st, auth.Issuer{Key: cfg.TokenKey, TTL: cfg.TokenTTL}, cfg.Hashing, logger)
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("user handler: %w", err)
	}
	srv := server.New(cfg.Server, logger)
	srv.Handle(userv1connect.NewUserServiceHandler(h, srv.HandlerOptions()...))
	return &Service{Server: srv, store: st}, nil
}

// Serve answers calls until ctx is done, drains, then closes the store.
func (s *Service) Serve(ctx context.Context) error {
	err := s.Server.Serve(ctx)
	return errors.Join(err, s.store.Close())
}
