package config_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/testkit"
)

// TestFollowLogLevel drives a Watcher with a MemorySource and checks that
// the LevelVar given to FollowLogLevel, and so a logger using it, follows
// log_level through every change the watcher applies, and only those.
func TestFollowLogLevel(t *testing.T) {
	t.Parallel()
	w, src, _ := startWatcher(t, map[string]string{"log_level": "warn"})
	var level slog.LevelVar // info, the zero value
	var out testkit.Buffer
	logger := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: &level}))

	config.FollowLogLevel(w, &level)
	if got := level.Level(); got != slog.LevelWarn {
		t.Fatalf("level %v right after FollowLogLevel, want warn, the level in effect", got)
	}
	logger.Info("info while warn")
	if strings.Contains(out.String(), "info while warn") {
		t.Errorf("info logged at level warn:\n%s", out.String())
	}

	// Subscribed after FollowLogLevel, so called after its subscriber:
	// when a configuration arrives here, the LevelVar has seen it.
	applied := make(chan settings, 1)
	w.OnChange(func(_, cfg settings) { applied <- cfg })
	next := func(what string) settings {
		t.Helper()
		select {
		case cfg := <-applied:
			return cfg
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no configuration applied within 5s", what)
			return settings{}
		}
	}

	// Each applied change of log_level reaches the LevelVar.
	for _, step := range []struct {
		value string
		want  slog.Level
	}{
		{"debug", slog.LevelDebug},
		{"error", slog.LevelError},
		{"info", slog.LevelInfo},
		{"debug", slog.LevelDebug},
	} {
		src.Set("log_level", step.value)
		if cfg := next("log_level " + step.value); cfg.LogLevel != step.value {
			t.Fatalf("applied log_level %q, want %q", cfg.LogLevel, step.value)
		}
		if got := level.Level(); got != step.want {
			t.Errorf("level %v after log_level changed to %s, want %v", got, step.value, step.want)
		}
	}
	logger.Debug("debug while debug")
	if !strings.Contains(out.String(), "debug while debug") {
		t.Errorf("debug not logged after log_level changed to debug:\n%s", out.String())
	}

	// A rejected configuration leaves the level as it is.
	src.Set("log_level", "loud")
	eventually(t, "rejection", func() bool { return w.Status().Rejected == 1 })
	if got := level.Level(); got != slog.LevelDebug {
		t.Errorf("level %v after a rejected log_level, want debug, the last good one", got)
	}

	// A change of another key keeps the level.
	src.SetAll(map[string]string{"log_level": "debug", "feature_flags/x": "true"})
	if cfg := next("feature flag"); !cfg.Enabled("x") {
		t.Fatalf("applied %+v, want feature flag x on", cfg.Process)
	}
	if got := level.Level(); got != slog.LevelDebug {
		t.Errorf("level %v after an unrelated change, want debug", got)
	}

	// Removing the key brings back the default.
	src.Delete("log_level")
	next("log_level removed")
	if got := level.Level(); got != slog.LevelInfo {
		t.Errorf("level %v after log_level was removed, want info, the default", got)
	}
}

// TestFollowLogLevelWithoutSource checks the level a process without a
// Source gets: the one built from its layers, here the environment.
func TestFollowLogLevelWithoutSource(t *testing.T) {
	t.Parallel()
	w, err := config.Start(t.Context(), config.Options[settings]{
		Service: "svc", Defaults: defaults(), LookupEnv: envMap(map[string]string{"KEEL_LOG_LEVEL": "error"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	var level slog.LevelVar
	config.FollowLogLevel(w, &level)
	if got := level.Level(); got != slog.LevelError {
		t.Errorf("level %v, want error from KEEL_LOG_LEVEL", got)
	}
}
