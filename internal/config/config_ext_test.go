package config_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/testkit"
)

// settings is a process's settings as a service would declare them.
type settings struct {
	config.Process `yaml:",inline"`
	// TokenTTL is how long a token is valid, 1m to 24h. Default 1h.
	TokenTTL time.Duration `yaml:"token_ttl"`
	// Hashing is static as a whole.
	Hashing hashing `yaml:"password_hashing" keel:"static"`
	// AllowedOrigins are CORS origins. Default ["*"].
	AllowedOrigins []string `yaml:"allowed_origins"`
}

type hashing struct {
	Time      uint32 `yaml:"time"`
	MemoryKiB uint32 `yaml:"memory_kib"`
}

func (s settings) Validate() error {
	var errs []error
	errs = append(errs, s.Process.Validate())
	if s.TokenTTL < time.Minute || s.TokenTTL > 24*time.Hour {
		errs = append(errs, &config.KeyError{Key: "token_ttl", Err: errors.New("out of range [1m, 24h]")})
	}
	return errors.Join(errs...)
}

func defaults() settings {
	return settings{
		Process:        config.DefaultProcess(),
		TokenTTL:       time.Hour,
		Hashing:        hashing{Time: 2, MemoryKiB: 19456},
		AllowedOrigins: []string{"*"},
	}
}

// writeFile writes dir/<env>/svc.yaml and returns dir.
func writeFile(t *testing.T, env config.Env, content string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, string(env)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, string(env), "svc.yaml"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLayering(t *testing.T) {
	t.Parallel()
	const file = `
log_level: warn
server:
  addr: 127.0.0.1:9000
  shutdown_timeout: 3s
feature_flags:
  a: true
  b: true
allowed_origins: ["https://file.example"]
`
	tests := []struct {
		name  string
		file  string
		kv    map[string]string
		env   map[string]string
		check func(t *testing.T, s settings)
	}{
		{
			name: "defaults only",
			check: func(t *testing.T, s settings) {
				if !reflect.DeepEqual(s, defaults()) {
					t.Errorf("got %+v, want the defaults", s)
				}
			},
		},
		{
			name: "file over defaults",
			file: file,
			check: func(t *testing.T, s settings) {
				want := defaults()
				want.LogLevel = "warn"
				want.Server.Addr = "127.0.0.1:9000"
				want.Server.ShutdownTimeout = 3 * time.Second
				want.FeatureFlags = map[string]bool{"a": true, "b": true}
				want.AllowedOrigins = []string{"https://file.example"}
				if !reflect.DeepEqual(s, want) {
					t.Errorf("got %+v, want %+v", s, want)
				}
			},
		},
		{
			name: "kv over file",
			file: file,
			kv: map[string]string{
				"log_level":               "debug",
				"server/shutdown_timeout": "1500ms",
				"feature_flags/b":         "false",
				"feature_flags/c":         "true",
				"allowed_origins":         `["https://kv.example", "http://localhost:5173"]`,
				"server/":                 "", // a folder, as the Consul UI makes them
			},
			check: func(t *testing.T, s settings) {
				if s.LogLevel != "debug" || s.Server.ShutdownTimeout != 1500*time.Millisecond || s.Server.Addr != "127.0.0.1:9000" {
					t.Errorf("got %+v", s.Process)
				}
				if want := map[string]bool{"a": true, "b": false, "c": true}; !reflect.DeepEqual(s.FeatureFlags, want) {
					t.Errorf("feature flags %v, want %v (merged entry by entry)", s.FeatureFlags, want)
				}
				if want := []string{"https://kv.example", "http://localhost:5173"}; !slices.Equal(s.AllowedOrigins, want) {
					t.Errorf("allowed origins %v, want %v", s.AllowedOrigins, want)
				}
			},
		},
		{
			name: "env over kv",
			file: file,
			kv:   map[string]string{"log_level": "debug", "server/max_request_bytes": "2048"},
			env: map[string]string{
				"KEEL_LOG_LEVEL":                "error",
				"KEEL_SERVER_ADDR":              "127.0.0.1:9999",
				"KEEL_SERVER_MAX_REQUEST_BYTES": "4096",
				"KEEL_FEATURE_FLAGS":            "{a: false}",
				"KEEL_PASSWORD_HASHING_TIME":    "",
				"KEEL_CACHE":                    "/not/a/setting",
			},
			check: func(t *testing.T, s settings) {
				if s.LogLevel != "error" || s.Server.Addr != "127.0.0.1:9999" || s.Server.MaxRequestBytes != 4096 {
					t.Errorf("got %+v", s.Process)
				}
				if !reflect.DeepEqual(s.FeatureFlags, map[string]bool{"a": false, "b": true}) {
					t.Errorf("feature flags %v", s.FeatureFlags)
				}
				if s.Hashing.Time != 2 {
					t.Errorf("an empty variable counts as unset; hashing time %d", s.Hashing.Time)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := config.Options[settings]{
				Service: "svc", Env: config.EnvTest, Defaults: defaults(),
				LookupEnv: envMap(tt.env),
			}
			if tt.file != "" {
				opts.Dir = writeFile(t, config.EnvTest, tt.file)
			}
			if tt.kv != nil {
				opts.Source = config.NewMemorySource(tt.kv)
			}
			got, err := config.Load(t.Context(), opts)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, got)
		})
	}
	t.Run("defaults are not mutated", func(t *testing.T) {
		t.Parallel()
		d := defaults()
		d.FeatureFlags = map[string]bool{"x": true}
		_, err := config.Load(t.Context(), config.Options[settings]{
			Defaults: d, Source: config.NewMemorySource(map[string]string{"feature_flags/y": "true"}), LookupEnv: envMap(nil),
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(d.FeatureFlags) != 1 {
			t.Errorf("defaults' map changed: %v", d.FeatureFlags)
		}
	})
}

// TestInvalid checks that every kind of bad input is an error naming the
// key and where it came from.
func TestInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		file    string
		kv      map[string]string
		env     map[string]string
		key     string
		origin  string
		message string
	}{
		{name: "unknown top-level key in file", file: "log_levle: debug\n", key: "log_levle", origin: "svc.yaml:1", message: "unknown key"},
		{name: "unknown nested key in file", file: "server:\n  adr: x\n", key: "server/adr", origin: "svc.yaml:2", message: "unknown key"},
		{name: "unparsable file", file: "server: [\n", message: "parse"},
		{name: "section given a scalar", file: "server: 8080\n", key: "server", message: "want a mapping"},
		{name: "null value", file: "log_level:\n", key: "log_level", message: "no value"},
		{name: "duplicate key", file: "log_level: info\nlog_level: debug\n", key: "log_level", origin: "svc.yaml:2", message: "key given twice"},
		{name: "unknown kv key", kv: map[string]string{"server/max_request_byte": "1"}, key: "server/max_request_byte", origin: "memory:server/max_request_byte", message: "unknown key"},
		{name: "kv key below a leaf", kv: map[string]string{"log_level/x": "1"}, key: "log_level/x", message: "unknown key"},
		{name: "kv entry with a slash", kv: map[string]string{"feature_flags/a/b": "true"}, key: "feature_flags/a/b", message: "unknown key"},
		{name: "wrong type", kv: map[string]string{"server/max_request_bytes": "lots"}, key: "server/max_request_bytes", message: "cannot unmarshal"},
		{name: "float for an integer", kv: map[string]string{"server/max_request_bytes": "2048.5"}, key: "server/max_request_bytes", message: "want an integer"},
		{name: "bare number for a duration", kv: map[string]string{"token_ttl": "15"}, key: "token_ttl", message: "time.Duration"},
		{name: "bad duration", kv: map[string]string{"token_ttl": "15 minutes"}, key: "token_ttl", message: "time.Duration"},
		{name: "unparsable list", kv: map[string]string{"allowed_origins": `["a", `}, key: "allowed_origins", message: "parse value"},
		{name: "scalar for a list", kv: map[string]string{"allowed_origins": `{a: b}`}, key: "allowed_origins", message: "cannot unmarshal"},
		{name: "out of range", kv: map[string]string{"token_ttl": "48h"}, key: "token_ttl", origin: "memory:token_ttl", message: "out of range"},
		{name: "bad log level", kv: map[string]string{"log_level": "loud"}, key: "log_level", message: "want debug, info, warn or error"},
		{name: "bad env value", env: map[string]string{"KEEL_SERVER_SHUTDOWN_TIMEOUT": "soon"}, key: "server/shutdown_timeout", origin: "env KEEL_SERVER_SHUTDOWN_TIMEOUT", message: "time.Duration"},
		{name: "out of range from env", env: map[string]string{"KEEL_SERVER_MAX_REQUEST_BYTES": "10"}, key: "server/max_request_bytes", origin: "env KEEL_SERVER_MAX_REQUEST_BYTES", message: "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := config.Options[settings]{Service: "svc", Env: config.EnvLocal, Defaults: defaults(), LookupEnv: envMap(tt.env)}
			if tt.file != "" {
				opts.Dir = writeFile(t, config.EnvLocal, tt.file)
			}
			if tt.kv != nil {
				opts.Source = config.NewMemorySource(tt.kv)
			}
			_, err := config.Load(t.Context(), opts)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not contain %q", err, tt.message)
			}
			if tt.key != "" {
				if keys := config.ErrorKeys(err); !slices.Contains(keys, tt.key) {
					t.Errorf("error %q names keys %v, want %s", err, keys, tt.key)
				}
			}
			if tt.origin != "" && !strings.Contains(err.Error(), tt.origin) {
				t.Errorf("error %q does not name the origin %s", err, tt.origin)
			}
		})
	}
}

func TestParseEnv(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    config.Env
		wantErr bool
	}{
		{in: "", want: config.EnvLocal},
		{in: "local", want: config.EnvLocal},
		{in: "test", want: config.EnvTest},
		{in: "prod", want: config.EnvProd},
		{in: "production", wantErr: true},
		{in: "Prod", wantErr: true},
	}
	for _, tt := range tests {
		got, err := config.ParseEnv(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseEnv(%q) = %q, %v; want %q, error %t", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestMissingFile(t *testing.T) {
	t.Parallel()
	_, err := config.Load(t.Context(), config.Options[settings]{Service: "nosuch", Dir: t.TempDir(), Defaults: defaults(), LookupEnv: envMap(nil)})
	if err == nil || !strings.Contains(err.Error(), "nosuch.yaml") {
		t.Errorf("error %v, want one naming the missing file", err)
	}
}

func TestBadSettingsType(t *testing.T) {
	t.Parallel()
	type badTag struct {
		A string `yaml:"a" keel:"statik"`
	}
	if _, err := config.Load(t.Context(), config.Options[badTag]{LookupEnv: envMap(nil)}); err == nil || !strings.Contains(err.Error(), "statik") {
		t.Errorf("error %v, want one naming the bad tag", err)
	}
	type clash struct {
		AB string `yaml:"a_b"`
		A  struct {
			B string `yaml:"b"`
		} `yaml:"a"`
	}
	if _, err := config.Load(t.Context(), config.Options[clash]{LookupEnv: envMap(nil)}); err == nil || !strings.Contains(err.Error(), "KEEL_A_B") {
		t.Errorf("error %v, want one naming the shared variable", err)
	}
}

func newLog() (*slog.Logger, *testkit.Buffer) {
	b := &testkit.Buffer{}
	return slog.New(slog.NewJSONHandler(b, nil)), b
}

// startWatcher starts a Watcher over a MemorySource for the defaults.
func startWatcher(t *testing.T, kv map[string]string) (*config.Watcher[settings], *config.MemorySource, *testkit.Buffer) {
	t.Helper()
	src := config.NewMemorySource(kv)
	logger, logs := newLog()
	w, err := config.Start(t.Context(), config.Options[settings]{Service: "svc", Defaults: defaults(), Source: src, Logger: logger, LookupEnv: envMap(nil)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w, src, logs
}

// eventually polls cond for up to a second.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 1s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestWatcherAppliesDynamicChanges(t *testing.T) {
	t.Parallel()
	w, src, _ := startWatcher(t, nil)
	changes := make(chan [2]settings, 4)
	w.OnChange(func(old, new settings) { changes <- [2]settings{old, new} })
	var level slog.LevelVar
	config.FollowLogLevel(w, &level)
	if level.Level() != slog.LevelInfo {
		t.Fatalf("level %v, want info", level.Level())
	}
	before := w.Status().Version

	src.Set("log_level", "debug")
	src.Set("feature_flags/new_checkout", "true")
	eventually(t, "feature flag on", func() bool { return w.Current().Enabled("new_checkout") })
	if w.Current().LogLevel != "debug" || level.Level() != slog.LevelDebug {
		t.Errorf("log level %q, LevelVar %v; want debug", w.Current().LogLevel, level.Level())
	}
	change := <-changes
	if change[0].LogLevel != "info" {
		t.Errorf("old value %q, want info", change[0].LogLevel)
	}
	if st := w.Status(); st.Version <= before || st.Rejected != 0 {
		t.Errorf("status %+v, want a newer version and no rejection", st)
	}
}

func TestWatcherRejectsInvalidConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, key, value string
	}{
		{name: "wrong type", key: "server/shutdown_timeout", value: "[1, 2]"},
		{name: "out of range", key: "token_ttl", value: "1s"},
		{name: "unparsable", key: "allowed_origins", value: "[unclosed"},
		{name: "unknown key", key: "tokn_ttl", value: "1h"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			w, src, logs := startWatcher(t, map[string]string{"log_level": "warn"})
			// One batch holds a good dynamic change and the bad key: the
			// whole batch must be refused.
			src.SetAll(map[string]string{"log_level": "debug", tt.key: tt.value})
			eventually(t, "rejection", func() bool { return w.Status().Rejected == 1 })
			st := w.Status()
			if w.Current().LogLevel != "warn" {
				t.Errorf("log level %q: a rejected config was applied", w.Current().LogLevel)
			}
			if !slices.Contains(config.ErrorKeys(st.LastRejection), tt.key) {
				t.Errorf("last rejection %v does not name %s", st.LastRejection, tt.key)
			}
			if !strings.Contains(logs.String(), `"keys":["`+tt.key+`"]`) {
				t.Errorf("log does not name the key %s:\n%s", tt.key, logs)
			}
			// Fixing the key brings the batch in.
			src.Delete(tt.key)
			eventually(t, "fixed config applied", func() bool { return w.Current().LogLevel == "debug" })
			if st := w.Status(); st.Rejected != 1 || st.LastRejection == nil {
				t.Errorf("status %+v: the rejection count and last error must stay", st)
			}
		})
	}
}

func TestWatcherKeepsStaticValues(t *testing.T) {
	t.Parallel()
	w, src, logs := startWatcher(t, nil)
	src.Set("server/addr", "127.0.0.1:7777")
	src.Set("password_hashing/time", "5")
	src.Set("server/drain_delay", "2s")
	eventually(t, "dynamic change", func() bool { return w.Current().Server.DrainDelay == 2*time.Second })
	cur := w.Current()
	if cur.Server.Addr != "127.0.0.1:0" || cur.Hashing.Time != 2 {
		t.Errorf("static keys changed while running: addr %q, hashing %+v", cur.Server.Addr, cur.Hashing)
	}
	if got, want := w.Status().PendingRestart, []string{"server/addr", "password_hashing/time"}; !slices.Equal(got, want) {
		t.Errorf("pending restart %v, want %v", got, want)
	}
	for _, key := range []string{"server/addr", "password_hashing/time"} {
		if !strings.Contains(logs.String(), `"msg":"config change needs a restart; keeping the running value","key":"`+key+`"`) {
			t.Errorf("no needs-restart log for %s:\n%s", key, logs)
		}
	}
	// Another change does not log the pending one again.
	n := strings.Count(logs.String(), "needs a restart")
	src.Set("log_level", "error")
	eventually(t, "dynamic change", func() bool { return w.Current().LogLevel == "error" })
	if m := strings.Count(logs.String(), "needs a restart"); m != n {
		t.Errorf("needs-restart logged %d times, want %d", m, n)
	}
	// Putting the running value back clears the pending restart.
	src.Set("server/addr", "127.0.0.1:0")
	src.Delete("password_hashing/time")
	eventually(t, "nothing pending", func() bool { return len(w.Status().PendingRestart) == 0 })
}

func TestCheckFile(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, data, want string
	}{
		{name: "good", data: "log_level: debug\ntoken_ttl: 2h\n"},
		{name: "empty", data: "# nothing\n"},
		{name: "unknown key", data: "token_tl: 2h\n", want: "key token_tl (from x.yaml:1): unknown key"},
		{name: "out of range", data: "token_ttl: 2s\n", want: "key token_ttl (from x.yaml:1): out of range"},
		{name: "wrong type", data: "server:\n  max_request_bytes: big\n", want: "key server/max_request_bytes (from x.yaml:2)"},
	}
	for _, tt := range tests {
		err := config.CheckFile("x.yaml", []byte(tt.data), defaults())
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: %v", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: error %v, want it to contain %q", tt.name, err, tt.want)
		}
	}
}

// limited has a map of structs: each entry one value in a file, and in KV
// either one key or one key per field.
type limited struct {
	config.Process `yaml:",inline"`
	Groups         map[string]group `yaml:"groups"`
}

type group struct {
	Rate int           `yaml:"rate"`
	Per  time.Duration `yaml:"per"`
}

// TestMapOfStructsInKV: an entry of a map of structs reads the same from
// a file, from one KV key, and from one KV key per field (what pushing
// the file writes); a field the struct does not have is an unknown key,
// and an entry given both ways is refused, naming it.
func TestMapOfStructsInKV(t *testing.T) {
	t.Parallel()
	load := func(file string, kv map[string]string) (limited, error) {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "local"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "local", "svc.yaml"), []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
		return config.Load(t.Context(), config.Options[limited]{
			Service: "svc", Env: config.EnvLocal, Dir: dir, Source: config.NewMemorySource(kv),
			Defaults: limited{Process: config.DefaultProcess()}, LookupEnv: func(string) (string, bool) { return "", false },
		})
	}
	want := map[string]group{"login": {Rate: 5, Per: time.Minute}}
	for name, kv := range map[string]map[string]string{
		"file":         nil,
		"one key":      {"groups/login": "{rate: 5, per: 1m}"},
		"key by field": {"groups/login/rate": "5", "groups/login/per": "1m"},
	} {
		file := "groups: {}\n"
		if kv == nil {
			file = "groups: {login: {rate: 5, per: 1m}}\n"
		}
		s, err := load(file, kv)
		if err != nil || !reflect.DeepEqual(s.Groups, want) {
			t.Errorf("%s: %+v %v, want %+v", name, s.Groups, err, want)
		}
	}
	_, err := load("", map[string]string{"groups/login/rate": "5", "groups/login/brust": "5"})
	if err == nil || !strings.Contains(err.Error(), "groups/login/brust") || !errors.Is(err, config.ErrUnknownKey) {
		t.Errorf("unknown field: %v", err)
	}
	_, err = load("", map[string]string{"groups/login": "{rate: 5}", "groups/login/per": "1m"})
	if err == nil || !strings.Contains(err.Error(), "groups/login") || !strings.Contains(err.Error(), "both") {
		t.Errorf("an entry given both ways: %v", err)
	}
}
