// Command payment runs the payment service. Its settings come from
// consul/kv/<env>/payment.yaml, Consul KV keel/<env>/payment/ when
// CONSUL_HTTP_ADDR is set, and KEEL_<KEY> environment variables; KEEL_ENV
// picks the environment (local, test or prod). Secrets come from the
// environment only: KEEL_DATABASE_DSN.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/internal/boot"
	paymentservice "github.com/keelplatform/keel/services/payment/service"
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
		return fmt.Errorf("payment: %w", err)
	}
	defer backend.Close()
	return boot.Run(ctx, paymentservice.Service(), boot.Options{Backend: backend})
}
