package service_test

import (
	"context"
	"io"
	"testing"

	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	userservice "github.com/keelplatform/keel/services/user/service"
)

// startUser boots the user service as its command does, on the test
// environment's configuration, a data directory of its own and a free
// loopback port, with env's variables on top. It stops when the test
// ends.
func startUser(t *testing.T, env map[string]string) (*boot.Running, error) {
	t.Helper()
	vars := map[string]string{
		"KEEL_DATABASE_DATA_DIR": t.TempDir(),
		"KEEL_SERVER_ADDR":       "127.0.0.1:0",
	}
	for k, v := range env {
		vars[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := boot.Start(ctx, userservice.Service(), boot.Options{
		Env:       config.EnvTest,
		ConfigDir: "../../../consul/kv",
		Log:       io.Discard,
		LookupEnv: func(k string) (string, bool) { v, ok := vars[k]; return v, ok },
	})
	if err != nil {
		cancel()
		return nil, err
	}
	t.Cleanup(func() { cancel(); _ = r.Wait() })
	return r, nil
}
