// Command order runs the order service. Its settings come from
// consul/kv/<env>/order.yaml, Consul KV keel/<env>/order/ when
// CONSUL_HTTP_ADDR is set, and KEEL_<KEY> environment variables; KEEL_ENV
// picks the environment (local, test or prod). The PostgreSQL DSN, a
// secret, comes from KEEL_DATABASE_DSN only. KEEL_CRASH_AT, for crash
// tests only, names a saga boundary at which the process kills itself
// (see internal/drill and internal/saga).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/internal/boot"
	orderservice "github.com/keelplatform/keel/services/order/service"
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
		return fmt.Errorf("order: %w", err)
	}
	defer backend.Close()
	return boot.Run(ctx, orderservice.Service(), boot.Options{Backend: backend})
}
