package service_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/config"
	orderservice "github.com/keelplatform/keel/services/order/service"
)

// seedDir holds the seed files, consul/kv/<env>/order.yaml.
const seedDir = "../../../consul/kv"

func TestSettingsRejectOutOfRangeValues(t *testing.T) {
	if err := orderservice.DefaultSettings().Validate(); err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
	s := orderservice.DefaultSettings()
	s.Saga.LeaseTTL = time.Millisecond
	s.Saga.MaxAttempts = 0
	s.Saga.Backoff = 0
	s.Saga.MaxBackoff = time.Hour
	s.Saga.CompensationMaxBackoff = 2 * time.Hour
	s.Saga.PollInterval = time.Millisecond
	s.Saga.RecoveryInterval = 0
	s.Database.Driver = "mysql"
	keys := config.ErrorKeys(s.Validate())
	want := map[string]bool{
		"saga/lease_ttl": true, "saga/max_attempts": true, "saga/backoff": true, "saga/max_backoff": true,
		"saga/compensation_max_backoff": true, "saga/poll_interval": true, "saga/recovery_interval": true,
		"database/driver": true,
	}
	for _, k := range keys {
		delete(want, k)
	}
	if len(want) != 0 {
		t.Fatalf("keys not named: %v (named: %v)", want, keys)
	}
	s = orderservice.DefaultSettings()
	s.Saga.MaxBackoff = s.Saga.Backoff / 2
	s.Database.DataDir = ""
	keys = config.ErrorKeys(s.Validate())
	if len(keys) != 2 || keys[0] != "saga/max_backoff" || keys[1] != "database/data_dir" {
		t.Fatalf("a max backoff below backoff and no data dir: keys %v", keys)
	}
}

// TestSeedFiles checks order.yaml of every environment against the
// settings type, as `keel config push` and the process read it.
func TestSeedFiles(t *testing.T) {
	addrs := map[config.Env]string{config.EnvLocal: "127.0.0.1:8084", config.EnvTest: "127.0.0.1:0", config.EnvProd: "0.0.0.0:8080"}
	for _, env := range config.Envs() {
		t.Run(string(env), func(t *testing.T) {
			path := filepath.Join(seedDir, string(env), orderservice.Name+".yaml")
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := config.CheckFile(path, data, orderservice.DefaultSettings()); err != nil {
				t.Fatal(err)
			}
			s, err := config.Load(context.Background(), config.Options[orderservice.Settings]{
				Service: orderservice.Name, Env: env, Dir: seedDir, Defaults: orderservice.DefaultSettings(),
				LookupEnv: func(string) (string, bool) { return "", false },
			})
			if err != nil {
				t.Fatal(err)
			}
			if s.Server.Addr != addrs[env] {
				t.Errorf("server/addr %q, want %q", s.Server.Addr, addrs[env])
			}
			if wantPG := env == config.EnvProd; (s.Database.Driver == "postgres") != wantPG {
				t.Errorf("database/driver %q", s.Database.Driver)
			}
			if s.Saga != orderservice.DefaultSettings().Saga {
				t.Errorf("saga %+v, want the defaults %+v", s.Saga, orderservice.DefaultSettings().Saga)
			}
		})
	}
}
