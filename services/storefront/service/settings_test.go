package service_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/config"
	storefrontservice "github.com/keelplatform/keel/services/storefront/service"
)

// seedDir holds the seed files, consul/kv/<env>/storefront.yaml.
const seedDir = "../../../consul/kv"

func TestSettingsRejectOutOfRangeValues(t *testing.T) {
	if err := storefrontservice.DefaultSettings().Validate(); err != nil {
		t.Fatalf("the defaults do not validate: %v", err)
	}
	cases := []struct {
		name   string
		change func(s *storefrontservice.Settings)
		keys   []string
	}{
		{"every timeout zero", func(s *storefrontservice.Settings) {
			s.Dependencies.Inventory.Timeout = 0
			s.Dependencies.Order.Timeout = 0
			s.Dependencies.Payment.Timeout = 0
			s.Dependencies.User.Timeout = 0
		}, []string{"dependencies/inventory/timeout", "dependencies/order/timeout", "dependencies/payment/timeout", "dependencies/user/timeout"}},
		{"a timeout over a minute", func(s *storefrontservice.Settings) {
			s.Dependencies.Payment.Timeout = time.Minute + time.Millisecond
		}, []string{"dependencies/payment/timeout"}},
		{"a negative timeout", func(s *storefrontservice.Settings) {
			s.Dependencies.User.Timeout = -time.Second
		}, []string{"dependencies/user/timeout"}},
		{"no item lookup at once", func(s *storefrontservice.Settings) {
			s.ItemLookups.MaxConcurrent = 0
		}, []string{"item_lookups/max_concurrent"}},
		{"too many item lookups at once", func(s *storefrontservice.Settings) {
			s.ItemLookups.MaxConcurrent = 101
		}, []string{"item_lookups/max_concurrent"}},
		{"the bounds themselves", func(s *storefrontservice.Settings) {
			s.Dependencies.Inventory.Timeout = time.Millisecond
			s.Dependencies.Order.Timeout = time.Minute
			s.ItemLookups.MaxConcurrent = 100
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := storefrontservice.DefaultSettings()
			tc.change(&s)
			keys := config.ErrorKeys(s.Validate())
			slices.Sort(keys)
			if !slices.Equal(keys, tc.keys) {
				t.Fatalf("keys named %v, want %v (error: %v)", keys, tc.keys, s.Validate())
			}
		})
	}
}

// TestSeedFiles checks storefront.yaml of every environment against the
// settings type, as `keel config push` and the process read it.
func TestSeedFiles(t *testing.T) {
	addrs := map[config.Env]string{config.EnvLocal: "127.0.0.1:8085", config.EnvTest: "127.0.0.1:0", config.EnvProd: "0.0.0.0:8080"}
	for _, env := range config.Envs() {
		t.Run(string(env), func(t *testing.T) {
			path := filepath.Join(seedDir, string(env), storefrontservice.Name+".yaml")
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := config.CheckFile(path, data, storefrontservice.DefaultSettings()); err != nil {
				t.Fatal(err)
			}
			s, err := config.Load(context.Background(), config.Options[storefrontservice.Settings]{
				Service: storefrontservice.Name, Env: env, Dir: seedDir, Defaults: storefrontservice.DefaultSettings(),
				LookupEnv: func(string) (string, bool) { return "", false },
			})
			if err != nil {
				t.Fatal(err)
			}
			if s.Server.Addr != addrs[env] {
				t.Errorf("server/addr %q, want %q", s.Server.Addr, addrs[env])
			}
			def := storefrontservice.DefaultSettings()
			if s.Dependencies != def.Dependencies || s.ItemLookups != def.ItemLookups {
				t.Errorf("dependencies %+v, item_lookups %+v; want the defaults %+v, %+v",
					s.Dependencies, s.ItemLookups, def.Dependencies, def.ItemLookups)
			}
		})
	}
}
