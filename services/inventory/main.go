// Command inventory runs the inventory service. Its settings come from
// consul/kv/<env>/inventory.yaml, Consul KV keel/<env>/inventory/ when
// CONSUL_HTTP_ADDR is set, and KEEL_<KEY> environment variables; KEEL_ENV
// picks the environment (local, test or prod). The PostgreSQL DSN, a
// secret, comes from KEEL_DATABASE_DSN only.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/internal/boot"
	inventoryservice "github.com/keelplatform/keel/services/inventory/service"
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
		return fmt.Errorf("inventory: %w", err)
	}
	defer backend.Close()
	return boot.Run(ctx, inventoryservice.Service(), boot.Options{Backend: backend})
}
