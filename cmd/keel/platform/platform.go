// Package platform assembles a whole Keel platform in one process: every
// shop service on its own loopback port, registered in an embedded static
// registry, and the edge in front of them. `keel up` and the end-to-end
// tests start it through the same [Start].
package platform

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/keelplatform/keel/edge"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
	userservice "github.com/keelplatform/keel/services/user/service"
)

// Options configure [Start]. The zero value of each field means its
// documented default.
type Options struct {
	// EdgeAddr is where the edge listens. Default "127.0.0.1:8080"; use
	// "127.0.0.1:0" for any free port.
	EdgeAddr string
	// DataDir holds each service's SQLite file. Default "data".
	DataDir string
	// TokenKey signs login tokens; at least 32 bytes. Default: random per
	// start, so tokens do not outlive the platform.
	TokenKey []byte
	// Server is the listener configuration every service gets (its Addr is
	// ignored: services take free loopback ports).
	Server server.Config
	// Logger receives every process's logs. Default: discard.
	Logger *slog.Logger
}

// process is what the platform runs: a service or the edge.
type process interface {
	Listen() error
	Addr() string
	OnStop(func(context.Context))
	Serve(ctx context.Context) error
}

// Platform is a running platform. Stop it by cancelling the context given
// to [Start], then call [Platform.Wait]: the edge drains first, then the
// services.
type Platform struct {
	registry *discovery.Static
	edge     *edge.Edge
	services []string

	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

// Start brings up every service and the edge and returns once all of them
// listen. They serve until ctx is done.
func Start(ctx context.Context, opts Options) (*Platform, error) {
	if opts.EdgeAddr == "" {
		opts.EdgeAddr = "127.0.0.1:8080"
	}
	if opts.DataDir == "" {
		opts.DataDir = "data"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if len(opts.TokenKey) == 0 {
		opts.TokenKey = make([]byte, 32)
		_, _ = rand.Read(opts.TokenKey)
	}
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	p := &Platform{registry: discovery.NewStatic()}
	serviceCfg := opts.Server
	serviceCfg.Addr = "127.0.0.1:0"

	// Services outlive the edge: they stop only after the edge has drained,
	// so calls the edge accepted can still reach them.
	servicesCtx, stopServices := context.WithCancel(context.WithoutCancel(ctx))
	fail := func(err error) (*Platform, error) {
		stopServices()
		_ = p.Wait()
		return nil, err
	}

	users, err := userservice.New(ctx, userservice.Config{
		Server:   serviceCfg,
		Database: database.Config{Driver: database.DriverSQLite, DataDir: opts.DataDir, Name: userservice.Name},
		TokenKey: opts.TokenKey,
	}, opts.Logger.With(slog.String("service", "user")))
	if err != nil {
		return fail(fmt.Errorf("user service: %w", err))
	}
	if err := p.startService(servicesCtx, userservice.Name, users); err != nil {
		return fail(err)
	}

	e, err := edge.New(edge.Config{Server: withAddr(opts.Server, opts.EdgeAddr)}, p.registry, opts.Logger.With(slog.String("service", "edge")))
	if err != nil {
		return fail(err)
	}
	if err := e.Listen(); err != nil {
		return fail(fmt.Errorf("edge: %w", err))
	}
	p.edge = e
	p.run(ctx, "edge", e, stopServices)
	return p, nil
}

func withAddr(cfg server.Config, addr string) server.Config {
	cfg.Addr = addr
	return cfg
}

// startService listens, registers the instance and serves it; at shutdown
// the instance is deregistered before it drains.
func (p *Platform) startService(ctx context.Context, name string, proc process) error {
	if err := proc.Listen(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	inst := discovery.Instance{
		ID:      name + "-" + proc.Addr(),
		Service: name,
		Addr:    proc.Addr(),
		Tags:    []string{"connect", "grpc", "grpc-web"},
	}
	if err := p.registry.Register(ctx, inst); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	proc.OnStop(func(ctx context.Context) { _ = p.registry.Deregister(ctx, inst.ID) })
	p.services = append(p.services, name+"@"+proc.Addr())
	p.run(ctx, name, proc)
	return nil
}

func (p *Platform) run(ctx context.Context, name string, proc process, after ...func()) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for _, fn := range after {
			defer fn()
		}
		if err := proc.Serve(ctx); err != nil {
			p.mu.Lock()
			p.errs = append(p.errs, fmt.Errorf("%s: %w", name, err))
			p.mu.Unlock()
		}
	}()
}

// EdgeAddr is the host:port of the edge.
func (p *Platform) EdgeAddr() string { return p.edge.Addr() }

// Services lists the running services as name@host:port.
func (p *Platform) Services() []string { return append([]string(nil), p.services...) }

// Registry is the embedded registry the services are registered in.
func (p *Platform) Registry() *discovery.Static { return p.registry }

// Wait blocks until every process has stopped and returns their errors.
func (p *Platform) Wait() error {
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	return errors.Join(p.errs...)
}
