package boot_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
)

// memoryBackend is the static backend with a KV layer held in memory.
type memoryBackend struct {
	boot.Static
	kv *config.MemorySource
}

func (b memoryBackend) ConfigSource(config.Env, string) config.Source { return b.kv }

type tinySettings struct {
	config.Process `yaml:",inline"`
}

// tinyService is a process built on internal/server with no services; it
// hands its configuration watcher to watcher.
func tinyService(watcher **config.Watcher[tinySettings]) boot.Service[tinySettings] {
	return boot.Service[tinySettings]{
		Name:     "tiny",
		Defaults: tinySettings{Process: config.DefaultProcess()},
		Build: func(_ context.Context, env boot.Env[tinySettings]) (boot.Process, error) {
			*watcher = env.Config
			return env.Server(), nil
		},
	}
}

func get(t *testing.T, url string) []byte {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s %v", url, res.StatusCode, body, err)
	}
	return body
}

func metric(t *testing.T, url, series string) float64 {
	t.Helper()
	lines := bufio.NewScanner(strings.NewReader(string(get(t, url))))
	for lines.Scan() {
		if v, ok := strings.CutPrefix(lines.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("%s not on %s", series, url)
	return 0
}

func TestRejectedConfigShowsInMetricsAndStatus(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "local"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "local", "tiny.yaml"), []byte("log_level: info\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kv := config.NewMemorySource(map[string]string{"log_level": "debug"})
	var watcher *config.Watcher[tinySettings]
	r, err := boot.Start(ctx, tinyService(&watcher), boot.Options{
		Env:       config.EnvLocal,
		ConfigDir: dir,
		Backend:   memoryBackend{Static: boot.Static{Discovery: discovery.NewStatic()}, kv: kv},
		Log:       io.Discard,
		LookupEnv: func(string) (string, bool) { return "", false },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := r.Wait(); err != nil {
			t.Error(err)
		}
	})
	base := "http://" + r.Instance.Addr
	if got := metric(t, base+"/metrics", "keel_config_rejections_total"); got != 0 {
		t.Fatalf("keel_config_rejections_total = %v at start", got)
	}
	if got := metric(t, base+"/metrics", "keel_config_source_up"); got != 1 {
		t.Fatalf("keel_config_source_up = %v", got)
	}

	kv.Set("log_level", "loudest")
	deadline := time.Now().Add(5 * time.Second)
	for metric(t, base+"/metrics", "keel_config_rejections_total") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("keel_config_rejections_total did not reach 1")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := metric(t, base+"/metrics", "keel_config_last_rejection_timestamp_seconds"); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("keel_config_last_rejection_timestamp_seconds = %v", got)
	}
	if got := metric(t, base+"/metrics", "keel_config_version"); got != 1 {
		t.Errorf("keel_config_version = %v, want the version still in effect (1)", got)
	}

	raw := get(t, base+boot.ConfigStatusPath)
	var st boot.ConfigStatus
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	if st.Rejected != 1 || st.LastRejection == nil || len(st.LastRejection.Keys) != 1 || st.LastRejection.Keys[0] != "log_level" {
		t.Fatalf("status does not name the rejected key: %s", raw)
	}
	if st.Version != 1 || st.SourceError != nil || len(st.PendingRestart) != 0 {
		t.Fatalf("status: %s", raw)
	}
	if strings.Contains(string(raw), "loudest") || strings.Contains(string(raw), "debug") {
		t.Fatalf("status exposes configuration values: %s", raw)
	}
	for _, field := range []string{`"version"`, `"applied"`, `"rejected"`, `"last_rejection"`, `"pending_restart"`, `"source_error"`} {
		if !strings.Contains(string(raw), field) {
			t.Errorf("status lacks %s: %s", field, raw)
		}
	}
	if got := watcher.Current().LogLevel; got != "debug" {
		t.Errorf("log_level in effect = %q, want the last good value debug", got)
	}
}
