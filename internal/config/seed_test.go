package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/config"
)

// seedDir holds the seed files of every environment.
var seedDir = filepath.Join("..", "..", "consul", "kv")

// userSeed is the schema the seed files consul/kv/<env>/user.yaml follow;
// the user service declares its own settings type with the same keys.
type userSeed struct {
	config.Process  `yaml:",inline"`
	TokenTTL        time.Duration `yaml:"token_ttl"`
	PasswordHashing struct {
		Time      uint32 `yaml:"time"`
		MemoryKiB uint32 `yaml:"memory_kib"`
		Threads   uint8  `yaml:"threads"`
	} `yaml:"password_hashing" keel:"static"`
	Database struct {
		Driver  string `yaml:"driver"`
		DataDir string `yaml:"data_dir"`
		DSN     string `yaml:"dsn"`
	} `yaml:"database" keel:"static"`
}

func (s userSeed) Validate() error {
	var errs []error
	errs = append(errs, s.Process.Validate())
	if s.TokenTTL <= 0 {
		errs = append(errs, &config.KeyError{Key: "token_ttl", Err: errors.New("must be positive")})
	}
	h := s.PasswordHashing
	if h.Time < 1 || h.Time > 64 || h.MemoryKiB < 8192 || h.MemoryKiB > 1<<20 || h.Threads < 1 {
		errs = append(errs, &config.KeyError{Key: "password_hashing", Err: fmt.Errorf("out of range: %+v", h)})
	}
	switch s.Database.Driver {
	case "sqlite":
		if s.Database.DataDir == "" {
			errs = append(errs, &config.KeyError{Key: "database/data_dir", Err: errors.New("required for sqlite")})
		}
	case "postgres":
	default:
		errs = append(errs, &config.KeyError{Key: "database/driver", Err: errors.New("want sqlite or postgres")})
	}
	return errors.Join(errs...)
}

// edgeSeed is the schema of consul/kv/<env>/edge.yaml.
type edgeSeed struct {
	config.Process `yaml:",inline"`
	AllowedOrigins []string `yaml:"allowed_origins"`
}

func (s edgeSeed) Validate() error {
	if len(s.AllowedOrigins) == 0 {
		return errors.Join(s.Process.Validate(), &config.KeyError{Key: "allowed_origins", Err: errors.New("must not be empty")})
	}
	return s.Process.Validate()
}

// TestSeedFiles checks the repository's seed files of every environment
// against the schemas above: no unknown key, every value in range, and
// every key given (a seed file documents the whole configuration).
func TestSeedFiles(t *testing.T) {
	t.Parallel()
	for _, env := range config.Envs() {
		entries, err := os.ReadDir(filepath.Join(seedDir, string(env)))
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 2 {
			t.Errorf("%s: %d files, want user.yaml and edge.yaml", env, len(entries))
		}
		t.Run(string(env), func(t *testing.T) {
			t.Parallel()
			user, err := config.Load(t.Context(), config.Options[userSeed]{
				Service: "user", Env: env, Dir: seedDir, LookupEnv: noEnv,
				Defaults: userSeed{Process: config.DefaultProcess()},
			})
			if err != nil {
				t.Fatal(err)
			}
			if user.TokenTTL == 0 || user.PasswordHashing.Time == 0 || user.Database.Driver == "" || user.FeatureFlags != nil {
				t.Errorf("user: a key is missing from the file: %+v", user)
			}
			edge, err := config.Load(t.Context(), config.Options[edgeSeed]{
				Service: "edge", Env: env, Dir: seedDir, LookupEnv: noEnv,
				Defaults: edgeSeed{Process: config.DefaultProcess()},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("user: %+v", user)
			t.Logf("edge: %+v", edge)
			if env == config.EnvProd && (user.Server.DrainDelay == 0 || edge.Server.DrainDelay == 0) {
				t.Errorf("prod: drain_delay should let balancers notice shutdown")
			}
		})
	}
}

func noEnv(string) (string, bool) { return "", false }
