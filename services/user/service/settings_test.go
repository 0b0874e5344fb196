package service_test

import (
	"testing"

	"github.com/keelplatform/keel/internal/config"
	userservice "github.com/keelplatform/keel/services/user/service"
)

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
