package config_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/keelplatform/keel/internal/config"
)

// A process declares its settings, documents their defaults, starts a
// Watcher and reads the configuration in effect when it needs it. Here the
// KV layer is in memory; in production it is consul.NewKVSource.
func ExampleStart() {
	// Settings are the example service's settings.
	type Settings struct {
		config.Process `yaml:",inline"`
		// TokenTTL is how long a login token is valid. Dynamic. Default 1h.
		TokenTTL time.Duration `yaml:"token_ttl"`
	}
	defaults := Settings{Process: config.DefaultProcess(), TokenTTL: time.Hour}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv := config.NewMemorySource(map[string]string{"token_ttl": "30m"})
	w, err := config.Start(ctx, config.Options[Settings]{
		Service:   "example",
		Env:       config.EnvLocal,
		Source:    kv,
		Defaults:  defaults,
		Logger:    slog.New(slog.DiscardHandler),
		LookupEnv: func(string) (string, bool) { return "", false },
	})
	if err != nil {
		log.Fatal(err) // a bad configuration stops the process at start
	}
	defer w.Close()
	var level slog.LevelVar
	config.FollowLogLevel(w, &level)
	changed := make(chan struct{})
	w.OnChange(func(old, new Settings) {
		fmt.Println("token_ttl:", old.TokenTTL, "->", new.TokenTTL)
		close(changed)
	})

	fmt.Println("token_ttl:", w.Current().TokenTTL, "level:", level.Level())
	kv.Set("token_ttl", "15m")
	<-changed
	// Output:
	// token_ttl: 30m0s level: INFO
	// token_ttl: 30m0s -> 15m0s
}
