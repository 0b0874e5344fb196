package store_test

import (
	"context"
	"testing"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/pgtest"
	"github.com/keelplatform/keel/services/payment/internal/ent/migrate"
	"github.com/keelplatform/keel/services/payment/internal/store"
)

// configs describes a fresh, empty database on each driver.
var configs = []struct {
	name string
	cfg  func(t *testing.T) database.Config
}{
	{"sqlite", func(t *testing.T) database.Config {
		return database.Config{Driver: database.DriverSQLite, DataDir: t.TempDir(), Name: "payment"}
	}},
	{"postgres", func(t *testing.T) database.Config {
		return database.Config{Driver: database.DriverPostgres, DSN: pgtest.Start(t)}
	}},
}

// TestMigrationsMatchSchema keeps the migrations and the ent schema from
// drifting apart: a schema change needs a migration for each driver.
func TestMigrationsMatchSchema(t *testing.T) {
	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) {
			db, err := database.Open(context.Background(), c.cfg(t))
			if err != nil {
				t.Fatalf("open database: %v", err)
			}
			t.Cleanup(func() { _ = db.Close() })
			if err := database.CheckMigrationsMatchSchema(context.Background(), db, store.Migrations(), migrate.Tables); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestOpenTwice starts the store again on a database it migrated: nothing
// is left to apply and the data stays.
func TestOpenTwice(t *testing.T) {
	ctx := context.Background()
	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg(t)
			s := open(t, cfg)
			p := capture(t, s, "open-twice-1", 500)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s = open(t, cfg)
			if _, err := s.Payment(ctx, p.ID); err != nil {
				t.Fatalf("Payment after a restart: %v", err)
			}
		})
	}
}
