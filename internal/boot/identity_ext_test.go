package boot_test

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
)

// syncBuffer is a log destination safe for the process's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startTiny boots the tiny service with the environment vars (KEEL_ENV
// among them) and no configuration files, and returns the registry it
// registers in, its logs, and how its start went. A process that started
// is stopped when the test ends.
func startTiny(t *testing.T, vars map[string]string) (*discovery.Static, *syncBuffer, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	registry := discovery.NewStatic()
	logs := &syncBuffer{}
	var watcher *config.Watcher[tinySettings]
	r, err := boot.Start(ctx, tinyService(&watcher), boot.Options{
		ConfigDir: t.TempDir() + "/none", // no files: built-in defaults
		Backend:   boot.Static{Discovery: registry},
		Log:       logs,
		LookupEnv: func(name string) (string, bool) { v, ok := vars[name]; return v, ok },
	})
	if err != nil {
		cancel()
		return registry, logs, err
	}
	t.Cleanup(func() {
		cancel()
		if err := r.Wait(); err != nil {
			t.Error(err)
		}
	})
	return registry, logs, nil
}

// TestProdRefusesToStartWithoutIdentityKey: outside local and test, a
// process without the identity key would believe no identity and require
// none, answering anyone who reaches it; it does not start, and says what
// to set. With the key it starts.
func TestProdRefusesToStartWithoutIdentityKey(t *testing.T) {
	t.Parallel()
	registry, _, err := startTiny(t, map[string]string{config.EnvVar: "prod"})
	if err == nil {
		t.Fatal("a prod process started without " + auth.IdentityKeyVar)
	}
	for _, want := range []string{auth.IdentityKeyVar + " is not set", "at least 32 bytes", "the edge", "set " + auth.IdentityKeyVar} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal %q does not say %q", err, want)
		}
	}
	if instances, _ := registry.Instances("tiny"); len(instances) != 0 {
		t.Errorf("the refused process registered %v", instances)
	}

	registry, logs, err := startTiny(t, map[string]string{config.EnvVar: "prod", auth.IdentityKeyVar: strings.Repeat("i", auth.MinKeyLen)})
	if err != nil {
		t.Fatalf("with %s set: %v", auth.IdentityKeyVar, err)
	}
	if instances, err := registry.Instances("tiny"); err != nil || len(instances) != 1 {
		t.Fatalf("with %s set: instances %v, %v", auth.IdentityKeyVar, instances, err)
	}
	if strings.Contains(logs.String(), "anyone who reaches it") {
		t.Errorf("a keyed process warns that it is open: %s", logs)
	}
}

// TestLocalAndTestStartWithoutIdentityKeyAndWarn: on a developer's
// machine and in tests a process may run without the identity key; it
// warns that it answers anyone.
func TestLocalAndTestStartWithoutIdentityKeyAndWarn(t *testing.T) {
	t.Parallel()
	for _, env := range []string{"", "local", "test"} {
		vars := map[string]string{}
		if env != "" {
			vars[config.EnvVar] = env
		}
		registry, logs, err := startTiny(t, vars)
		if err != nil {
			t.Fatalf("%s=%q without %s: %v", config.EnvVar, env, auth.IdentityKeyVar, err)
		}
		if instances, err := registry.Instances("tiny"); err != nil || len(instances) != 1 {
			t.Fatalf("%s=%q: instances %v, %v", config.EnvVar, env, instances, err)
		}
		if !strings.Contains(logs.String(), auth.IdentityKeyVar+" is not set") || !strings.Contains(logs.String(), "anyone who reaches it may call every method") {
			t.Errorf("%s=%q without %s: no warning in %s", config.EnvVar, env, auth.IdentityKeyVar, logs)
		}
	}
}
