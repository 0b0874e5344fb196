// Command edge runs Keel's edge, the platform's front door, on its own.
// Its settings come from consul/kv/<env>/edge.yaml, Consul KV
// keel/<env>/edge/ when CONSUL_HTTP_ADDR is set, and KEEL_<KEY>
// environment variables. Without Consul, KEEL_PEERS lists the services it
// routes to ("user=127.0.0.1:8081,...").
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keelplatform/keel/cmd/keel/platform"
	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/edge"
	"github.com/keelplatform/keel/internal/boot"
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
		return fmt.Errorf("edge: %w", err)
	}
	defer backend.Close()
	return boot.Run(ctx, edge.Service(platform.Contracts()), boot.Options{Backend: backend})
}
