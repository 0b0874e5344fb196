// Package database opens the SQL database a service stores its data in and
// hands it to ent.
//
// Two drivers are supported: SQLite (the embedded default, one file per
// service, pure Go through modernc.org/sqlite) and PostgreSQL (production,
// through the pgx stdlib driver). ent cannot open modernc's SQLite by name, so
// both are opened with database/sql and wrapped with [entsql.OpenDB].
//
// A service's schema is versioned SQL, not ent's auto-migration: it embeds
// one directory of migration files per driver and applies them at start
// with [DB.Migrate], which records them in [MigrationsTable] and refuses
// to start on a changed history. A test of the service calls
// [CheckMigrationsMatchSchema] on each driver, so the migrations and the
// ent schema cannot drift apart.
package database

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
	_ "modernc.org/sqlite"             // registers the "sqlite" driver
)

// Driver names accepted in [Config.Driver].
const (
	// DriverSQLite stores data in a SQLite file under [Config.DataDir].
	DriverSQLite = "sqlite"
	// DriverPostgres connects to PostgreSQL at [Config.DSN].
	DriverPostgres = "postgres"
)

// DefaultMaxOpenConns bounds the connections a DB opens at once, unless
// its owner sets another bound (the payment service's
// database/max_open_conns); keep instances x bound below PostgreSQL's
// max_connections.
const DefaultMaxOpenConns = 16

// maxIdleConns and maxIdleTime bound the connections a DB keeps open
// while idle (at most its open connections' bound).
const (
	maxIdleConns = DefaultMaxOpenConns
	maxIdleTime  = 5 * time.Minute
)

// pingTimeout bounds the connectivity check done by [Open] when the caller's
// context has no deadline of its own.
const pingTimeout = 10 * time.Second

// Config says which database to open.
type Config struct {
	// Driver is DriverSQLite (the default when empty) or DriverPostgres.
	Driver string
	// DSN is the PostgreSQL connection string, URL or key=value form, for
	// example "postgres://user:pass@host:5432/db?sslmode=disable". It is
	// ignored for SQLite.
	DSN string
	// DataDir is the directory holding SQLite files; it is created with
	// mode 0700 if missing. It is ignored for PostgreSQL.
	DataDir string
	// Name is the SQLite file's base name: the file is DataDir/Name.db.
	// It is ignored for PostgreSQL.
	Name string
}

// DB is an open database ready for ent. It is safe for concurrent use.
type DB struct {
	sqlDB   *sql.DB
	driver  *entsql.Driver
	dialect string
}

// Open opens the database cfg describes and pings it, so a DB returned
// without error is reachable. Errors never contain the DSN's password.
func Open(ctx context.Context, cfg Config) (*DB, error) {
	var (
		sqlDB *sql.DB
		dial  string
		err   error
	)
	switch cfg.Driver {
	case "", DriverSQLite:
		dial = dialect.SQLite
		sqlDB, err = openSQLite(cfg)
	case DriverPostgres:
		dial = dialect.Postgres
		sqlDB, err = openPostgres(cfg)
	default:
		return nil, fmt.Errorf("database: unknown driver %q (want %q or %q)", cfg.Driver, DriverSQLite, DriverPostgres)
	}
	if err != nil {
		return nil, err
	}
	// database/sql keeps 2 idle connections unless told otherwise: with a
	// few concurrent transactions every other one opened a new PostgreSQL
	// session (a process fork), which cut PlaceOrder with 16 callers to a
	// quarter. Idle connections close after a while of disuse.
	// Nor does it bound open connections: a burst of calls would open as
	// many, past PostgreSQL's max_connections (100 by default), and fail.
	// Calls past the bound wait for a free connection instead.
	sqlDB.SetMaxOpenConns(DefaultMaxOpenConns)
	sqlDB.SetMaxIdleConns(maxIdleConns)
	sqlDB.SetConnMaxIdleTime(maxIdleTime)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, pingTimeout)
		defer cancel()
	}
	if err := sqlDB.PingContext(ctx); err != nil {
		_ = sqlDB.Close()
		return nil, fmt.Errorf("database: ping %s %s: %w", dial, describe(cfg), redactErr(err, cfg.DSN))
	}
	return &DB{sqlDB: sqlDB, driver: entsql.OpenDB(dial, sqlDB), dialect: dial}, nil
}

func openSQLite(cfg Config) (*sql.DB, error) {
	if cfg.DataDir == "" || cfg.Name == "" {
		return nil, errors.New("database: sqlite needs both DataDir and Name")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("database: create data dir: %w", err)
	}
	path := filepath.Join(cfg.DataDir, cfg.Name+".db")
	dsn := "file:" + path +
		"?_pragma=foreign_keys(1)" +
		"&_pragma=journal_mode(WAL)" +
		"&_pragma=busy_timeout(5000)" +
		"&_pragma=synchronous(NORMAL)" +
		// Write times as "2006-01-02 15:04:05.999999999-07:00", which
		// SQLite's date functions read and which sorts as text for times in
		// one zone; the driver's default, time.Time.String, may carry a
		// monotonic clock suffix that breaks equality.
		"&_time_format=sqlite"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("database: open sqlite %s: %w", path, err)
	}
	return db, nil
}

func openPostgres(cfg Config) (*sql.DB, error) {
	if cfg.DSN == "" {
		return nil, errors.New("database: postgres needs a DSN")
	}
	db, err := sql.Open("pgx", cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("database: open postgres %s: %w", Redact(cfg.DSN), redactErr(err, cfg.DSN))
	}
	return db, nil
}

// describe names the database in error messages without revealing secrets.
func describe(cfg Config) string {
	if cfg.Driver == DriverPostgres {
		return Redact(cfg.DSN)
	}
	return filepath.Join(cfg.DataDir, cfg.Name+".db")
}

// Driver returns the ent driver, to pass to a generated client's
// ent.Driver option.
func (db *DB) Driver() dialect.Driver { return db.driver }

// Dialect returns the ent dialect name: [dialect.SQLite] or
// [dialect.Postgres].
func (db *DB) Dialect() string { return db.dialect }

// Close closes the database and its connection pool.
func (db *DB) Close() error {
	if err := db.sqlDB.Close(); err != nil {
		return fmt.Errorf("database: close: %w", err)
	}
	return nil
}

var kvPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// Redact returns dsn with any password replaced by "xxxxx", for logs and
// errors. It understands URL DSNs (postgres://user:pass@host/db) and
// key=value DSNs (password=pass).
func Redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" && u.Host != "" {
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	return kvPassword.ReplaceAllString(dsn, "${1}xxxxx")
}

// redactErr hides the DSN's password if a driver echoed it in an error.
func redactErr(err error, dsn string) error {
	pw := password(dsn)
	if pw == "" || !strings.Contains(err.Error(), pw) {
		return err
	}
	return redactedError{msg: strings.ReplaceAll(err.Error(), pw, "xxxxx"), cause: err}
}

// redactedError keeps the original error for errors.Is/As while printing a
// message without the password.
type redactedError struct {
	msg   string
	cause error
}

func (e redactedError) Error() string { return e.msg }
func (e redactedError) Unwrap() error { return e.cause }

func password(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		if pw, ok := u.User.Password(); ok {
			return pw
		}
		return u.Query().Get("password")
	}
	if m := kvPassword.FindStringSubmatch(dsn); m != nil {
		return m[2]
	}
	return ""
}
