package database_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing/fstest"

	"github.com/keelplatform/keel/internal/database"
)

// A service applies its migrations once at start, before it serves. Real
// services embed their migrations directory (//go:embed) and pass
// fs.Sub(files, "migrations"); a map stands in for it here.
func ExampleDB_Migrate() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	db, err := database.Open(ctx, database.Config{Driver: database.DriverSQLite, DataDir: dir, Name: "shop"})
	if err != nil {
		panic(err)
	}
	defer db.Close()

	migrations := fstest.MapFS{
		"sqlite/0001_init.sql":         {Data: []byte("CREATE TABLE items (id text NOT NULL PRIMARY KEY);")},
		"sqlite/0002_items_name.sql":   {Data: []byte("ALTER TABLE items ADD COLUMN name text NOT NULL DEFAULT '';")},
		"postgres/0001_init.sql":       {Data: []byte("CREATE TABLE items (id text NOT NULL PRIMARY KEY);")},
		"postgres/0002_items_name.sql": {Data: []byte("ALTER TABLE items ADD COLUMN name text NOT NULL DEFAULT '';")},
	}
	for range 2 { // the second start finds nothing to do
		if err := db.Migrate(ctx, migrations); err != nil {
			fmt.Println("refusing to start:", err)
			return
		}
	}

	migrations["sqlite/0001_init.sql"] = &fstest.MapFile{Data: []byte("CREATE TABLE items (id integer PRIMARY KEY);")}
	err = db.Migrate(ctx, migrations)
	fmt.Println(errors.Is(err, database.ErrMigrationChanged))
	// Output:
	// true
}
