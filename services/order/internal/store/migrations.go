package store

import (
	"embed"
	"io/fs"
)

// files holds the schema migrations, one directory per driver.
//
//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var files embed.FS

// Migrations returns the store's schema migrations, in the layout
// [database.DB.Migrate] reads: migrations/sqlite/NNNN_name.sql and
// migrations/postgres/NNNN_name.sql. A change to the ent schema in
// ../ent/schema needs a new migration in both directories; the store's
// tests fail until the two agree.
func Migrations() fs.FS {
	sub, err := fs.Sub(files, "migrations")
	if err != nil {
		panic(err) // unreachable: "migrations" is a valid path
	}
	return sub
}
