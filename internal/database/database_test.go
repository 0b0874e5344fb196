package database_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestOpenSQLite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "data")
	db, err := database.Open(context.Background(), database.Config{DataDir: dir, Name: "svc"})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer db.Close()
	if db.Dialect() != dialect.SQLite {
		t.Errorf("Dialect = %q", db.Dialect())
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatalf("data dir: %v", err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v, want 0700", fi.Mode().Perm())
	}
	if _, err := os.Stat(filepath.Join(dir, "svc.db")); err != nil {
		t.Errorf("database file: %v", err)
	}
	checkPragmas(t, db)
	checkUniqueViolation(t, db)
}

func TestOpenPostgres(t *testing.T) {
	db, err := database.Open(context.Background(), database.Config{Driver: database.DriverPostgres, DSN: pgtest.Start(t)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer db.Close()
	if db.Dialect() != dialect.Postgres {
		t.Errorf("Dialect = %q", db.Dialect())
	}
	checkUniqueViolation(t, db)
}

func checkPragmas(t *testing.T, db *database.DB) {
	t.Helper()
	ctx := context.Background()
	for pragma, want := range map[string]string{"foreign_keys": "1", "journal_mode": "wal", "busy_timeout": "5000", "synchronous": "1"} {
		var rows entsql.Rows
		if err := db.Driver().Query(ctx, "PRAGMA "+pragma, []any{}, &rows); err != nil {
			t.Fatalf("PRAGMA %s: %v", pragma, err)
		}
		var got string
		if !rows.Next() {
			t.Fatalf("PRAGMA %s: no row", pragma)
		}
		if err := rows.Scan(&got); err != nil {
			t.Fatalf("PRAGMA %s: %v", pragma, err)
		}
		_ = rows.Close()
		if got != want {
			t.Errorf("PRAGMA %s = %s, want %s", pragma, got, want)
		}
	}
}

func checkUniqueViolation(t *testing.T, db *database.DB) {
	t.Helper()
	ctx := context.Background()
	if err := db.Driver().Exec(ctx, "CREATE TABLE u (email TEXT UNIQUE)", []any{}, nil); err != nil {
		t.Fatalf("create table: %v", err)
	}
	if err := db.Driver().Exec(ctx, "INSERT INTO u (email) VALUES ('a')", []any{}, nil); err != nil {
		t.Fatalf("insert: %v", err)
	}
	err := db.Driver().Exec(ctx, "INSERT INTO u (email) VALUES ('a')", []any{}, nil)
	if !database.IsUniqueViolation(err) {
		t.Fatalf("duplicate insert: IsUniqueViolation(%v) = false", err)
	}
	if database.IsUniqueViolation(context.Canceled) {
		t.Fatal("IsUniqueViolation(context.Canceled) = true")
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	for name, cfg := range map[string]database.Config{
		"unknown driver":      {Driver: "mysql"},
		"sqlite without name": {DataDir: t.TempDir()},
		"postgres no dsn":     {Driver: database.DriverPostgres},
	} {
		if db, err := database.Open(ctx, cfg); err == nil {
			db.Close()
			t.Errorf("%s: Open succeeded", name)
		}
	}
}

func TestOpenErrorHidesPassword(t *testing.T) {
	const secret = "hunter2-s3cret"
	for _, dsn := range []string{
		"postgres://app:" + secret + "@127.0.0.1:1/app?sslmode=disable&connect_timeout=2",
		"host=127.0.0.1 port=1 user=app password=" + secret + " dbname=app sslmode=disable connect_timeout=2",
	} {
		_, err := database.Open(context.Background(), database.Config{Driver: database.DriverPostgres, DSN: dsn})
		if err == nil {
			t.Fatalf("Open of a closed port succeeded")
		}
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("error reveals the password: %v", err)
		}
	}
}

func TestRedact(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://app:pw@db:5432/app?sslmode=disable": "postgres://app:xxxxx@db:5432/app?sslmode=disable",
		"postgres://app@db/app":                         "postgres://app@db/app",
		"host=db user=app password=pw dbname=app":       "host=db user=app password=xxxxx dbname=app",
		"host=db password='p w' dbname=app":             "host=db password=xxxxx dbname=app",
	} {
		if got := database.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}
