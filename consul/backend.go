package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/consul/api"

	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
)

// Backend is Consul as a process's [boot.Backend]: registration with
// health checks, resolution by blocking queries and configuration from KV.
// Create it with [NewBackend]; it is safe for concurrent use.
type Backend struct {
	client   *api.Client
	registry *Registry
	resolver *Resolver
}

var _ boot.Backend = (*Backend)(nil)

// NewBackend returns a backend over client, logging to logger.
func NewBackend(client *api.Client, logger *slog.Logger) *Backend {
	return &Backend{
		client:   client,
		registry: NewRegistry(client, RegistryConfig{Logger: logger}),
		resolver: NewResolver(client, ResolverConfig{Logger: logger}),
	}
}

// Client is the Consul API client the backend uses.
func (b *Backend) Client() *api.Client { return b.client }

// Registry implements [boot.Backend].
func (b *Backend) Registry() discovery.Registry { return b.registry }

// Resolver implements [boot.Backend].
func (b *Backend) Resolver() discovery.Resolver { return b.resolver }

// ConfigSource implements [boot.Backend]: the keys under keel/<env>/<service>/.
func (b *Backend) ConfigSource(env config.Env, service string) config.Source {
	return NewKVSource(b.client, env, service, KVSourceConfig{})
}

// Close implements [boot.Backend]: it stops the watches and the
// re-registration loop, leaving registrations as they are.
func (b *Backend) Close() error {
	return errors.Join(b.resolver.Close(), b.registry.Close())
}

// BackendFromEnv returns Consul as the backend when CONSUL_HTTP_ADDR is
// set (CONSUL_HTTP_TOKEN is honoured; a token Consul rejects is an error),
// and otherwise the embedded static backend, whose peers come from
// KEEL_PEERS ("user=127.0.0.1:8081,...").
func BackendFromEnv() (boot.Backend, error) {
	if os.Getenv("CONSUL_HTTP_ADDR") == "" {
		peers, err := discovery.ParseStatic(os.Getenv("KEEL_PEERS"))
		if err != nil {
			return nil, fmt.Errorf("KEEL_PEERS: %w", err)
		}
		return boot.Static{Discovery: peers}, nil
	}
	client, err := NewClient(ConfigFromEnv())
	if err != nil {
		return nil, err
	}
	return NewBackend(client, slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))), nil
}

// Main runs svc as a process's main function does: with the backend
// [BackendFromEnv] chooses, until SIGINT or SIGTERM, then drains and
// returns; it exits with status 1, the error on stderr, when svc fails
// to start or to stop cleanly. Every Keel binary's main is this one
// call.
func Main[T boot.Settings](svc boot.Service[T]) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, svc)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run[T boot.Settings](ctx context.Context, svc boot.Service[T]) error {
	backend, err := BackendFromEnv()
	if err != nil {
		return fmt.Errorf("%s: %w", svc.Name, err)
	}
	defer backend.Close()
	return boot.Run(ctx, svc, boot.Options{Backend: backend})
}
