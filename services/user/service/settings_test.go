package service_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/keelplatform/keel/internal/config"
	userservice "github.com/keelplatform/keel/services/user/service"
)

// TestSeedFilesAreValid checks the user service's file of every
// environment against its settings type and rules.
func TestSeedFilesAreValid(t *testing.T) {
	for _, env := range config.Envs() {
		path := filepath.Join("..", "..", "..", "consul", "kv", string(env), userservice.Name+".yaml")
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := config.CheckFile(path, data, userservice.DefaultSettings()); err != nil {
			t.Errorf("%s: %v", env, err)
		}
	}
}

func TestSettingsRejectOutOfRangeValues(t *testing.T) {
	s := userservice.DefaultSettings()
	s.TokenTTL = 0
	s.PasswordHashing.MemoryKiB = 16
	s.Database.Driver = "mysql"
	err := s.Validate()
	keys := config.ErrorKeys(err)
	want := map[string]bool{"token_ttl": true, "password_hashing/memory_kib": true, "database/driver": true}
	for _, k := range keys {
		delete(want, k)
	}
	if len(want) != 0 {
		t.Fatalf("keys not named: %v (error: %v)", want, err)
	}
}
