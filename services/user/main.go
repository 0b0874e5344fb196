// Command user runs the user service on its own. Configuration comes from
// the environment:
//
//	KEEL_ADDR          listen address (default 127.0.0.1:8081)
//	KEEL_DATA_DIR      directory of the SQLite file (default data)
//	KEEL_DATABASE_DSN  PostgreSQL DSN; when set, PostgreSQL replaces SQLite
//	KEEL_TOKEN_KEY     key that signs login tokens, at least 32 bytes (required)
//	KEEL_LOG_LEVEL     debug, info, warn or error (default info)
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/logging"
	"github.com/keelplatform/keel/internal/server"
	userservice "github.com/keelplatform/keel/services/user/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "user:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	var level slog.LevelVar
	if v := os.Getenv("KEEL_LOG_LEVEL"); v != "" {
		l, err := logging.ParseLevel(v)
		if err != nil {
			return err
		}
		level.Set(l)
	}
	logger := logging.New(os.Stderr, &level, userservice.Name)
	cfg := userservice.Config{
		Server:   server.Config{Addr: envOr("KEEL_ADDR", "127.0.0.1:8081")},
		Database: database.Config{Driver: database.DriverSQLite, DataDir: envOr("KEEL_DATA_DIR", "data")},
		TokenKey: []byte(os.Getenv("KEEL_TOKEN_KEY")),
	}
	if dsn := os.Getenv("KEEL_DATABASE_DSN"); dsn != "" {
		cfg.Database = database.Config{Driver: database.DriverPostgres, DSN: dsn}
	}
	svc, err := userservice.New(ctx, cfg, logger)
	if err != nil {
		return err
	}
	return svc.Serve(ctx)
}

func envOr(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}
