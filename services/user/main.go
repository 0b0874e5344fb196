// Command user runs the user service. Its settings come from
// consul/kv/<env>/user.yaml, Consul KV keel/<env>/user/ when
// CONSUL_HTTP_ADDR is set, and KEEL_<KEY> environment variables; KEEL_ENV
// picks the environment (local, test or prod). Secrets come from the
// environment only: KEEL_TOKEN_KEY (required) and KEEL_DATABASE_DSN.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/internal/boot"
	userservice "github.com/keelplatform/keel/services/user/service"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	backend, err := consul.BackendFromEnv()
	if err != nil {
		return fmt.Errorf("user: %w", err)
	}
	defer backend.Close()
	return boot.Run(ctx, userservice.Service(), boot.Options{Backend: backend})
}
