package consul_test

import (
	"context"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/internal/config"
)

// A process takes its configuration from the seed file and Consul KV
// keel/<env>/<service>/, and follows changes while it runs.
func ExampleNewKVSource() {
	type Settings struct {
		config.Process `yaml:",inline"`
		// TokenTTL is how long a login token is valid. Default 1h.
		TokenTTL time.Duration `yaml:"token_ttl"`
	}
	env, err := config.EnvFromEnviron() // KEEL_ENV
	if err != nil {
		log.Fatal(err)
	}
	client, err := consul.NewClient(consul.ConfigFromEnv())
	if err != nil {
		log.Fatal(err)
	}
	var level slog.LevelVar
	logger := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: &level}))
	// The watcher follows KV for as long as its context lives: the process's.
	w, err := config.Start(context.Background(), config.Options[Settings]{
		Service:  "user",
		Env:      env,
		Dir:      "consul/kv",
		Source:   consul.NewKVSource(client, env, "user", consul.KVSourceConfig{}),
		Defaults: Settings{Process: config.DefaultProcess(), TokenTTL: time.Hour},
		Logger:   logger,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer w.Close()
	config.FollowLogLevel(w, &level)
	logger.Info("serving", slog.String("addr", w.Current().Server.Addr))
}
