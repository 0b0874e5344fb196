// Package service assembles the inventory service: its settings, its
// store, its handler, the sweep that returns the stock of expired
// reservations, and a server that speaks every protocol on one port. The
// inventory binary (services/inventory) and `keel up` both boot it through
// [Service].
package service

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/cache"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/services/inventory/internal/handler"
	"github.com/keelplatform/keel/services/inventory/internal/store"
)

// Name is the inventory service's logical name in discovery and
// configuration.
const Name = "inventory"

// DatabaseDSNVar is [database.DSNVar], the secret PostgreSQL connection
// string of the service's database.
const DatabaseDSNVar = database.DSNVar

// Settings are the inventory service's configuration, the keys of
// consul/kv/<env>/inventory.yaml and of keel/<env>/inventory/ in Consul KV.
type Settings struct {
	config.Process `yaml:",inline"`
	// Reservations is how long stock is held for an order.
	Reservations Reservations `yaml:"reservations"`
	// Database is where items and reservations are stored. Static.
	// Default: SQLite under "data".
	Database database.Settings `yaml:"database" keel:"static"`
	// Cache holds items read by GetItem: Redis when cache/redis_addr is
	// set, process memory otherwise, nowhere when cache/enabled is false.
	// Static. Defaults: see [cache.DefaultConfig].
	Cache cache.Config `yaml:"cache" keel:"static"`
	// ItemFilter sizes the filter of skus that exist, which turns away
	// lookups of skus that cannot exist. Static. Defaults: see
	// [cache.DefaultFilterConfig].
	ItemFilter cache.FilterConfig `yaml:"item_filter" keel:"static"`
}

// Reservations says how long a reservation holds stock.
type Reservations struct {
	// HoldFor is how long a reservation neither committed nor released
	// holds its stock before it expires and the stock returns, from 1s to
	// 24h. Dynamic: applies to reservations made after the change.
	// Default 15m.
	HoldFor time.Duration `yaml:"hold_for"`
	// SweepEvery is how often expired reservations are looked for, from
	// 100ms to 1h. Dynamic. Default 30s.
	SweepEvery time.Duration `yaml:"sweep_every"`
}

// DefaultSettings returns the documented defaults.
func DefaultSettings() Settings {
	return Settings{
		Process:      config.DefaultProcess(),
		Reservations: Reservations{HoldFor: 15 * time.Minute, SweepEvery: 30 * time.Second},
		Database:     database.DefaultSettings(),
		Cache:        cache.DefaultConfig(),
		ItemFilter:   cache.DefaultFilterConfig(),
	}
}

// Validate reports every setting out of range, naming its key.
func (s Settings) Validate() error {
	errs := []error{s.Process.Validate()}
	bad := func(key, format string, args ...any) {
		errs = append(errs, &config.KeyError{Key: key, Err: fmt.Errorf(format, args...)})
	}
	if d := s.Reservations.HoldFor; d < time.Second || d > 24*time.Hour {
		bad("reservations/hold_for", "must be 1s to 24h, got %s", d)
	}
	if d := s.Reservations.SweepEvery; d < 100*time.Millisecond || d > time.Hour {
		bad("reservations/sweep_every", "must be 100ms to 1h, got %s", d)
	}
	errs = append(errs, s.Database.Validate("database")...)
	errs = append(errs, s.Cache.Validate("cache")...)
	errs = append(errs, s.ItemFilter.Validate("item_filter")...)
	return errors.Join(errs...)
}

// Service describes the inventory service to [boot].
func Service() boot.Service[Settings] {
	return boot.Service[Settings]{
		Name:     Name,
		Meta:     map[string]string{"contract": "shop.inventory.v1", "services": inventoryv1connect.InventoryServiceName},
		Defaults: DefaultSettings(),
		Build:    build,
	}
}

// process is the running inventory service: its server, the expiry sweep,
// the item cache and the store, closed once the server has drained.
type process struct {
	*server.Server
	store *store.Store
	cache *cache.Cache
	sweep *sweeper
}

func (p *process) Serve(ctx context.Context) error {
	sweepCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { p.sweep.run(sweepCtx); close(done) }()
	err := p.Server.Serve(ctx)
	stop()
	<-done
	p.cache.Close()
	return errors.Join(err, p.store.Close())
}

// Close releases the listener and the store of a process that will not
// serve.
func (p *process) Close() error {
	p.cache.Close()
	return errors.Join(p.Server.Close(), p.store.Close())
}

func build(ctx context.Context, env boot.Env[Settings]) (boot.Process, error) {
	settings := env.Config.Current()
	db, err := settings.Database.Config(Name, env.Secret)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("inventory store: %w", err)
	}
	items, err := cache.New(ctx, settings.Cache, cache.Options{Name: "inventory:item", Metrics: env.Metrics, Logger: env.Logger})
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("inventory cache: %w", err)
	}
	filter, err := items.NewFilter("skus", settings.ItemFilter)
	if err == nil {
		err = filter.Rebuild(ctx, store.SKUs(ctx, st))
	}
	if err != nil {
		items.Close()
		_ = st.Close()
		return nil, fmt.Errorf("inventory cache: sku filter: %w", err)
	}
	cached := handler.Cached{Store: st, Cache: items, Filter: filter, Logger: env.Logger}
	h := handler.New(st, cached, settings.Reservations.HoldFor, env.Logger)
	sw := &sweeper{store: st, items: cached, every: settings.Reservations.SweepEvery, reset: make(chan struct{}, 1), logger: env.Logger}
	env.Config.OnChange(func(_, s Settings) {
		h.SetHoldFor(s.Reservations.HoldFor)
		sw.setEvery(s.Reservations.SweepEvery)
	})
	srv := env.Server()
	srv.Handle(inventoryv1connect.NewInventoryServiceHandler(h, srv.HandlerOptions()...))
	return &process{Server: srv, store: st, cache: items, sweep: sw}, nil
}

// sweeper returns the stock of reservations that expired, and tells the
// item cache of the items whose stock it changed.
type sweeper struct {
	store  *store.Store
	items  handler.Items
	logger interface {
		Warn(msg string, args ...any)
		Info(msg string, args ...any)
	}
	mu    sync.Mutex
	every time.Duration
	reset chan struct{} // wakes a wait begun under the old period
}

func (s *sweeper) setEvery(d time.Duration) {
	s.mu.Lock()
	changed := s.every != d
	s.every = d
	s.mu.Unlock()
	if changed {
		select {
		case s.reset <- struct{}{}:
		default:
		}
	}
}

func (s *sweeper) run(ctx context.Context) {
	for {
		s.mu.Lock()
		every := s.every
		s.mu.Unlock()
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.reset:
			t.Stop()
			continue // wait again, under the new period
		case <-t.C:
		}
		expired, err := s.store.ExpireBefore(ctx, time.Now())
		for _, r := range expired {
			for _, l := range r.Lines {
				s.items.Changed(ctx, l.SKU)
			}
		}
		if err != nil && ctx.Err() == nil {
			s.logger.Warn("expiring reservations", "error", err.Error())
		}
		if len(expired) > 0 {
			s.logger.Info("expired reservations released", "count", len(expired))
		}
	}
}
