// Package service assembles the payment service: its settings, its store,
// its payment provider, its handler and a server that speaks every
// protocol on one port. The payment binary (services/payment) and
// `keel up` both boot it through [Service].
package service

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/google/uuid"

	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/drill"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/services/payment/internal/handler"
	"github.com/keelplatform/keel/services/payment/internal/provider"
	"github.com/keelplatform/keel/services/payment/internal/store"
)

// Name is the payment service's logical name in discovery and
// configuration.
const Name = "payment"

// DatabaseDSNVar is [database.DSNVar], the secret PostgreSQL connection
// string of the service's database.
const DatabaseDSNVar = database.DSNVar

// CrashPoints are the points of a charge at which the crash drill of
// tests (KEEL_CRASH_AT, see internal/drill) kills the process: after the
// provider took the money and before the ledger says so, and after the
// ledger says so and before the caller is answered.
var CrashPoints = []string{handler.CrashAfterProvider, handler.CrashAfterCapture}

// RefundCrashPoints are the points of a refund at which the crash drill
// kills the process: after the provider gave the money back and before
// the ledger says so, and after the ledger says so and before the
// caller is answered.
var RefundCrashPoints = []string{handler.CrashAfterProviderRefund, handler.CrashAfterRefundRecord}

// ProviderStatement is what the books of the built-in payment provider
// hold: every charge by its key (the Charge request's idempotency key),
// with what was refunded of it, and every refund by its key
// ([ProviderRefundKey] of the Refund request's idempotency key).
type ProviderStatement = provider.Statement

// ReadProviderBooks reads the books the built-in payment provider keeps
// in dataDir, the service's database/data_dir, to reconcile them with
// the ledger and with what callers were told: it reads the file
// read-only, from a service that runs or was killed, and fails if there
// are none. The books are the simulator's own, a file apart from the
// ledger (which may be on PostgreSQL), as an outside provider keeps its
// own.
func ReadProviderBooks(ctx context.Context, dataDir string) (ProviderStatement, error) {
	return provider.ReadStatement(ctx, dataDir)
}

// ProviderRefundKey returns the key under which the payment service asks
// the provider to refund, for a Refund request with the idempotency key
// key.
func ProviderRefundKey(key string) string { return handler.ProviderRefundKey(key) }

// maxLatency bounds simulator/latency.
const maxLatency = 30 * time.Second

// Settings are the payment service's configuration, the keys of
// consul/kv/<env>/payment.yaml and of keel/<env>/payment/ in Consul KV.
type Settings struct {
	config.Process `yaml:",inline"`
	// Simulator sets how the built-in payment provider answers. Dynamic:
	// a change applies to the charges that start after it. Default: every
	// charge taken at once.
	Simulator Simulator `yaml:"simulator"`
	// Database is where payments and the ledger are stored. Static.
	// Default: SQLite under "data".
	Database Database `yaml:"database" keel:"static"`
}

// Simulator sets how the built-in payment provider, a deterministic
// simulator that takes no real money, answers charges. Whatever the
// settings, it keeps books of what it charged and refunded by key, as a
// real provider does, in the file payment-provider.db under
// database/data_dir (apart from the ledger, whichever the database
// driver): a key it knows is answered as the first time, and refunds
// never exceed their charge. Refunds are given back at once.
type Simulator struct {
	// DeclineOverMinor declines, with reason "amount_over_limit", charges
	// of more than this many minor units; 0 means no limit. Dynamic.
	// Default 0.
	DeclineOverMinor int64 `yaml:"decline_over_minor"`
	// DeclineUsers lists the user ids (UUIDs) whose charges are declined
	// with reason "user_blocked". Dynamic. Default none.
	DeclineUsers []string `yaml:"decline_users"`
	// FailureRate is the share of charge attempts, 0 to 1, that fail as
	// if the provider did not answer (unavailable, nothing recorded). An
	// attempt fails when a hash of its idempotency key and of the number
	// of the key's earlier failed attempts falls below the rate, so runs
	// are reproducible and a retry may succeed. Dynamic. Default 0.
	FailureRate float64 `yaml:"failure_rate"`
	// Latency is how long every charge takes, 0 to 30s. Dynamic. Default
	// 0.
	Latency time.Duration `yaml:"latency"`
}

// rules returns the simulator's rules.
func (s Simulator) rules() provider.Rules {
	return provider.Rules{
		DeclineOverMinor: s.DeclineOverMinor,
		DeclineUsers:     s.DeclineUsers,
		FailureRate:      s.FailureRate,
		Latency:          s.Latency,
	}
}

// Database says where payments and the ledger are stored.
type Database struct {
	database.Settings `yaml:",inline"`
	// MaxOpenConns bounds the connections open to the database at once,
	// 1 to 1000; calls past it wait for a free one. Default 16.
	MaxOpenConns int `yaml:"max_open_conns"`
}

// DefaultSettings returns the documented defaults.
func DefaultSettings() Settings {
	return Settings{
		Process:  config.DefaultProcess(),
		Database: Database{Settings: database.DefaultSettings(), MaxOpenConns: store.DefaultMaxOpenConns},
	}
}

// Validate reports every setting out of range, naming its key.
func (s Settings) Validate() error {
	errs := []error{s.Process.Validate()}
	bad := func(key, format string, args ...any) {
		errs = append(errs, &config.KeyError{Key: key, Err: fmt.Errorf(format, args...)})
	}
	if s.Simulator.DeclineOverMinor < 0 {
		bad("simulator/decline_over_minor", "must be 0 (no limit) or more, got %d", s.Simulator.DeclineOverMinor)
	}
	for i, u := range s.Simulator.DeclineUsers {
		if _, err := uuid.Parse(u); err != nil {
			bad("simulator/decline_users", "entry %d must be a user id (a UUID), got %q", i, u)
		}
	}
	if r := s.Simulator.FailureRate; math.IsNaN(r) || r < 0 || r > 1 {
		bad("simulator/failure_rate", "must be 0 to 1, got %v", r)
	}
	if d := s.Simulator.Latency; d < 0 || d > maxLatency {
		bad("simulator/latency", "must be 0 to %s, got %s", maxLatency, d)
	}
	if n := s.Database.MaxOpenConns; n < 1 || n > 1000 {
		bad("database/max_open_conns", "must be 1 to 1000, got %d", n)
	}
	errs = append(errs, s.Database.Validate("database")...)
	return errors.Join(errs...)
}

// Service describes the payment service to [boot].
func Service() boot.Service[Settings] {
	return boot.Service[Settings]{
		Name:     Name,
		Meta:     map[string]string{"contract": "shop.payment.v1", "services": paymentv1connect.PaymentServiceName},
		Defaults: DefaultSettings(),
		Build:    build,
	}
}

// process is the running payment service: its server, closing the store
// and the provider's books once the server has drained.
type process struct {
	*server.Server
	store *store.Store
	books *provider.Books
}

func (p *process) Serve(ctx context.Context) error {
	err := p.Server.Serve(ctx)
	return errors.Join(err, p.store.Close(), p.books.Close())
}

// Close releases the listener, the store and the provider's books of a
// process that will not serve.
func (p *process) Close() error {
	return errors.Join(p.Server.Close(), p.store.Close(), p.books.Close())
}

func build(ctx context.Context, env boot.Env[Settings]) (boot.Process, error) {
	settings := env.Config.Current()
	db, err := settings.Database.Config(Name, env.Secret)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("payment store: %w", err)
	}
	st.SetMaxOpenConns(settings.Database.MaxOpenConns)
	books, err := provider.OpenBooks(ctx, settings.Database.DataDir)
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("payment provider: %w", err)
	}
	sim := provider.NewSimulator(settings.Simulator.rules(), books)
	crashAt, _ := env.Secret(drill.Var) // crash tests only
	h, err := handler.New(st, sim, env.Logger, handler.WithCrashDrill(drill.At(crashAt)))
	if err != nil {
		_ = errors.Join(st.Close(), books.Close())
		return nil, fmt.Errorf("payment handler: %w", err)
	}
	env.Config.OnChange(func(_, s Settings) { sim.SetRules(s.Simulator.rules()) })

	srv := env.Server()
	srv.Handle(paymentv1connect.NewPaymentServiceHandler(h, srv.HandlerOptions()...))
	return &process{Server: srv, store: st, books: books}, nil
}
