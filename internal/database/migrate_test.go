package database_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	entsql "entgo.io/ent/dialect/sql"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/pgtest"
)

// backends describes a fresh, empty database on each driver.
var backends = []struct {
	name string
	cfg  func(t *testing.T) database.Config
}{
	{"sqlite", func(t *testing.T) database.Config {
		return database.Config{Driver: database.DriverSQLite, DataDir: t.TempDir(), Name: "svc"}
	}},
	{"postgres", func(t *testing.T) database.Config {
		return database.Config{Driver: database.DriverPostgres, DSN: pgtest.Start(t)}
	}},
}

// forEachBackend runs test on a fresh database of each driver.
func forEachBackend(t *testing.T, test func(t *testing.T, cfg database.Config)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { test(t, b.cfg(t)) })
	}
}

func open(t *testing.T, cfg database.Config) *database.DB {
	t.Helper()
	db, err := database.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// portable puts the same files, written in SQL both drivers accept, in
// each driver's directory.
func portable(files map[string]string) fstest.MapFS {
	fsys := fstest.MapFS{}
	for name, body := range files {
		for _, dir := range []string{database.DriverSQLite, database.DriverPostgres} {
			fsys[dir+"/"+name] = &fstest.MapFile{Data: []byte(body)}
		}
	}
	return fsys
}

// with returns a copy of files with changes applied; an empty body
// removes the file.
func with(files map[string]string, changes map[string]string) map[string]string {
	out := maps.Clone(files)
	for name, body := range changes {
		if body == "" {
			delete(out, name)
		} else {
			out[name] = body
		}
	}
	return out
}

// column returns the first column of query's rows, as strings.
func column(t *testing.T, db *database.DB, query string) []string {
	t.Helper()
	var rows entsql.Rows
	if err := db.Driver().Query(context.Background(), query, []any{}, &rows); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return out
}

func tableExists(t *testing.T, db *database.DB, name string) bool {
	t.Helper()
	// Selecting from a missing table fails on both drivers; a failed
	// statement outside a transaction leaves the session usable.
	err := db.Driver().Exec(context.Background(), "SELECT 1 FROM "+name+" WHERE 1 = 0", []any{}, nil)
	return err == nil
}

func migrate(t *testing.T, db *database.DB, files map[string]string) error {
	t.Helper()
	return db.Migrate(context.Background(), portable(files))
}

// history lists the recorded migrations as "version name".
func history(t *testing.T, db *database.DB) []string {
	t.Helper()
	return column(t, db, `SELECT `+concat(db, "version", "' '", "name")+` FROM schema_migrations ORDER BY version`)
}

func concat(db *database.DB, parts ...string) string {
	if db.Dialect() == "postgres" {
		for i, p := range parts {
			parts[i] = p + "::text"
		}
	}
	return strings.Join(parts, " || ")
}

// base is a history whose order shows: sorted as text, 10_ comes before
// 1_ and 2_, and each migration needs the one before it.
var base = map[string]string{
	"1_create_log.sql":  "CREATE TABLE log (step integer NOT NULL);",
	"2_create_more.sql": "CREATE TABLE more (x integer);\nINSERT INTO log (step) VALUES (2);",
	"10_fill_more.sql":  "INSERT INTO more (x) VALUES (10);\nINSERT INTO log (step) VALUES (10);",
}

func TestMigrateAppliesInOrderOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, cfg database.Config) {
		db := open(t, cfg)
		if err := migrate(t, db, base); err != nil {
			t.Fatalf("first Migrate: %v", err)
		}
		want := []string{"1 create_log", "2 create_more", "10 fill_more"}
		if got := history(t, db); !slices.Equal(got, want) {
			t.Fatalf("history %q, want %q", got, want)
		}
		sums := column(t, db, `SELECT checksum FROM schema_migrations ORDER BY version`)
		for i, name := range []string{"1_create_log.sql", "2_create_more.sql", "10_fill_more.sql"} {
			sum := sha256.Sum256([]byte(base[name]))
			if sums[i] != hex.EncodeToString(sum[:]) {
				t.Errorf("checksum of %s = %s, want its SHA-256", name, sums[i])
			}
		}
		appliedAt := column(t, db, `SELECT applied_at FROM schema_migrations ORDER BY version`)
		for i, at := range appliedAt {
			if at == "" {
				t.Errorf("applied_at of row %d is empty", i)
			}
		}

		// A second start, on the same pool and on a new one, applies nothing.
		if err := migrate(t, db, base); err != nil {
			t.Fatalf("second Migrate: %v", err)
		}
		db2 := open(t, cfg)
		if err := migrate(t, db2, base); err != nil {
			t.Fatalf("Migrate on a new pool: %v", err)
		}
		if got := column(t, db, `SELECT step FROM log ORDER BY step`); !slices.Equal(got, []string{"2", "10"}) {
			t.Fatalf("log %q after three starts, want each migration once", got)
		}
		if got := column(t, db, `SELECT applied_at FROM schema_migrations ORDER BY version`); !slices.Equal(got, appliedAt) {
			t.Fatalf("applied_at changed from %q to %q", appliedAt, got)
		}

		// A new migration is applied, alone.
		if err := migrate(t, db2, with(base, map[string]string{"11_more.sql": "INSERT INTO log (step) VALUES (11);"})); err != nil {
			t.Fatalf("Migrate with a new migration: %v", err)
		}
		if got := column(t, db, `SELECT step FROM log ORDER BY step`); !slices.Equal(got, []string{"2", "10", "11"}) {
			t.Fatalf("log %q, want the new migration applied once", got)
		}
	})
}

func TestMigrateRefusesHistoryChanges(t *testing.T) {
	tests := []struct {
		name    string
		files   map[string]string
		wantErr error
		want    []string // in the error
	}{
		{
			name:    "changed file",
			files:   with(base, map[string]string{"2_create_more.sql": "CREATE TABLE more (x bigint);\nINSERT INTO log (step) VALUES (2);"}),
			wantErr: database.ErrMigrationChanged,
			want:    []string{`migration 2 "create_more"`, "2_create_more.sql"},
		},
		{
			name:    "whitespace changed",
			files:   with(base, map[string]string{"10_fill_more.sql": base["10_fill_more.sql"] + "\n"}),
			wantErr: database.ErrMigrationChanged,
			want:    []string{`migration 10 "fill_more"`},
		},
		{
			name:    "missing file",
			files:   with(base, map[string]string{"2_create_more.sql": ""}),
			wantErr: database.ErrMigrationMissing,
			want:    []string{`migration 2 "create_more"`},
		},
		{
			name:    "renamed file",
			files:   with(base, map[string]string{"2_create_more.sql": "", "2_make_more.sql": base["2_create_more.sql"]}),
			wantErr: database.ErrMigrationChanged,
			want:    []string{`migration 2 "make_more"`, `applied as "create_more"`},
		},
		{
			name:    "pending migration older than an applied one",
			files:   with(base, map[string]string{"5_late.sql": "CREATE TABLE late (x integer);"}),
			wantErr: database.ErrMigrationOutOfOrder,
			want:    []string{`migration 5 "late"`, "after 10"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, cfg database.Config) {
				db := open(t, cfg)
				if err := migrate(t, db, base); err != nil {
					t.Fatalf("Migrate: %v", err)
				}
				before := history(t, db)
				// A pending migration next to the bad history is not applied
				// either: Migrate checks everything before it changes anything.
				err := migrate(t, db, with(tt.files, map[string]string{"20_next.sql": "CREATE TABLE next (x integer);"}))
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Migrate: got %v, want %v", err, tt.wantErr)
				}
				for _, w := range tt.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not name %q", err, w)
					}
				}
				if got := history(t, db); !slices.Equal(got, before) {
					t.Errorf("history changed from %q to %q", before, got)
				}
				if tableExists(t, db, "next") {
					t.Errorf("the pending migration was applied")
				}
				// Restoring the files lets the service start again.
				if err := migrate(t, db, base); err != nil {
					t.Fatalf("Migrate with the original files: %v", err)
				}
			})
		})
	}
}

func TestMigrateRollsBackAFailedMigration(t *testing.T) {
	forEachBackend(t, func(t *testing.T, cfg database.Config) {
		db := open(t, cfg)
		broken := with(base, map[string]string{
			"11_half.sql": "CREATE TABLE half (x integer);\nINSERT INTO log (step) VALUES (11);\nINSERT INTO nowhere (x) VALUES (1);",
		})
		err := migrate(t, db, broken)
		if err == nil || !strings.Contains(err.Error(), `migration 11 "half"`) {
			t.Fatalf("Migrate: got %v, want an error naming migration 11", err)
		}
		if got := history(t, db); !slices.Equal(got, []string{"1 create_log", "2 create_more", "10 fill_more"}) {
			t.Fatalf("history %q, want the migrations before the failed one", got)
		}
		if tableExists(t, db, "half") {
			t.Fatalf("the failed migration's first statement was kept")
		}
		if got := column(t, db, `SELECT step FROM log ORDER BY step`); !slices.Equal(got, []string{"2", "10"}) {
			t.Fatalf("log %q, the failed migration's insert was kept", got)
		}
		// The failed migration is still pending: fixed, it applies.
		fixed := with(base, map[string]string{"11_half.sql": "CREATE TABLE half (x integer);\nINSERT INTO log (step) VALUES (11);"})
		if err := migrate(t, db, fixed); err != nil {
			t.Fatalf("Migrate after the fix: %v", err)
		}
		if got := column(t, db, `SELECT step FROM log ORDER BY step`); !slices.Equal(got, []string{"2", "10", "11"}) {
			t.Fatalf("log %q after the fix", got)
		}
	})
}

func TestMigrateRejectsBadFiles(t *testing.T) {
	tests := []struct {
		name string
		fsys fstest.MapFS
		want string // in the error; empty for no error
	}{
		{"other files are ignored", fstest.MapFS{
			"sqlite/1_a.sql":   {Data: []byte("CREATE TABLE a (x integer);")},
			"sqlite/README.md": {Data: []byte("notes")},
			"sqlite/old/x.sql": {Data: []byte("not a migration")},
		}, ""},
		{"no directory for the driver", fstest.MapFS{"postgres/1_a.sql": {}}, "read sqlite migrations"},
		{"no migrations", fstest.MapFS{"sqlite/README.md": {}}, "no migrations in sqlite/"},
		{"name without version", fstest.MapFS{"sqlite/init.sql": {}}, "init.sql: name must be VERSION_NAME.sql"},
		{"name with a space", fstest.MapFS{"sqlite/1_a b.sql": {}}, "name must be VERSION_NAME.sql"},
		{"version zero", fstest.MapFS{"sqlite/0_a.sql": {}}, "version must be a positive"},
		{"same version twice", fstest.MapFS{"sqlite/1_a.sql": {}, "sqlite/01_b.sql": {}}, "have the same version 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := open(t, database.Config{DataDir: t.TempDir(), Name: "svc"})
			err := db.Migrate(context.Background(), tt.fsys)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Migrate: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("Migrate: got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	t.Run("nil", func(t *testing.T) {
		db := open(t, database.Config{DataDir: t.TempDir(), Name: "svc"})
		if err := db.Migrate(context.Background(), nil); err == nil {
			t.Fatal("Migrate(nil) succeeded")
		}
	})
}

// TestMigrateConcurrentStarts starts several instances against one
// database at once, each with a pool of its own: every migration is
// applied exactly once and every instance starts.
func TestMigrateConcurrentStarts(t *testing.T) {
	const instances = 6
	forEachBackend(t, func(t *testing.T, cfg database.Config) {
		files := with(base, map[string]string{"11_more.sql": "INSERT INTO log (step) VALUES (11);"})
		fsys := portable(files)
		// A slow migration keeps the others waiting on the lock long
		// enough for every instance to have read the history before it.
		fsys["postgres/3_slow.sql"] = &fstest.MapFile{Data: []byte("SELECT pg_sleep(0.3);\nINSERT INTO log (step) VALUES (3);")}
		fsys["sqlite/3_slow.sql"] = &fstest.MapFile{Data: []byte(`INSERT INTO log (step)
SELECT 3 FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) SELECT max(x) FROM c);`)}
		dbs := make([]*database.DB, instances)
		for i := range dbs {
			dbs[i] = open(t, cfg)
		}
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			errs  = make([]error, instances)
		)
		for i, db := range dbs {
			wg.Go(func() {
				<-start
				errs[i] = db.Migrate(context.Background(), fsys)
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("instance %d: Migrate: %v", i, err)
			}
		}
		want := []string{"2", "3", "10", "11"}
		if got := column(t, dbs[0], `SELECT step FROM log ORDER BY step`); !slices.Equal(got, want) {
			t.Fatalf("log %q, want each migration once: %q", got, want)
		}
		if got := history(t, dbs[0]); len(got) != len(want)+1 {
			t.Fatalf("history %q", got)
		}
	})
}
