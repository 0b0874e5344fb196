package service_test

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/keelplatform/keel/internal/config"
	paymentservice "github.com/keelplatform/keel/services/payment/service"
)

// seedDir holds the seed files, consul/kv/<env>/payment.yaml.
const seedDir = "../../../consul/kv"

func TestSettingsRejectOutOfRangeValues(t *testing.T) {
	s := paymentservice.DefaultSettings()
	s.Simulator.DeclineOverMinor = -1
	s.Simulator.DeclineUsers = []string{"5c1d9b6e-7f2a-4b3c-8d4e-1f2a3b4c5d6e", "bob"}
	s.Simulator.FailureRate = 1.5
	s.Simulator.Latency = -1
	s.Database.Driver = "mysql"
	s.Database.MaxOpenConns = 0
	err := s.Validate()
	want := map[string]bool{
		"simulator/decline_over_minor": true, "simulator/decline_users": true, "simulator/failure_rate": true,
		"simulator/latency": true, "database/driver": true, "database/max_open_conns": true,
	}
	for _, k := range config.ErrorKeys(err) {
		delete(want, k)
	}
	if len(want) != 0 {
		t.Fatalf("keys not named: %v (error: %v)", want, err)
	}

	s = paymentservice.DefaultSettings()
	s.Simulator.FailureRate = math.NaN()
	if keys := config.ErrorKeys(s.Validate()); len(keys) != 1 || keys[0] != "simulator/failure_rate" {
		t.Fatalf("a NaN failure rate: keys %v", keys)
	}
	if err := paymentservice.DefaultSettings().Validate(); err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
}

// TestSeedFiles checks payment.yaml of every environment against the
// settings type, as `keel config push` and the process read it.
func TestSeedFiles(t *testing.T) {
	addrs := map[config.Env]string{config.EnvLocal: "127.0.0.1:8083", config.EnvTest: "127.0.0.1:0", config.EnvProd: "0.0.0.0:8080"}
	for _, env := range config.Envs() {
		t.Run(string(env), func(t *testing.T) {
			path := filepath.Join(seedDir, string(env), paymentservice.Name+".yaml")
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := config.CheckFile(path, data, paymentservice.DefaultSettings()); err != nil {
				t.Fatal(err)
			}
			s, err := config.Load(context.Background(), config.Options[paymentservice.Settings]{
				Service: paymentservice.Name, Env: env, Dir: seedDir, Defaults: paymentservice.DefaultSettings(),
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
			if env == config.EnvProd && s.Server.DrainDelay <= 0 {
				t.Errorf("prod: server/drain_delay is %v", s.Server.DrainDelay)
			}
			if sim := s.Simulator; sim.DeclineOverMinor != 0 || len(sim.DeclineUsers) != 0 || sim.FailureRate != 0 || sim.Latency != 0 {
				t.Errorf("simulator %+v, want no declines, failures or latency", sim)
			}
		})
	}
}
