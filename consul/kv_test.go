package consul_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/consul/consultest"
	"github.com/keelplatform/keel/internal/cache"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/database"
)

// kvSettings is a process's settings as a service would declare them.
type kvSettings struct {
	config.Process `yaml:",inline"`
	// TokenTTL is how long a token is valid, 1m to 24h. Default 1h.
	TokenTTL time.Duration `yaml:"token_ttl"`
	// AllowedOrigins are CORS origins. Default ["*"].
	AllowedOrigins []string `yaml:"allowed_origins"`
}

func (s kvSettings) Validate() error {
	err := s.Process.Validate()
	if s.TokenTTL < time.Minute || s.TokenTTL > 24*time.Hour {
		err = errors.Join(err, &config.KeyError{Key: "token_ttl", Err: errors.New("out of range [1m, 24h]")})
	}
	return err
}

func kvDefaults() kvSettings {
	return kvSettings{Process: config.DefaultProcess(), TokenTTL: time.Hour, AllowedOrigins: []string{"*"}}
}

// kvLog is a log buffer safe for a logger and a test to share.
type kvLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *kvLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *kvLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func kvPut(t *testing.T, client *api.Client, key, value string) {
	t.Helper()
	if _, err := client.KV().Put(&api.KVPair{Key: key, Value: []byte(value)}, nil); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// waitFor polls cond every 5ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startKVWatcher starts a Watcher for service "svc" in env local over the
// agent's KV, with an optional seed file.
func startKVWatcher(t *testing.T, client *api.Client, file string, env map[string]string) (*config.Watcher[kvSettings], *kvLog) {
	t.Helper()
	return startKVWatcherOn(t, consul.NewKVSource(client, config.EnvLocal, "svc", consul.KVSourceConfig{}), file, env)
}

// startKVWatcherOn is startKVWatcher over source, which reads the keys of
// "svc" in env local.
func startKVWatcherOn(t *testing.T, source config.Source, file string, env map[string]string) (*config.Watcher[kvSettings], *kvLog) {
	t.Helper()
	logs := &kvLog{}
	opts := config.Options[kvSettings]{
		Service:   "svc",
		Env:       config.EnvLocal,
		Source:    source,
		Defaults:  kvDefaults(),
		Logger:    slog.New(slog.NewJSONHandler(logs, nil)),
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	}
	if file != "" {
		opts.Dir = t.TempDir()
		if err := os.MkdirAll(filepath.Join(opts.Dir, "local"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(opts.Dir, "local", "svc.yaml"), []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	w, err := config.Start(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w, logs
}

// TestKVLayeringOrder checks defaults < file < Consul KV < environment,
// key by key.
func TestKVLayeringOrder(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	kvPut(t, client, "keel/local/svc/server/shutdown_timeout", "3s")
	kvPut(t, client, "keel/local/svc/token_ttl", "2h")
	kvPut(t, client, "keel/local/svc/allowed_origins", `["https://kv.example"]`)
	kvPut(t, client, "keel/local/other/token_ttl", "3h") // another service: ignored
	file := "server:\n  shutdown_timeout: 2s\n  drain_delay: 1s\ntoken_ttl: 30m\nlog_level: warn\n"
	env := map[string]string{"KEEL_TOKEN_TTL": "4h"}
	w, _ := startKVWatcher(t, client, file, env)
	got := w.Current()
	tests := []struct {
		key, layer string
		got, want  any
	}{
		{key: "server/max_request_bytes", layer: "defaults", got: got.Server.MaxRequestBytes, want: 4 << 20},
		{key: "log_level", layer: "file", got: got.LogLevel, want: "warn"},
		{key: "server/drain_delay", layer: "file", got: got.Server.DrainDelay, want: time.Second},
		{key: "server/shutdown_timeout", layer: "Consul KV", got: got.Server.ShutdownTimeout, want: 3 * time.Second},
		{key: "allowed_origins", layer: "Consul KV", got: strings.Join(got.AllowedOrigins, ","), want: "https://kv.example"},
		{key: "token_ttl", layer: "environment", got: got.TokenTTL, want: 4 * time.Hour},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v from the %s layer", tt.key, tt.got, tt.want, tt.layer)
		}
	}
}

// TestKVChangeTakesEffectWithinASecond measures the time from a KV write
// to the new value in effect in a running Watcher.
func TestKVChangeTakesEffectWithinASecond(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	w, _ := startKVWatcher(t, client, "", nil)
	// Callbacks run in the order subscribed: the LevelVar is set before
	// the test hears of the change.
	var level slog.LevelVar
	config.FollowLogLevel(w, &level)
	applied := make(chan kvSettings, 1)
	w.OnChange(func(_, cfg kvSettings) { applied <- cfg })

	var worst time.Duration
	var latencies []string
	for i, value := range []string{"debug", "warn", "error", "info", "debug"} {
		start := time.Now()
		kvPut(t, client, "keel/local/svc/log_level", value)
		select {
		case cfg := <-applied:
			latency := time.Since(start)
			if cfg.LogLevel != value || w.Current().LogLevel != value || level.Level() != cfg.Level() {
				t.Fatalf("write %d: applied %q (LevelVar %v), want %q", i, cfg.LogLevel, level.Level(), value)
			}
			latencies = append(latencies, latency.Round(10*time.Microsecond).String())
			worst = max(worst, latency)
		case <-time.After(time.Second):
			t.Fatalf("write %d (%s): not in effect within 1s", i, value)
		}
	}
	t.Logf("KV put -> new value in effect: %s (worst %v)", strings.Join(latencies, ", "), worst)
	if worst >= time.Second {
		t.Errorf("worst latency %v, want < 1s", worst)
	}
}

// TestKVInvalidValueIsRejected writes bad values next to a good one: the
// whole new config is rejected, the old one stays, and the key is named in
// the log and in Status.
func TestKVInvalidValueIsRejected(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	w, logs := startKVWatcher(t, client, "", nil)
	tests := []struct {
		name, key, value, message string
	}{
		{name: "wrong type", key: "server/shutdown_timeout", value: "soon", message: "time.Duration"},
		{name: "out of range", key: "token_ttl", value: "72h", message: "out of range"},
		{name: "unparsable", key: "allowed_origins", value: `["https://a.example", `, message: "parse value"},
		{name: "unknown key", key: "tokenttl", value: "1h", message: "unknown key"},
	}
	for i, tt := range tests { // sequential: one watcher, counting rejections
		full := "keel/local/svc/" + tt.key
		// One transaction: the good change must not slip in with the bad.
		ok, _, _, err := client.Txn().Txn(api.TxnOps{
			{KV: &api.KVTxnOp{Verb: api.KVSet, Key: "keel/local/svc/log_level", Value: []byte("debug")}},
			{KV: &api.KVTxnOp{Verb: api.KVSet, Key: full, Value: []byte(tt.value)}},
		}, nil)
		if err != nil || !ok {
			t.Fatalf("%s: txn: %v", tt.name, err)
		}
		waitFor(t, time.Second, tt.name+": rejection", func() bool { return w.Status().Rejected == uint64(i+1) })
		st := w.Status()
		if got := w.Current().LogLevel; got != "info" {
			t.Errorf("%s: log level %q: part of a rejected config was applied", tt.name, got)
		}
		if keys := config.ErrorKeys(st.LastRejection); !slices.Contains(keys, tt.key) || !strings.Contains(st.LastRejection.Error(), tt.message) {
			t.Errorf("%s: Status().LastRejection = %v, want it to name %s and say %q", tt.name, st.LastRejection, tt.key, tt.message)
		}
		// The watcher counts a rejection before it logs it.
		logged := func() bool {
			return strings.Contains(logs.String(), `"keys":["`+tt.key+`"]`) && strings.Contains(logs.String(), "consul:"+full)
		}
		for deadline := time.Now().Add(time.Second); !logged() && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		if !logged() {
			t.Errorf("%s: log does not name key %s and where it came from:\n%s", tt.name, tt.key, logs)
		}
		// Back to a good state for the next case.
		if _, err := client.KV().DeleteTree("keel/local/svc/", nil); err != nil {
			t.Fatal(err)
		}
		waitFor(t, time.Second, tt.name+": recovery", func() bool { return w.Status().Version != st.Version })
	}
	t.Logf("last rejection: %v", w.Status().LastRejection)
}

// TestKVStaticChangeNeedsRestart checks that a static key changed in KV is
// logged and left alone, while dynamic keys changed with it apply.
func TestKVStaticChangeNeedsRestart(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	w, logs := startKVWatcher(t, client, "server:\n  addr: 127.0.0.1:9001\n", nil)
	kvPut(t, client, "keel/local/svc/server/addr", "127.0.0.1:9002")
	kvPut(t, client, "keel/local/svc/server/max_request_bytes", "2048")
	kvPut(t, client, "keel/local/svc/feature_flags/new_checkout", "true")
	waitFor(t, time.Second, "dynamic change", func() bool { return w.Current().Enabled("new_checkout") })
	cur := w.Current().Server
	if cur.Addr != "127.0.0.1:9001" || cur.MaxRequestBytes != 4<<20 {
		t.Errorf("static keys applied while running: %+v", cur)
	}
	want := []string{"server/addr", "server/max_request_bytes"}
	waitFor(t, time.Second, "pending restarts", func() bool { return slices.Equal(w.Status().PendingRestart, want) })
	for _, line := range []string{
		`"msg":"config change needs a restart; keeping the running value","key":"server/addr","running":"127.0.0.1:9001","wanted":"127.0.0.1:9002"`,
		`"msg":"config change needs a restart; keeping the running value","key":"server/max_request_bytes","running":4194304,"wanted":2048`,
	} {
		if !strings.Contains(logs.String(), line) {
			t.Errorf("log lacks %s:\n%s", line, logs)
		}
	}
}

// TestKVWatchSurvivesAgentRestart stops the agent under a running Watcher,
// then brings it back. A dev agent comes back with an empty KV, so the
// configuration falls back to the file and the defaults until KV is
// written again.
func TestKVWatchSurvivesAgentRestart(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t, consultest.WithACL())
	client := agent.Client()
	kvPut(t, client, "keel/local/svc/log_level", "debug")
	source := &failCounter{Source: consul.NewKVSource(client, config.EnvLocal, "svc", consul.KVSourceConfig{})}
	w, logs := startKVWatcherOn(t, source, "token_ttl: 2h\n", nil)
	if got := w.Current().LogLevel; got != "debug" {
		t.Fatalf("log level %q, want debug", got)
	}

	agent.Stop()
	waitFor(t, 5*time.Second, "source error", func() bool { return w.Status().SourceErr != nil })
	// The source retries, backing off, and keeps failing: through several
	// failed reads the watcher keeps the last configuration.
	failed := source.failures.Load()
	const retries = 3
	waitFor(t, 10*time.Second, "failed retries", func() bool {
		if got := w.Current(); got.LogLevel != "debug" || got.TokenTTL != 2*time.Hour {
			t.Fatalf("config while the agent is down: %+v, want the last one kept", got)
		}
		return source.failures.Load() >= failed+retries
	})
	if got := w.Current(); got.LogLevel != "debug" || got.TokenTTL != 2*time.Hour {
		t.Fatalf("config after %d failed retries: %+v, want the last one kept", retries, got)
	}
	t.Logf("while down, after %d failed reads: %v", source.failures.Load(), w.Status().SourceErr)

	restarted := time.Now()
	agent.Restart()
	waitFor(t, 5*time.Second, "source back", func() bool { return w.Status().SourceErr == nil })
	t.Logf("source read again %v after the restart began", time.Since(restarted).Round(time.Millisecond))
	start := time.Now()
	kvPut(t, client, "keel/local/svc/log_level", "error")
	waitFor(t, time.Second, "write after restart", func() bool { return w.Current().LogLevel == "error" })
	t.Logf("KV put after restart -> in effect in %v", time.Since(start).Round(time.Millisecond))
	if got := w.Current().TokenTTL; got != 2*time.Hour {
		t.Errorf("token ttl %v, want 2h from the file", got)
	}
	for _, msg := range []string{"config source unreachable", "config source reachable again"} {
		if !strings.Contains(logs.String(), msg) {
			t.Errorf("log lacks %q:\n%s", msg, logs)
		}
	}
}

// failCounter is a config.Source that counts the failed reads of the one
// it wraps.
type failCounter struct {
	config.Source
	failures atomic.Int64
}

func (c *failCounter) Next(ctx context.Context, after uint64) (config.Snapshot, error) {
	snap, err := c.Source.Next(ctx, after)
	if err != nil {
		c.failures.Add(1)
	}
	return snap, err
}

// TestKVNextAbandonsStalledQuery cuts, without a reset, the connection a
// KVSource's blocking query waits on: Next must give the query up a little
// after WaitTime, report the error, and read again once the path is back,
// instead of stalling reloads forever.
func TestKVNextAbandonsStalledQuery(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	kvPut(t, agent.Client(), "keel/local/svc/log_level", "debug")
	proxy := startTCPProxy(t, agent.Addr())
	client, err := api.NewClient(&api.Config{Address: proxy.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	const waitTime = 300 * time.Millisecond
	src := consul.NewKVSource(client, config.EnvLocal, "svc", consul.KVSourceConfig{WaitTime: waitTime})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel() // lets a Next that stalled, if the fix broke, return

	// Through the proxy while it forwards: the current keys, then a change
	// seen by a blocking query.
	first, err := src.Next(ctx, 0)
	if err != nil || string(first.Pairs["log_level"]) != "debug" {
		t.Fatalf("first read: %+v, %v; want log_level debug", first, err)
	}
	kvPut(t, agent.Client(), "keel/local/svc/log_level", "info")
	var changed config.Snapshot
	if _, err := within(t, 5*time.Second, "blocking read of a change", func() (err error) {
		changed, err = src.Next(ctx, first.Version)
		return err
	}); err != nil || string(changed.Pairs["log_level"]) != "info" {
		t.Fatalf("read after a change: %+v, %v; want log_level info", changed, err)
	}

	// The path goes silent: no answer, no reset.
	proxy.Freeze()
	// A first read does not block: with the default WaitTime (5m) too, it
	// is given up after 5s.
	firstRead := make(chan error, 1)
	go func() {
		_, err := consul.NewKVSource(client, config.EnvLocal, "svc", consul.KVSourceConfig{}).Next(ctx, 0)
		firstRead <- err
	}()
	var stalled config.Snapshot
	took, err := within(t, 15*time.Second, "Next on a stalled connection", func() (err error) {
		stalled, err = src.Next(ctx, changed.Version)
		return err
	})
	t.Logf("Next on a silent connection gave up after %v: %v", took.Round(time.Millisecond), err)
	if err == nil {
		t.Fatalf("Next on a silent connection returned %+v, want an error", stalled)
	}
	if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		t.Errorf("error %v, want the query's own deadline exceeded", err)
	}
	if took < waitTime {
		t.Errorf("gave up after %v, before the blocking wait (%v) was over", took, waitTime)
	}
	if proxy.Swallowed() == 0 {
		t.Error("no query reached the silent connection")
	}
	select {
	case err := <-firstRead:
		if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			t.Errorf("first read on a silent connection: error %v, want the query's own deadline exceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("first read on a silent connection, with the default WaitTime, not given up 10s after the blocking one was")
	}

	// Back, for new connections: the next call retries on one and sees
	// what changed meanwhile.
	kvPut(t, agent.Client(), "keel/local/svc/log_level", "warn")
	proxy.Recover()
	var back config.Snapshot
	if _, err := within(t, 10*time.Second, "Next after the path came back", func() (err error) {
		back, err = src.Next(ctx, changed.Version)
		return err
	}); err != nil || string(back.Pairs["log_level"]) != "warn" {
		t.Fatalf("read after the path came back: %+v, %v; want log_level warn", back, err)
	}
}

// TestPushThenDiff pushes the repository's seed files for the test
// environment and checks Diff before and after KV is edited by hand.
func TestPushThenDiff(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	ctx := t.Context()
	kvPut(t, client, "keel/test/gone/log_level", "debug") // a service without a file

	changes, err := consul.Push(ctx, client, config.EnvTest, "kv")
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) < 10 {
		t.Errorf("push made %d changes, want every key of user.yaml and edge.yaml", len(changes))
	}
	for _, c := range changes {
		if c.Kind == consul.Changed {
			t.Errorf("unexpected change %+v on an empty KV", c)
		}
	}
	if diff, err := consul.Diff(ctx, client, config.EnvTest, "kv"); err != nil || len(diff) != 0 {
		t.Fatalf("diff after push = %+v, %v; want none", diff, err)
	}
	pair, _, err := client.KV().Get("keel/test/edge/allowed_origins", nil)
	if err != nil || pair == nil || string(pair.Value) != `["*"]` {
		t.Errorf("keel/test/edge/allowed_origins = %+v, %v; want the list as JSON", pair, err)
	}
	if pair, _, _ := client.KV().Get("keel/test/gone/log_level", nil); pair != nil {
		t.Errorf("push kept %s, a key of a service without a file", pair.Key)
	}

	kvPut(t, client, "keel/test/user/log_level", "debug")
	kvPut(t, client, "keel/test/user/feature_flags/beta", "true")
	kvPut(t, client, "keel/test/edge/server/drain_delay", `"0s"`) // same value, quoted
	if _, err := client.KV().Delete("keel/test/user/token_ttl", nil); err != nil {
		t.Fatal(err)
	}
	diff, err := consul.Diff(ctx, client, config.EnvTest, "kv")
	if err != nil {
		t.Fatal(err)
	}
	want := []consul.Change{
		{Key: "keel/test/user/feature_flags/beta", Kind: consul.OnlyInKV, KV: "true"},
		{Key: "keel/test/user/log_level", Kind: consul.Changed, File: "info", KV: "debug"},
		{Key: "keel/test/user/token_ttl", Kind: consul.OnlyInFile, File: "1h"},
	}
	if !slices.Equal(diff, want) {
		t.Errorf("diff = %+v\nwant %+v", diff, want)
	}
	if _, err := consul.Push(ctx, client, config.EnvTest, "kv"); err != nil {
		t.Fatal(err)
	}
	if diff, err := consul.Diff(ctx, client, config.EnvTest, "kv"); err != nil || len(diff) != 0 {
		t.Errorf("diff after the second push = %+v, %v; want none", diff, err)
	}
}

// TestPushChecksEveryFileFirst checks that one bad file stops the push
// before anything is written.
func TestPushChecksEveryFileFirst(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	good := "log_level: info\nserver:\n  addr: 127.0.0.1:0\n"
	tests := []struct {
		name, bad string
		opts      []consul.PushOption
		message   string
	}{
		{name: "unparsable", bad: "server: [\n", message: "parse"},
		{name: "null leaf", bad: "log_level:\n", message: "key log_level has no value"},
		{name: "not a mapping", bad: "- a\n- b\n", message: "want a mapping"},
		{name: "slash in key", bad: "server/addr: x\n", message: "contains '/'"},
		{
			name: "validator", bad: "token_tl: 1h\n", message: "key token_tl (from zz.yaml:1): unknown key",
			opts: []consul.PushOption{consul.WithValidator("zz", func(b []byte) error {
				return config.CheckFile("zz.yaml", b, kvDefaults())
			})},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, "prod"), 0o755); err != nil {
				t.Fatal(err)
			}
			for name, data := range map[string]string{"aa.yaml": good, "zz.yaml": tt.bad} {
				if err := os.WriteFile(filepath.Join(dir, "prod", name), []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, err := consul.Push(t.Context(), client, config.EnvProd, dir, tt.opts...)
			if err == nil || !strings.Contains(err.Error(), tt.message) || !strings.Contains(err.Error(), "zz.yaml") {
				t.Errorf("push error %v, want one naming zz.yaml and saying %q", err, tt.message)
			}
			pairs, _, err := client.KV().List("keel/prod/", nil)
			if err != nil || len(pairs) != 0 {
				t.Errorf("KV after a refused push: %d keys, %v; want none", len(pairs), err)
			}
		})
	}
	if _, err := consul.Push(t.Context(), client, config.EnvProd, t.TempDir()); err == nil {
		t.Error("push of a directory without files succeeded")
	}
}

// seedUser and seedEdge follow the keys of consul/kv/<env>/user.yaml and
// edge.yaml.
type seedUser struct {
	config.Process  `yaml:",inline"`
	TokenTTL        time.Duration `yaml:"token_ttl"`
	PasswordHashing struct {
		Time          uint32        `yaml:"time" keel:"static"`
		MemoryKiB     uint32        `yaml:"memory_kib" keel:"static"`
		Threads       uint8         `yaml:"threads" keel:"static"`
		MaxConcurrent int           `yaml:"max_concurrent"`
		MaxWait       time.Duration `yaml:"max_wait"`
	} `yaml:"password_hashing"`
	Database   database.Settings  `yaml:"database" keel:"static"`
	Cache      cache.Config       `yaml:"cache" keel:"static"`
	UserFilter cache.FilterConfig `yaml:"user_filter" keel:"static"`
}

type seedEdge struct {
	config.Process `yaml:",inline"`
	AllowedOrigins []string `yaml:"allowed_origins"`
	TrustedProxies []string `yaml:"trusted_proxies"`
	Auth           struct {
		JWKSURL  string `yaml:"jwks_url"`
		Issuer   string `yaml:"issuer"`
		Audience string `yaml:"audience"`
	} `yaml:"auth" keel:"static"`
	RateLimits struct {
		Groups map[string]struct {
			Methods []string      `yaml:"methods"`
			Rate    int           `yaml:"rate"`
			Per     time.Duration `yaml:"per"`
			Burst   int           `yaml:"burst"`
		} `yaml:"groups"`
		RedisAddr string        `yaml:"redis_addr" keel:"static"`
		KeyPrefix string        `yaml:"key_prefix" keel:"static"`
		Timeout   time.Duration `yaml:"timeout" keel:"static"`
		MaxKeys   int           `yaml:"max_keys" keel:"static"`
	} `yaml:"rate_limits"`
	Canary map[string]struct {
		Version string  `yaml:"version"`
		Weight  float64 `yaml:"weight"`
		Sticky  bool    `yaml:"sticky"`
	} `yaml:"canary"`
	Faults map[string]struct {
		Delay        time.Duration `yaml:"delay"`
		DelayPercent float64       `yaml:"delay_percent"`
		AbortPercent float64       `yaml:"abort_percent"`
		AbortCode    string        `yaml:"abort_code"`
	} `yaml:"faults"`
}

// TestPushedKVReadsLikeTheFiles pushes every environment's seed files and
// checks that a process reading only Consul KV gets the configuration a
// process reading only the file gets: the key model round-trips.
func TestPushedKVReadsLikeTheFiles(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := agent.Client()
	for _, env := range config.Envs() {
		if _, err := consul.Push(t.Context(), client, env, "kv"); err != nil {
			t.Fatal(err)
		}
		sameFromBoth(t, client, env, "user", seedUser{Process: config.DefaultProcess()})
		sameFromBoth(t, client, env, "edge", seedEdge{Process: config.DefaultProcess()})
	}
}

func sameFromBoth[T any](t *testing.T, client *api.Client, env config.Env, service string, defaults T) {
	t.Helper()
	noEnv := func(string) (string, bool) { return "", false }
	fromFile, err := config.Load(t.Context(), config.Options[T]{Service: service, Env: env, Dir: "kv", Defaults: defaults, LookupEnv: noEnv})
	if err != nil {
		t.Fatal(err)
	}
	fromKV, err := config.Load(t.Context(), config.Options[T]{
		Service: service, Env: env, Defaults: defaults, LookupEnv: noEnv,
		Source: consul.NewKVSource(client, env, service, consul.KVSourceConfig{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fromFile, fromKV) {
		t.Errorf("%s/%s:\nfrom the file %+v\nfrom KV       %+v", env, service, fromFile, fromKV)
	}
}
