package database_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/database"
)

func TestSettings(t *testing.T) {
	env := func(vars map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	}
	for _, tc := range []struct {
		name     string
		settings database.Settings
		env      map[string]string
		badKey   string // the key Validate names, if any
		want     database.Config
		wantErr  string // what Config's error names, if any
	}{
		{name: "default", settings: database.DefaultSettings(),
			want: database.Config{Driver: database.DriverSQLite, DataDir: "data", Name: "order"}},
		{name: "sqlite without a directory", settings: database.Settings{Driver: database.DriverSQLite}, badKey: "database/data_dir"},
		{name: "unknown driver", settings: database.Settings{Driver: "mysql"}, badKey: "database/driver"},
		{name: "postgres", settings: database.Settings{Driver: database.DriverPostgres},
			env:  map[string]string{database.DSNVar: "postgres://keel@127.0.0.1/orders"},
			want: database.Config{Driver: database.DriverPostgres, DSN: "postgres://keel@127.0.0.1/orders", Name: "order"}},
		{name: "postgres without a DSN", settings: database.Settings{Driver: database.DriverPostgres}, wantErr: database.DSNVar},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.settings.Validate("database")
			if tc.badKey != "" {
				var ke *config.KeyError
				if len(errs) != 1 || !errors.As(errs[0], &ke) || ke.Key != tc.badKey {
					t.Fatalf("Validate: %v, want an error naming %s", errs, tc.badKey)
				}
				return
			}
			if len(errs) > 0 {
				t.Fatalf("Validate: %v", errs)
			}
			got, err := tc.settings.Config("order", env(tc.env))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Config: %v, want an error naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Config: %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}
