package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/pgtest"
	"github.com/keelplatform/keel/services/user/internal/account"
	"github.com/keelplatform/keel/services/user/internal/ent"
	"github.com/keelplatform/keel/services/user/internal/ent/migrate"
	"github.com/keelplatform/keel/services/user/internal/store"
)

// configs describes a fresh, empty database on each driver.
var configs = []struct {
	name string
	cfg  func(t *testing.T) database.Config
}{
	{"sqlite", func(t *testing.T) database.Config {
		return database.Config{Driver: database.DriverSQLite, DataDir: t.TempDir(), Name: "user"}
	}},
	{"postgres", func(t *testing.T) database.Config {
		return database.Config{Driver: database.DriverPostgres, DSN: pgtest.Start(t)}
	}},
}

func openDB(t *testing.T, cfg database.Config) *database.DB {
	t.Helper()
	db, err := database.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open database: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// TestMigrationsMatchSchema keeps the migrations and the ent schema from
// drifting apart: a schema change needs a migration for each driver.
func TestMigrationsMatchSchema(t *testing.T) {
	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) {
			db := openDB(t, c.cfg(t))
			if err := database.CheckMigrationsMatchSchema(context.Background(), db, store.Migrations(), migrate.Tables); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestOpenAdoptsAutoMigratedDatabase opens a database that ent's
// auto-migration created, as the store did before versioned migrations:
// the baseline migration takes it over, rows and all.
func TestOpenAdoptsAutoMigratedDatabase(t *testing.T) {
	ctx := context.Background()
	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg(t)
			db := openDB(t, cfg)
			client := ent.NewClient(ent.Driver(db.Driver()))
			if err := client.Schema.Create(ctx); err != nil {
				t.Fatalf("auto-migrate: %v", err)
			}
			now := time.Now().UTC().Truncate(time.Microsecond)
			if _, err := client.User.Create().SetEmail("old@example.com").SetPasswordHash("h").
				SetDisplayName("Old").SetCreateTime(now).SetUpdateTime(now).Save(ctx); err != nil {
				t.Fatalf("create user: %v", err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}

			for range 2 { // adopt, then start again
				s := open(t, cfg)
				if _, err := s.GetByEmail(ctx, "old@example.com"); err != nil {
					t.Fatalf("GetByEmail: %v", err)
				}
			}
			s := open(t, cfg)
			if _, err := s.Create(ctx, account.NewUser{Email: "new@example.com", PasswordHash: "h", DisplayName: "New"}); err != nil {
				t.Fatalf("Create: %v", err)
			}
		})
	}
}
