// Package platform assembles a whole Keel platform in one process: every
// shop service and the edge, each booted exactly as its own binary boots it
// (internal/boot), sharing one discovery backend: the embedded static
// registry by default, or Consul. `keel up` and the end-to-end tests start
// it through the same [Start].
package platform

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
)

// Options configure [Start]. The zero value of each field means its
// documented default.
type Options struct {
	// Env selects the configuration environment. Default local.
	Env config.Env
	// ConfigDir holds the seed files <env>/<service>.yaml. Default "consul/kv".
	ConfigDir string
	// Backend is discovery and configuration shared by every process.
	// Default: a new embedded static registry.
	Backend boot.Backend
	// EdgeAddr, when set, overrides the edge's server/addr setting.
	EdgeAddr string
	// DataDir, when set, overrides the services' database/data_dir setting.
	DataDir string
	// RedisAddr, when set, overrides the services' cache/redis_addr
	// setting, and the edge's rate_limits/redis_addr: caches keep entries
	// in that Redis, and every edge instance shares its rate limits there.
	RedisAddr string
	// TokenKey signs login tokens; at least 32 bytes. Default: KEEL_TOKEN_KEY,
	// or a random key per start, so tokens do not outlive the platform.
	TokenKey string
	// IdentityKey signs the identity the edge vouches for to the
	// services; at least 32 bytes. Default: KEEL_IDENTITY_KEY, or a random
	// key per start.
	IdentityKey string
	// Log receives every process's JSON logs. Default: discarded.
	Log io.Writer
	// Demo puts [DemoItems] in the catalogue once the services run, as
	// `keel up` does.
	Demo bool
	// ProcessEnv sets environment variables for one process alone, by its
	// name (a service's or "edge"), over the process environment and the
	// overrides above; an empty value leaves the variable to them. For
	// example {"order": {"KEEL_DATABASE_DRIVER": "postgres",
	// "KEEL_DATABASE_DSN": dsn}} gives the order service a PostgreSQL
	// database of its own.
	ProcessEnv map[string]map[string]string
}

// Platform is a running platform. Stop it by cancelling the context given
// to [Start], then call [Platform.Wait]: the edge drains first, then the
// services.
type Platform struct {
	edge     *boot.Running
	services []*boot.Running
	stop     context.CancelFunc
	// stopOne stops one service, by name, for drills and tests.
	stopOne map[string]context.CancelFunc
}

// Start boots every service, dependencies first ([InStartOrder]), then
// the edge, and returns once all of them listen and are registered. They
// serve until ctx is done; then the edge drains first, and the services
// stop in the reverse of their start order.
func Start(ctx context.Context, opts Options) (*Platform, error) {
	if opts.Backend == nil {
		opts.Backend = boot.Static{Discovery: discovery.NewStatic()}
	}
	if opts.Log == nil {
		opts.Log = io.Discard
	}
	opts.TokenKey = keyOrRandom(opts.TokenKey, auth.TokenKeyVar)
	opts.IdentityKey = keyOrRandom(opts.IdentityKey, auth.IdentityKeyVar)
	keys := func(overrides map[string]string) map[string]string {
		overrides[auth.TokenKeyVar] = opts.TokenKey
		overrides[auth.IdentityKeyVar] = opts.IdentityKey
		return overrides
	}
	bootOpts := func(name string, overrides map[string]string) boot.Options {
		for k, v := range opts.ProcessEnv[name] {
			if v != "" {
				overrides[k] = v
			}
		}
		return boot.Options{
			Env:       opts.Env,
			ConfigDir: opts.ConfigDir,
			Backend:   opts.Backend,
			Log:       opts.Log,
			LookupEnv: func(name string) (string, bool) {
				if v, ok := overrides[name]; ok && v != "" {
					return v, true
				}
				return os.LookupEnv(name)
			},
		}
	}

	// Services outlive the edge: they stop only after the edge has drained,
	// so calls the edge accepted can still reach them.
	servicesCtx, stopServices := context.WithCancel(context.WithoutCancel(ctx))
	p := &Platform{stop: stopServices, stopOne: map[string]context.CancelFunc{}}
	fail := func(err error) (*Platform, error) {
		stopServices()
		_ = p.Wait()
		return nil, err
	}

	services, err := InStartOrder()
	if err != nil {
		return fail(err)
	}
	for _, svc := range services {
		svcCtx, stopSvc := context.WithCancel(servicesCtx)
		p.stopOne[svc.Name] = stopSvc
		r, err := svc.Start(svcCtx, bootOpts(svc.Name, keys(map[string]string{
			"KEEL_DATABASE_DATA_DIR": opts.DataDir,
			"KEEL_CACHE_REDIS_ADDR":  opts.RedisAddr,
		})))
		if err != nil {
			return fail(err)
		}
		p.services = append(p.services, r)
	}

	if opts.Demo {
		if err := SeedDemo(ctx, opts.Backend.Resolver(), []byte(opts.IdentityKey)); err != nil {
			return fail(err)
		}
	}

	edgeProc := Edge()
	e, err := edgeProc.Start(ctx, bootOpts(edgeProc.Name, keys(map[string]string{
		"KEEL_SERVER_ADDR":            opts.EdgeAddr,
		"KEEL_RATE_LIMITS_REDIS_ADDR": opts.RedisAddr,
	})))
	if err != nil {
		return fail(err)
	}
	p.edge = e
	go func() {
		_ = e.Wait()
		// Callers first: each service stops, and drains, before the
		// services it calls.
		for i := len(p.services) - 1; i >= 0; i-- {
			p.stopOne[p.services[i].Instance.Service]()
			_ = p.services[i].Wait()
		}
		stopServices()
	}()
	return p, nil
}

// EdgeAddr is the host:port of the edge.
func (p *Platform) EdgeAddr() string { return p.edge.Instance.Addr }

// Services lists the running services as name@host:port.
func (p *Platform) Services() []string {
	names := make([]string, 0, len(p.services))
	for _, s := range p.services {
		names = append(names, s.Instance.Service+"@"+s.Instance.Addr)
	}
	return names
}

// StopService stops the service named name, as a graceful shutdown does
// (it deregisters, drains and ends), and waits for it; the rest of the
// platform runs on without it. For drills and tests of how the others
// cope.
func (p *Platform) StopService(name string) error {
	stop, ok := p.stopOne[name]
	if !ok {
		return fmt.Errorf("platform: no service %q", name)
	}
	stop()
	for _, r := range p.services {
		if r.Instance.Service == name {
			return r.Wait()
		}
	}
	return nil
}

// Wait blocks until every process has stopped and returns their errors.
func (p *Platform) Wait() error {
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	all := append([]*boot.Running{}, p.services...)
	if p.edge != nil {
		all = append(all, p.edge)
	}
	for _, r := range all {
		wg.Go(func() {
			if err := r.Wait(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("%s: %w", r.Instance.Service, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// keyOrRandom returns key, or the environment variable name, or a random
// key: secrets that only need to be shared by the platform's processes
// for as long as it runs.
func keyOrRandom(key, name string) string {
	if key == "" {
		key = os.Getenv(name)
	}
	if key == "" {
		b := make([]byte, 32)
		_, _ = rand.Read(b)
		key = hex.EncodeToString(b)
	}
	return key
}
