package database

import (
	"fmt"

	"github.com/keelplatform/keel/internal/config"
)

// DSNVar is the environment variable holding the PostgreSQL connection
// string of a service whose database/driver is postgres. It is a secret:
// never a setting, never in KV, never logged.
const DSNVar = "KEEL_DATABASE_DSN"

// Settings is the database section of a service's settings (the keys
// database/driver and database/data_dir of its seed file): where the
// service keeps its data. Each service has a database of its own.
type Settings struct {
	// Driver is "sqlite" (a file under DataDir) or "postgres" (the DSN in
	// the environment variable KEEL_DATABASE_DSN).
	Driver string `yaml:"driver"`
	// DataDir is the directory of the SQLite file <service>.db.
	DataDir string `yaml:"data_dir"`
}

// DefaultSettings are SQLite under "data", relative to the working
// directory.
func DefaultSettings() Settings {
	return Settings{Driver: DriverSQLite, DataDir: "data"}
}

// Validate reports every setting out of range, naming its key under
// section (e.g. "database").
func (s Settings) Validate(section string) []error {
	switch s.Driver {
	case DriverSQLite:
		if s.DataDir == "" {
			return []error{&config.KeyError{Key: section + "/data_dir", Err: fmt.Errorf("must be set for sqlite")}}
		}
	case DriverPostgres:
	default:
		return []error{&config.KeyError{Key: section + "/driver", Err: fmt.Errorf("must be sqlite or postgres, got %q", s.Driver)}}
	}
	return nil
}

// Config returns the database of service name that s describes, reading
// the DSN of PostgreSQL with secret (a process's environment).
func (s Settings) Config(name string, secret func(string) (string, bool)) (Config, error) {
	cfg := Config{Driver: s.Driver, DataDir: s.DataDir, Name: name}
	if s.Driver == DriverPostgres {
		cfg.DSN, _ = secret(DSNVar)
		if cfg.DSN == "" {
			return Config{}, fmt.Errorf("database/driver is postgres but %s is not set", DSNVar)
		}
	}
	return cfg, nil
}
