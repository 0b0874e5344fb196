package pgtest_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/keelplatform/keel/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestStartGivesSeparateDatabases(t *testing.T) {
	ctx := context.Background()
	first := open(t, pgtest.Start(t))
	second := open(t, pgtest.Start(t))

	if _, err := first.ExecContext(ctx, `CREATE TABLE only_here (id int)`); err != nil {
		t.Fatalf("create table: %v", err)
	}
	var n int
	err := second.QueryRowContext(ctx, `SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'`).Scan(&n)
	if err != nil {
		t.Fatalf("query: %v", err)
	}
	if n != 0 {
		t.Fatalf("table created in one database is visible in another")
	}
	var version string
	if err := first.QueryRowContext(ctx, `SHOW server_version`).Scan(&version); err != nil {
		t.Fatalf("server_version: %v", err)
	}
	t.Logf("PostgreSQL %s", version)
}

func open(t *testing.T, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatalf("open %s: %v", dsn, err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if err := db.PingContext(context.Background()); err != nil {
		t.Fatalf("ping %s: %v", dsn, err)
	}
	return db
}
