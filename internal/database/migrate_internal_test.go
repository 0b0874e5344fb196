package database

import (
	"context"
	"errors"
	"testing"
	"testing/fstest"
	"time"

	"github.com/keelplatform/keel/internal/pgtest"
)

// TestApplySkipsMigrationAppliedMeanwhile pins the race an instance can
// lose on SQLite, which has no advisory lock: it reads the history, another
// instance applies a migration, then it reaches the same migration. The
// check inside the migration's transaction must skip it, or refuse it if
// the other instance applied different content. Concurrent starts rarely
// hit this window, so it is set up step by step here.
func TestApplySkipsMigrationAppliedMeanwhile(t *testing.T) {
	ctx := context.Background()
	fsysWith := func(body string) fstest.MapFS {
		return fstest.MapFS{
			"sqlite/1_a.sql":   {Data: []byte(body)},
			"postgres/1_a.sql": {Data: []byte(body)},
		}
	}
	ours := fsysWith("CREATE TABLE a (x integer);")
	tests := []struct {
		name    string
		theirs  fstest.MapFS
		wantErr error
	}{
		{"same migration", ours, nil},
		{"different content", fsysWith("CREATE TABLE a (y integer);"), ErrMigrationChanged},
	}
	configs := []struct {
		name string
		cfg  func(t *testing.T) Config
	}{
		{"sqlite", func(t *testing.T) Config { return Config{DataDir: t.TempDir(), Name: "svc"} }},
		{"postgres", func(t *testing.T) Config { return Config{Driver: DriverPostgres, DSN: pgtest.Start(t)} }},
	}
	for _, tt := range tests {
		for _, c := range configs {
			t.Run(tt.name+"/"+c.name, func(t *testing.T) {
				cfg := c.cfg(t)
				late, other := openForTest(t, cfg), openForTest(t, cfg)

				ops, err := late.migrationOps()
				if err != nil {
					t.Fatal(err)
				}
				files, err := readMigrations(ours, ops.dir)
				if err != nil {
					t.Fatal(err)
				}
				conn, err := late.sqlDB.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				pending, err := pendingMigrations(ctx, conn, ops, files)
				if err != nil || len(pending) != 1 {
					t.Fatalf("pending %v, %v; want migration 1", pending, err)
				}

				if err := other.Migrate(ctx, tt.theirs); err != nil {
					t.Fatalf("the other instance: Migrate: %v", err)
				}

				err = apply(ctx, conn, ops, pending[0])
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("apply after the other instance: got %v, want %v", err, tt.wantErr)
				}
				var n int
				if err := late.sqlDB.QueryRowContext(ctx, `SELECT count(*) FROM `+MigrationsTable).Scan(&n); err != nil || n != 1 {
					t.Fatalf("%s has %d rows (%v), want 1", MigrationsTable, n, err)
				}
				// The session is usable again: no transaction was left open.
				if _, err := conn.ExecContext(ctx, ops.begin); err != nil {
					t.Fatalf("begin after apply: %v", err)
				}
				if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

func openForTest(t *testing.T, cfg Config) *DB {
	t.Helper()
	db, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// TestMigrateWaitsForTheAdvisoryLock holds the PostgreSQL migration lock
// in another session: Migrate waits for it as long as its context allows,
// then runs once the lock is free.
func TestMigrateWaitsForTheAdvisoryLock(t *testing.T) {
	ctx := context.Background()
	cfg := Config{Driver: DriverPostgres, DSN: pgtest.Start(t)}
	holder, db := openForTest(t, cfg), openForTest(t, cfg)
	fsys := fstest.MapFS{"postgres/1_a.sql": {Data: []byte("CREATE TABLE a (x integer);")}}

	session, err := holder.sqlDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	if _, err := session.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, migrationLockKey); err != nil {
		t.Fatal(err)
	}

	waitCtx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := db.Migrate(waitCtx, fsys); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Migrate while another session holds the lock: got %v, want a deadline error", err)
	}
	var n int
	if err := holder.sqlDB.QueryRowContext(ctx, `SELECT count(*) FROM pg_tables WHERE tablename = 'a'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("table a: %d, %v; want nothing applied without the lock", n, err)
	}

	if _, err := session.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, migrationLockKey); err != nil {
		t.Fatal(err)
	}
	if err := db.Migrate(ctx, fsys); err != nil {
		t.Fatalf("Migrate once the lock is free: %v", err)
	}
	// Migrate released the lock: the other session can take it at once.
	var got bool
	if err := session.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, migrationLockKey).Scan(&got); err != nil || !got {
		t.Fatalf("pg_try_advisory_lock after Migrate: %t, %v; want the lock free", got, err)
	}
}

// TestMigrateWaitsForTheSQLiteWriteLock holds SQLite's write lock in
// another connection for longer than the busy timeout: Migrate keeps
// waiting for it as long as its context allows.
func TestMigrateWaitsForTheSQLiteWriteLock(t *testing.T) {
	ctx := context.Background()
	cfg := Config{DataDir: t.TempDir(), Name: "svc"}
	holder, db := openForTest(t, cfg), openForTest(t, cfg)
	// One connection with a busy timeout far shorter than the wait below.
	db.sqlDB.SetMaxOpenConns(1)
	if _, err := db.sqlDB.ExecContext(ctx, "PRAGMA busy_timeout = 20"); err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{"sqlite/1_a.sql": {Data: []byte("CREATE TABLE a (x integer);")}}

	writer, err := holder.sqlDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close()
	if _, err := writer.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}

	waitCtx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := db.Migrate(waitCtx, fsys); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Migrate while another connection writes: got %v, want a deadline error", err)
	}

	time.AfterFunc(300*time.Millisecond, func() { _, _ = writer.ExecContext(ctx, "ROLLBACK") })
	if err := db.Migrate(ctx, fsys); err != nil {
		t.Fatalf("Migrate once the lock is free: %v", err)
	}
}
