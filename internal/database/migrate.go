package database

import (
	"cmp"
	"context"
	"crypto/sha256"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"entgo.io/ent/dialect"
)

// MigrationsTable is the table [DB.Migrate] records applied migrations in:
// one row per migration with its version, name, checksum and applied_at.
const MigrationsTable = "schema_migrations"

// migrationLockKey is the PostgreSQL advisory lock [DB.Migrate] holds while
// it runs ("keelmigr" in ASCII). Advisory locks are scoped to one
// database, so services with databases of their own never wait for each
// other.
const migrationLockKey int64 = 0x6b65656c6d696772

var (
	// ErrMigrationChanged reports that a migration recorded as applied no
	// longer has the checksum it was applied with: its file was edited.
	// Applied migrations are history; change the schema with a new one.
	ErrMigrationChanged = errors.New("applied migration was changed")
	// ErrMigrationMissing reports that a migration recorded as applied has
	// no file any more, for example when a binary older than the database
	// starts.
	ErrMigrationMissing = errors.New("applied migration is missing")
	// ErrMigrationOutOfOrder reports a pending migration whose version is
	// lower than one already applied; applying it would give this database
	// a schema that a fresh one, migrated in order, does not have.
	ErrMigrationOutOfOrder = errors.New("pending migration is older than an applied one")
)

// migrationFile matches a migration's file name: a version number, an
// underscore, a name, ".sql".
var migrationFile = regexp.MustCompile(`^([0-9]+)_([A-Za-z0-9_-]+)\.sql$`)

// migration is one migration file.
type migration struct {
	version  int64
	name     string
	file     string
	sql      string
	checksum string
}

func (m migration) String() string { return fmt.Sprintf("migration %d %q", m.version, m.name) }

// appliedMigration is one row of the migrations table.
type appliedMigration struct {
	version  int64
	name     string
	checksum string
}

// Migrate brings the database's schema up to date by applying, in version
// order, the migrations in migrations that it has not applied yet. A
// service calls it once at start, before it serves, and fails to start if
// it returns an error.
//
// migrations holds one directory per driver, named after [DriverSQLite] and
// [DriverPostgres]; Migrate reads the one for this database. Each file in
// it is named VERSION_NAME.sql, for example 0001_init.sql: VERSION is a
// positive number, unique in the directory, that orders the migrations;
// NAME is letters, digits, '_' and '-'. Any other .sql file is an error;
// other files and subdirectories are ignored. A service embeds them:
//
//	//go:embed migrations
//	var files embed.FS
//
//	migrations, _ := fs.Sub(files, "migrations")
//	err := db.Migrate(ctx, migrations)
//
// Each migration runs in a transaction of its own, together with the row
// that records it in [MigrationsTable] (version, name, SHA-256 checksum of
// the file, applied_at): it is applied completely or not at all. So a
// migration cannot hold statements that refuse to run in a transaction,
// such as PostgreSQL's CREATE INDEX CONCURRENTLY or SQLite's PRAGMA
// foreign_keys (use PRAGMA defer_foreign_keys when rebuilding a table),
// nor BEGIN or COMMIT of its own.
//
// Before applying anything, Migrate checks the history and refuses to go
// on, naming the version, if an applied migration's file was changed
// ([ErrMigrationChanged]) or is gone ([ErrMigrationMissing]), or if a
// pending migration is older than an applied one
// ([ErrMigrationOutOfOrder]). It never drops or rewrites anything by
// itself: what changes is what the files say.
//
// Several instances may start at once against one database. On PostgreSQL,
// Migrate holds a session advisory lock (pg_advisory_lock) for the whole
// run, so one instance migrates while the others wait, then find nothing
// left to do. On SQLite, each migration's transaction begins with BEGIN
// IMMEDIATE, which takes the file's write lock, and checks again that the
// migration is not recorded before applying it.
//
// Migrate waits for the lock, and runs, for as long as ctx allows.
func (db *DB) Migrate(ctx context.Context, migrations fs.FS) error {
	ops, err := db.migrationOps()
	if err != nil {
		return err
	}
	files, err := readMigrations(migrations, ops.dir)
	if err != nil {
		return err
	}
	conn, err := db.sqlDB.Conn(ctx)
	if err != nil {
		return fmt.Errorf("database: migrate: %w", err)
	}
	// The lock and the transactions belong to this connection's session:
	// every statement below runs on it.
	defer conn.Close()
	unlock, err := ops.lock(ctx, conn)
	if err != nil {
		return fmt.Errorf("database: migrate: %w", err)
	}
	defer unlock()

	pending, err := pendingMigrations(ctx, conn, ops, files)
	if err != nil {
		return err
	}
	for _, m := range pending {
		if err := apply(ctx, conn, ops, m); err != nil {
			return err
		}
	}
	return nil
}

// migrationOps says how to migrate this database's dialect.
type migrationOps struct {
	dir         string // directory of the dialect's migrations
	createTable string // creates MigrationsTable if missing
	begin       string // begins a migration's transaction
	insert      string // records a migration: version, name, checksum
	selectOne   string // the checksum recorded for a version
	lock        func(context.Context, *sql.Conn) (unlock func(), err error)
}

func (db *DB) migrationOps() (migrationOps, error) {
	switch db.dialect {
	case dialect.SQLite:
		return migrationOps{
			dir: DriverSQLite,
			createTable: `CREATE TABLE IF NOT EXISTS ` + MigrationsTable + ` (
	version INTEGER NOT NULL PRIMARY KEY,
	name TEXT NOT NULL,
	checksum TEXT NOT NULL,
	applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)`,
			// IMMEDIATE takes the write lock now, so no other process can
			// apply the migration between our check and our write.
			begin:     "BEGIN IMMEDIATE",
			insert:    `INSERT INTO ` + MigrationsTable + ` (version, name, checksum) VALUES (?, ?, ?)`,
			selectOne: `SELECT checksum FROM ` + MigrationsTable + ` WHERE version = ?`,
			lock:      func(context.Context, *sql.Conn) (func(), error) { return func() {}, nil },
		}, nil
	case dialect.Postgres:
		return migrationOps{
			dir: DriverPostgres,
			createTable: `CREATE TABLE IF NOT EXISTS ` + MigrationsTable + ` (
	version bigint NOT NULL PRIMARY KEY,
	name text NOT NULL,
	checksum text NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now()
)`,
			begin:     "BEGIN",
			insert:    `INSERT INTO ` + MigrationsTable + ` (version, name, checksum) VALUES ($1, $2, $3)`,
			selectOne: `SELECT checksum FROM ` + MigrationsTable + ` WHERE version = $1`,
			lock:      lockPostgres,
		}, nil
	default:
		return migrationOps{}, fmt.Errorf("database: migrate: unsupported dialect %q", db.dialect)
	}
}

// lockPostgres takes the migration advisory lock for conn's session,
// waiting while another instance holds it.
func lockPostgres(ctx context.Context, conn *sql.Conn) (func(), error) {
	if _, err := conn.ExecContext(ctx, `SELECT pg_advisory_lock($1)`, migrationLockKey); err != nil {
		// The lock may have been granted just as ctx ended: never hand a
		// session that might hold it back to the pool.
		discard(conn)
		return nil, fmt.Errorf("take advisory lock: %w", err)
	}
	return func() {
		// Unlock even when ctx ended, but never wait on a dead server.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pingTimeout)
		defer cancel()
		var released bool
		err := conn.QueryRowContext(ctx, `SELECT pg_advisory_unlock($1)`, migrationLockKey).Scan(&released)
		if err != nil || !released {
			// Closing the session releases the lock.
			discard(conn)
		}
	}, nil
}

// busyRetryInterval is how often [execWaiting] tries again for SQLite's
// write lock once the driver's busy timeout has run out.
const busyRetryInterval = 50 * time.Millisecond

// execWaiting runs query, which takes SQLite's write lock, and waits for
// the lock for as long as ctx allows, not just for the busy timeout the
// connection was opened with: another instance may be running a long
// migration.
func execWaiting(ctx context.Context, conn *sql.Conn, query string) error {
	for {
		_, err := conn.ExecContext(ctx, query)
		if !isBusy(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (waiting for the write lock: %w)", err, context.Cause(ctx))
		case <-time.After(busyRetryInterval):
		}
	}
}

// discard closes conn's underlying connection instead of returning it to
// the pool, which ends its session with any lock or transaction it holds.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
}

// readMigrations reads and checks the migration files in dir, in version
// order.
func readMigrations(fsys fs.FS, dir string) ([]migration, error) {
	if fsys == nil {
		return nil, errors.New("database: migrate: no migrations given")
	}
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("database: migrate: read %s migrations: %w", dir, err)
	}
	var files []migration
	seen := map[int64]string{}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		match := migrationFile.FindStringSubmatch(e.Name())
		if match == nil {
			return nil, fmt.Errorf("database: migrate: %s/%s: name must be VERSION_NAME.sql, for example 0001_init.sql", dir, e.Name())
		}
		version, err := strconv.ParseInt(match[1], 10, 64)
		if err != nil || version <= 0 {
			return nil, fmt.Errorf("database: migrate: %s/%s: version must be a positive 64-bit number", dir, e.Name())
		}
		if other, ok := seen[version]; ok {
			return nil, fmt.Errorf("database: migrate: %s: %s and %s have the same version %d", dir, other, e.Name(), version)
		}
		seen[version] = e.Name()
		body, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("database: migrate: %w", err)
		}
		sum := sha256.Sum256(body)
		files = append(files, migration{
			version:  version,
			name:     match[2],
			file:     path.Join(dir, e.Name()),
			sql:      string(body),
			checksum: hex.EncodeToString(sum[:]),
		})
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("database: migrate: no migrations in %s/", dir)
	}
	slices.SortFunc(files, func(a, b migration) int { return cmp.Compare(a.version, b.version) })
	return files, nil
}

// pendingMigrations creates the migrations table if missing, checks the
// history it holds against files and returns the migrations to apply, in
// order.
func pendingMigrations(ctx context.Context, conn *sql.Conn, ops migrationOps, files []migration) ([]migration, error) {
	if err := execWaiting(ctx, conn, ops.createTable); err != nil {
		return nil, fmt.Errorf("database: migrate: create %s: %w", MigrationsTable, err)
	}
	applied, err := appliedMigrations(ctx, conn)
	if err != nil {
		return nil, err
	}
	return plan(files, applied)
}

// appliedMigrations reads the migrations table.
func appliedMigrations(ctx context.Context, conn *sql.Conn) (map[int64]appliedMigration, error) {
	rows, err := conn.QueryContext(ctx, `SELECT version, name, checksum FROM `+MigrationsTable)
	if err != nil {
		return nil, fmt.Errorf("database: migrate: read %s: %w", MigrationsTable, err)
	}
	defer rows.Close()
	applied := map[int64]appliedMigration{}
	for rows.Next() {
		var a appliedMigration
		if err := rows.Scan(&a.version, &a.name, &a.checksum); err != nil {
			return nil, fmt.Errorf("database: migrate: read %s: %w", MigrationsTable, err)
		}
		applied[a.version] = a
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("database: migrate: read %s: %w", MigrationsTable, err)
	}
	return applied, nil
}

// plan checks the applied history against the files and returns the
// migrations to apply, in order.
func plan(files []migration, applied map[int64]appliedMigration) ([]migration, error) {
	byVersion := make(map[int64]migration, len(files))
	for _, m := range files {
		byVersion[m.version] = m
	}
	var versions []int64
	for v := range applied {
		versions = append(versions, v)
	}
	slices.Sort(versions)
	var latest int64
	for _, v := range versions {
		a := applied[v]
		m, ok := byVersion[v]
		if !ok {
			return nil, fmt.Errorf("database: migrate: migration %d %q is recorded in %s but has no file: %w", v, a.name, MigrationsTable, ErrMigrationMissing)
		}
		if m.name != a.name {
			return nil, fmt.Errorf("database: migrate: %s (%s) was applied as %q: %w; undo the rename",
				m, m.file, a.name, ErrMigrationChanged)
		}
		if m.checksum != a.checksum {
			return nil, fmt.Errorf("database: migrate: %s (%s) differs from the one applied (file checksum %s, recorded %s): %w; undo the edit and add a new migration instead",
				m, m.file, m.checksum, a.checksum, ErrMigrationChanged)
		}
		latest = v
	}
	var pending []migration
	for _, m := range files {
		if _, ok := applied[m.version]; ok {
			continue
		}
		if m.version < latest {
			return nil, fmt.Errorf("database: migrate: %s (%s) is not applied but migration %d is: %w; give it a version after %d",
				m, m.file, latest, ErrMigrationOutOfOrder, latest)
		}
		pending = append(pending, m)
	}
	return pending, nil
}

// apply runs one migration and records it in one transaction, unless
// another process recorded it meanwhile.
func apply(ctx context.Context, conn *sql.Conn, ops migrationOps, m migration) (err error) {
	if err := execWaiting(ctx, conn, ops.begin); err != nil {
		return fmt.Errorf("database: migrate: %s: begin: %w", m, err)
	}
	defer func() {
		if err == nil {
			return
		}
		if _, rbErr := conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK"); rbErr != nil {
			// A session left inside a transaction must not go back to
			// the pool.
			discard(conn)
		}
	}()
	var recorded string
	switch err := conn.QueryRowContext(ctx, ops.selectOne, m.version).Scan(&recorded); {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return fmt.Errorf("database: migrate: %s: read %s: %w", m, MigrationsTable, err)
	case recorded != m.checksum:
		return fmt.Errorf("database: migrate: %s (%s) was applied meanwhile with another content (file checksum %s, recorded %s): %w",
			m, m.file, m.checksum, recorded, ErrMigrationChanged)
	default:
		// Another process applied it while we waited for the write lock.
		_, err := conn.ExecContext(ctx, "ROLLBACK")
		if err != nil {
			return fmt.Errorf("database: migrate: %s: %w", m, err)
		}
		return nil
	}
	if _, err := conn.ExecContext(ctx, m.sql); err != nil {
		return fmt.Errorf("database: migrate: %s (%s) failed, nothing of it was applied: %w", m, m.file, err)
	}
	if _, err := conn.ExecContext(ctx, ops.insert, m.version, m.name, m.checksum); err != nil {
		return fmt.Errorf("database: migrate: %s: record in %s: %w", m, MigrationsTable, err)
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		return fmt.Errorf("database: migrate: %s: commit: %w", m, err)
	}
	return nil
}
