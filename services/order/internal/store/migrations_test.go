package store_test

import (
	"context"
	"testing"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/pgtest"
	"github.com/keelplatform/keel/services/order/internal/ent/migrate"
	"github.com/keelplatform/keel/services/order/internal/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// drivers describes a fresh, empty database on each driver.
var drivers = []struct {
	name string
	cfg  func(t *testing.T) database.Config
}{
	{"sqlite", func(t *testing.T) database.Config {
		return database.Config{Driver: database.DriverSQLite, DataDir: t.TempDir(), Name: "order"}
	}},
	{"postgres", func(t *testing.T) database.Config {
		return database.Config{Driver: database.DriverPostgres, DSN: pgtest.Start(t)}
	}},
}

// TestMigrationsMatchSchema keeps the migrations and the ent schema from
// drifting apart: a schema change needs a migration for each driver.
func TestMigrationsMatchSchema(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			db, err := database.Open(context.Background(), d.cfg(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = db.Close() })
			if err := database.CheckMigrationsMatchSchema(context.Background(), db, store.Migrations(), migrate.Tables); err != nil {
				t.Fatal(err)
			}
		})
	}
}
