// Package service assembles the order service: its settings, its store
// (orders and their sagas), the place-order saga's orchestrator and its
// recovery of unfinished sagas, its handler, and a server that speaks
// every protocol on one port. The order binary (services/order) and
// `keel up` both boot it through [Service].
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/client"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/drill"
	"github.com/keelplatform/keel/internal/saga"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/services/order/internal/handler"
	"github.com/keelplatform/keel/services/order/internal/order"
	"github.com/keelplatform/keel/services/order/internal/placeorder"
	"github.com/keelplatform/keel/services/order/internal/store"
)

// Name is the order service's logical name in discovery and
// configuration.
const Name = "order"

// DatabaseDSNVar is [database.DSNVar], the secret PostgreSQL connection
// string of the service's database.
const DatabaseDSNVar = database.DSNVar

// Settings are the order service's configuration, the keys of
// consul/kv/<env>/order.yaml and of keel/<env>/order/ in Consul KV.
type Settings struct {
	config.Process `yaml:",inline"`
	// Saga tunes the place-order saga's orchestrator.
	Saga Saga `yaml:"saga"`
	// Database is where orders and sagas are stored. Static. Default:
	// SQLite under "data".
	Database database.Settings `yaml:"database" keel:"static"`
}

// Saga tunes the place-order saga. The orchestrator takes its options
// when it is made, so all but RecoveryInterval are static.
type Saga struct {
	// LeaseTTL is how long an instance's lease on a saga lasts unless
	// renewed (every third of it); the sagas of an instance that died
	// are resumed by another once it has run out. 100ms to 10m. Static.
	// Default 30s.
	LeaseTTL time.Duration `yaml:"lease_ttl" keel:"static"`
	// MaxAttempts is how many times a step's action is tried before its
	// transient failures cancel the order (compensating that step too,
	// its outcome being unknown); commit-stock, past the charge, is
	// retried until it succeeds instead. 1 to 100. Static. Default 5.
	MaxAttempts int `yaml:"max_attempts" keel:"static"`
	// Backoff is the delay before the first retry of a step, doubling
	// with every retry, with jitter. 1ms to 1m. Static. Default 100ms.
	Backoff time.Duration `yaml:"backoff" keel:"static"`
	// MaxBackoff caps the delay between retries of an action, from
	// backoff to 10m. Static. Default 5s.
	MaxBackoff time.Duration `yaml:"max_backoff" keel:"static"`
	// CompensationMaxBackoff caps the delay between retries of a
	// compensation (and of commit-stock), which are retried until they
	// succeed; from backoff to 1h. Static. Default 1m.
	CompensationMaxBackoff time.Duration `yaml:"compensation_max_backoff" keel:"static"`
	// PollInterval is how often a PlaceOrder waiting for a saga another
	// instance drives reads it. 10ms to 1m. Static. Default 500ms.
	PollInterval time.Duration `yaml:"poll_interval" keel:"static"`
	// RecoveryInterval is how often the instance looks for unfinished
	// sagas whose lease is free or expired (those of instances that
	// died) and carries them on; it also does at start. 100ms to 1h.
	// Dynamic. Default 10s.
	RecoveryInterval time.Duration `yaml:"recovery_interval"`
}

// DefaultSettings returns the documented defaults.
func DefaultSettings() Settings {
	return Settings{
		Process: config.DefaultProcess(),
		Saga: Saga{
			LeaseTTL:               30 * time.Second,
			MaxAttempts:            5,
			Backoff:                100 * time.Millisecond,
			MaxBackoff:             5 * time.Second,
			CompensationMaxBackoff: time.Minute,
			PollInterval:           500 * time.Millisecond,
			RecoveryInterval:       10 * time.Second,
		},
		Database: database.DefaultSettings(),
	}
}

// Validate reports every setting out of range, naming its key.
func (s Settings) Validate() error {
	errs := []error{s.Process.Validate()}
	bad := func(key, format string, args ...any) {
		errs = append(errs, &config.KeyError{Key: key, Err: fmt.Errorf(format, args...)})
	}
	between := func(key string, d, lo, hi time.Duration) {
		if d < lo || d > hi {
			bad(key, "must be %s to %s, got %s", lo, hi, d)
		}
	}
	g := s.Saga
	between("saga/lease_ttl", g.LeaseTTL, 100*time.Millisecond, 10*time.Minute)
	if g.MaxAttempts < 1 || g.MaxAttempts > 100 {
		bad("saga/max_attempts", "must be 1 to 100, got %d", g.MaxAttempts)
	}
	between("saga/backoff", g.Backoff, time.Millisecond, time.Minute)
	between("saga/max_backoff", g.MaxBackoff, max(g.Backoff, time.Millisecond), 10*time.Minute)
	between("saga/compensation_max_backoff", g.CompensationMaxBackoff, max(g.Backoff, time.Millisecond), time.Hour)
	between("saga/poll_interval", g.PollInterval, 10*time.Millisecond, time.Minute)
	between("saga/recovery_interval", g.RecoveryInterval, 100*time.Millisecond, time.Hour)
	errs = append(errs, s.Database.Validate("database")...)
	return errors.Join(errs...)
}

// Service describes the order service to [boot].
func Service() boot.Service[Settings] {
	return boot.Service[Settings]{
		Name:     Name,
		Meta:     map[string]string{"contract": "shop.order.v1", "services": orderv1connect.OrderServiceName},
		Defaults: DefaultSettings(),
		Build:    build,
	}
}

// process is the running order service: its server, the recovery of
// unfinished sagas, the orchestrator, and the store, closed in that
// order once the server has drained.
type process struct {
	*server.Server
	store    *store.Store
	sagas    *saga.Orchestrator[order.State]
	recovery *recovery
}

// Serve starts the recovery of unfinished sagas (at once, then every
// saga/recovery_interval) and serves until ctx is done. Once the server
// has drained, it closes the orchestrator, which stops the sagas still
// driven here and frees their leases for another instance to resume.
func (p *process) Serve(ctx context.Context) error {
	recoverCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { p.recovery.run(recoverCtx); close(done) }()
	err := p.Server.Serve(ctx)
	stop()
	<-done
	return errors.Join(err, p.sagas.Close(), p.store.Close())
}

// Close releases the listener, the orchestrator and the store of a
// process that will not serve.
func (p *process) Close() error {
	return errors.Join(p.Server.Close(), p.sagas.Close(), p.store.Close())
}

func build(ctx context.Context, env boot.Env[Settings]) (boot.Process, error) {
	settings := env.Config.Current()
	db, err := settings.Database.Config(Name, env.Secret)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("order store: %w", err)
	}

	inventory := client.Connect(env.Peers, "inventory", inventoryv1connect.NewInventoryServiceClient)
	payment := client.Connect(env.Peers, "payment", paymentv1connect.NewPaymentServiceClient)
	users := client.Connect(env.Peers, "user", userv1connect.NewUserServiceClient)

	g := settings.Saga
	opts := saga.Options{
		LeaseTTL:               g.LeaseTTL,
		MaxAttempts:            g.MaxAttempts,
		Backoff:                g.Backoff,
		MaxBackoff:             g.MaxBackoff,
		CompensationMaxBackoff: g.CompensationMaxBackoff,
		PollInterval:           g.PollInterval,
		Observer:               observe(env.Logger),
		Logger:                 env.Logger,
	}
	// A crash drill, for tests only: KEEL_CRASH_AT names a saga boundary
	// (saga.Boundary.String, e.g. "after-action:charge-payment"),
	// optionally of one order ("...@<order id>"), at which the process
	// kills itself, so that a test running the binary can check what
	// another run recovers.
	if at, _ := env.Secret(drill.Var); at != "" {
		env.Logger.Warn("crash drill armed: the process kills itself at a saga boundary", slog.String("boundary", at))
		opts.Boundary = crashAt(at)
	}
	orch, err := saga.New(st.Sagas(), placeorder.Definition(placeorder.Peers{Inventory: inventory, Payment: payment, Logger: env.Logger}), opts)
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("order saga: %w", err)
	}
	rec := &recovery{sagas: orch, every: g.RecoveryInterval, changed: make(chan struct{}, 1)}
	env.Config.OnChange(func(_, s Settings) { rec.set(s.Saga.RecoveryInterval) })

	h := handler.New(st, orch, users, inventory, env.Logger)
	srv := env.Server()
	srv.Handle(orderv1connect.NewOrderServiceHandler(h, srv.HandlerOptions()...))
	return &process{Server: srv, store: st, sagas: orch, recovery: rec}, nil
}

// crashAt returns the boundary hook of a crash drill: "<boundary>" kills
// the process at that boundary of any saga, "<boundary>@<saga id>" at
// that boundary of one saga only (an instance also drives the sagas it
// recovers, which may pass the boundary first).
func crashAt(spec string) func(saga.Boundary) error {
	point, id, _ := strings.Cut(spec, "@")
	kill := saga.KillAt(point)
	return func(b saga.Boundary) error {
		if id != "" && b.SagaID != id {
			return nil
		}
		return kill(b)
	}
}

// observe logs the end of each order's saga.
func observe(logger *slog.Logger) func(saga.Event, saga.Record) {
	return func(_ saga.Event, rec saga.Record) {
		switch rec.Status {
		case saga.Completed:
			logger.Info("order confirmed", slog.String("order", rec.ID))
		case saga.Compensated:
			logger.Info("order cancelled", slog.String("order", rec.ID), slog.String("reason", rec.Reason))
		}
	}
}

// recovery resumes unfinished sagas with [saga.Orchestrator.Recover],
// restarting it when the interval changes.
type recovery struct {
	sagas   *saga.Orchestrator[order.State]
	changed chan struct{} // one pending change at most

	mu    sync.Mutex
	every time.Duration
}

func (r *recovery) set(d time.Duration) {
	r.mu.Lock()
	same := d == r.every
	r.every = d
	r.mu.Unlock()
	if !same {
		select {
		case r.changed <- struct{}{}:
		default:
		}
	}
}

func (r *recovery) interval() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.every
}

// run recovers until ctx ends.
func (r *recovery) run(ctx context.Context) {
	for {
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { r.sagas.Recover(runCtx, r.interval()); close(done) }()
		select {
		case <-ctx.Done():
		case <-r.changed:
		}
		cancel()
		<-done
		if ctx.Err() != nil {
			return
		}
	}
}
