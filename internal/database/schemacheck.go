package database

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"entgo.io/ent/dialect"
	"entgo.io/ent/dialect/sql/schema"
)

// CheckMigrationsMatchSchema reports whether a service's migrations create
// exactly the schema its ent code expects. It applies migrations with
// [DB.Migrate] to db, which must be empty, then asks ent for the DDL that
// would turn the result into tables, the generated migrate.Tables of the
// service's ent package, and returns an error holding that DDL unless
// there is none. Call it from a test of every service, on each dialect the
// service runs on, so an ent schema change without its migration, or a
// migration ent does not agree with, fails the build:
//
//	db, _ := database.Open(ctx, cfg) // a new, empty database
//	err := database.CheckMigrationsMatchSchema(ctx, db, store.Migrations(), migrate.Tables)
//
// The comparison runs in both directions: a column or index ent lacks
// shows up as a DROP, one the migrations lack as an ADD or CREATE, a
// different type, default, nullability or uniqueness as a change, and a
// table or view ent does not know (other than [MigrationsTable]) as an
// error of its own. Objects ent does not model, such as triggers and
// functions, are not compared.
func CheckMigrationsMatchSchema(ctx context.Context, db *DB, migrations fs.FS, tables []*schema.Table) error {
	before, err := db.tableNames(ctx)
	if err != nil {
		return err
	}
	if len(before) > 0 {
		return fmt.Errorf("database: check migrations: the database must be empty, it has %s", strings.Join(before, ", "))
	}
	if err := db.Migrate(ctx, migrations); err != nil {
		return fmt.Errorf("database: check migrations: %w", err)
	}

	var ddl strings.Builder
	// Dropping columns and indexes is off in ent's auto-migration; it is
	// on here so that anything the migrations add beyond the ent schema
	// shows up too. The write driver only prints the changes.
	m, err := schema.NewMigrate(&schema.WriteDriver{Writer: &ddl, Driver: db.driver},
		schema.WithDropColumn(true), schema.WithDropIndex(true))
	if err != nil {
		return fmt.Errorf("database: check migrations: %w", err)
	}
	if err := m.Create(ctx, tables...); err != nil {
		return fmt.Errorf("database: check migrations: diff with the ent schema: %w", err)
	}
	ops, err := db.migrationOps()
	if err != nil {
		return err
	}
	var problems []error
	if diff := strings.TrimSpace(ddl.String()); diff != "" {
		problems = append(problems, fmt.Errorf("the %s migrations do not create the ent schema; to match it, the database would need (a start for the next migration):\n%s",
			ops.dir, diff))
	}

	after, err := db.tableNames(ctx)
	if err != nil {
		return err
	}
	want := map[string]bool{MigrationsTable: true}
	for _, t := range tables {
		want[t.Name] = true
	}
	for _, name := range after {
		if !want[name] {
			problems = append(problems, fmt.Errorf("the %s migrations create %q, which is not in the ent schema", ops.dir, name))
		}
	}
	if err := errors.Join(problems...); err != nil {
		return fmt.Errorf("database: check migrations: %w", err)
	}
	return nil
}

// tableNames lists the tables and views in the database's current schema,
// sorted.
func (db *DB) tableNames(ctx context.Context) ([]string, error) {
	var query string
	switch db.dialect {
	case dialect.SQLite:
		query = `SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\_%' ESCAPE '\'`
	case dialect.Postgres:
		query = `SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()`
	default:
		return nil, fmt.Errorf("database: unsupported dialect %q", db.dialect)
	}
	rows, err := db.sqlDB.QueryContext(ctx, query)
	if err != nil {
		return nil, fmt.Errorf("database: list tables: %w", err)
	}
	defer rows.Close()
	var names []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, fmt.Errorf("database: list tables: %w", err)
		}
		names = append(names, name)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("database: list tables: %w", err)
	}
	slices.Sort(names)
	return names, nil
}
