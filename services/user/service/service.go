// Package service assembles the user service: its settings, its store, its
// handler and a server that speaks every protocol on one port. The user
// binary (services/user) and `keel up` both boot it through [Service].
package service

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/cache"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/shed"
	"github.com/keelplatform/keel/services/user/internal/cached"
	"github.com/keelplatform/keel/services/user/internal/handler"
	"github.com/keelplatform/keel/services/user/internal/password"
	"github.com/keelplatform/keel/services/user/internal/store"
)

// Name is the user service's logical name in discovery and configuration.
const Name = "user"

// Secrets the service reads from its environment, never from configuration.
const (
	// TokenKeyVar holds the key that signs login tokens, at least 32 bytes
	// (several while rotating it: see [auth.TokenKeyVar]).
	TokenKeyVar = auth.TokenKeyVar
	// DatabaseDSNVar is [database.DSNVar], the PostgreSQL connection
	// string when database/driver is postgres.
	DatabaseDSNVar = database.DSNVar
)

// Settings are the user service's configuration, the keys of
// consul/kv/<env>/user.yaml and of keel/<env>/user/ in Consul KV.
type Settings struct {
	config.Process `yaml:",inline"`
	// TokenTTL is how long a login token is valid; it applies to tokens
	// issued after a change. Dynamic. Default 1h.
	TokenTTL time.Duration `yaml:"token_ttl"`
	// PasswordHashing is the argon2id cost of new password hashes (static)
	// and how many hashes may run at once (dynamic). Default: time 2,
	// memory_kib 19456, threads 1 (OWASP's minimum), max_concurrent the
	// number of CPUs, max_wait 200ms.
	PasswordHashing Hashing `yaml:"password_hashing"`
	// Database is where accounts are stored. Static. Default: SQLite under "data".
	Database database.Settings `yaml:"database" keel:"static"`
	// Cache holds users read by GetUser (never their password hashes):
	// Redis when cache/redis_addr is set, process memory otherwise,
	// nowhere when cache/enabled is false. Static. Defaults: see
	// [cache.DefaultConfig].
	Cache cache.Config `yaml:"cache" keel:"static"`
	// UserFilter sizes the filter of user ids that exist, which turns away
	// lookups of ids that cannot exist. Static. Defaults: see
	// [cache.DefaultFilterConfig].
	UserFilter cache.FilterConfig `yaml:"user_filter" keel:"static"`
}

// Hashing is an argon2id cost, and how many hashes may run at once.
type Hashing struct {
	// Time is the number of passes over memory, 1 to 64. Static.
	Time uint32 `yaml:"time" keel:"static"`
	// MemoryKiB is the memory per hash in KiB, 8192 to 1048576. Static.
	MemoryKiB uint32 `yaml:"memory_kib" keel:"static"`
	// Threads is the degree of parallelism, 1 to 255. Static.
	Threads uint8 `yaml:"threads" keel:"static"`
	// MaxConcurrent bounds the hashes (Register, Login) computed at once,
	// 1 to 1024, so memory stays bounded at MaxConcurrent x MemoryKiB
	// under any flood. Dynamic. Default: the number of CPUs.
	MaxConcurrent int `yaml:"max_concurrent"`
	// MaxWait is how long a call may wait for a free slot before it is
	// refused with resource_exhausted and a retry hint, 0 to 10s.
	// Dynamic. Default 200ms.
	MaxWait time.Duration `yaml:"max_wait"`
}

// DefaultSettings returns the documented defaults.
func DefaultSettings() Settings {
	return Settings{
		Process:  config.DefaultProcess(),
		TokenTTL: time.Hour,
		PasswordHashing: Hashing{
			Time:          password.DefaultParams.Time,
			MemoryKiB:     password.DefaultParams.Memory,
			Threads:       password.DefaultParams.Threads,
			MaxConcurrent: runtime.NumCPU(),
			MaxWait:       200 * time.Millisecond,
		},
		Database:   database.DefaultSettings(),
		Cache:      cache.DefaultConfig(),
		UserFilter: cache.DefaultFilterConfig(),
	}
}

// Validate reports every setting out of range, naming its key.
func (s Settings) Validate() error {
	errs := []error{s.Process.Validate()}
	bad := func(key, format string, args ...any) {
		errs = append(errs, &config.KeyError{Key: key, Err: fmt.Errorf(format, args...)})
	}
	if s.TokenTTL <= 0 || s.TokenTTL > 30*24*time.Hour {
		bad("token_ttl", "must be positive and at most 720h, got %s", s.TokenTTL)
	}
	if h := s.PasswordHashing; h.Time < 1 || h.Time > 64 {
		bad("password_hashing/time", "must be 1 to 64, got %d", h.Time)
	}
	if h := s.PasswordHashing; h.MemoryKiB < 8192 || h.MemoryKiB > 1<<20 {
		bad("password_hashing/memory_kib", "must be 8192 to 1048576, got %d", h.MemoryKiB)
	}
	if s.PasswordHashing.Threads < 1 {
		bad("password_hashing/threads", "must be 1 to 255, got %d", s.PasswordHashing.Threads)
	}
	if n := s.PasswordHashing.MaxConcurrent; n < 1 || n > 1024 {
		bad("password_hashing/max_concurrent", "must be 1 to 1024, got %d", n)
	}
	if d := s.PasswordHashing.MaxWait; d < 0 || d > 10*time.Second {
		bad("password_hashing/max_wait", "must be 0 to 10s, got %s", d)
	}
	errs = append(errs, s.Database.Validate("database")...)
	errs = append(errs, s.Cache.Validate("cache")...)
	errs = append(errs, s.UserFilter.Validate("user_filter")...)
	return errors.Join(errs...)
}

// Service describes the user service to [boot].
func Service() boot.Service[Settings] {
	return boot.Service[Settings]{
		Name:     Name,
		Meta:     map[string]string{"contract": "shop.user.v1", "services": userv1connect.UserServiceName},
		Defaults: DefaultSettings(),
		Build:    build,
	}
}

// process is the running user service: its server, closing the cache and
// the store once the server has drained.
type process struct {
	*server.Server
	store *store.Store
	cache *cache.Cache
}

func (p *process) Serve(ctx context.Context) error {
	err := p.Server.Serve(ctx)
	p.cache.Close()
	return errors.Join(err, p.store.Close())
}

// Close releases the listener, the cache and the store of a process that
// will not serve.
func (p *process) Close() error {
	p.cache.Close()
	return errors.Join(p.Server.Close(), p.store.Close())
}

func build(ctx context.Context, env boot.Env[Settings]) (boot.Process, error) {
	settings := env.Config.Current()
	key, _ := env.Secret(TokenKeyVar)
	// While the key is rotated it may hold several: tokens are signed
	// with the first.
	keys, err := auth.SplitKeys([]byte(key))
	if err != nil || len(keys) == 0 {
		return nil, fmt.Errorf("%s must hold a token signing key of at least %d bytes (several, separated by commas, the one to sign with first, while rotating it)", TokenKeyVar, auth.MinKeyLen)
	}
	db, err := settings.Database.Config(Name, env.Secret)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("user store: %w", err)
	}
	hashing := password.Params{
		Time:    settings.PasswordHashing.Time,
		Memory:  settings.PasswordHashing.MemoryKiB,
		Threads: settings.PasswordHashing.Threads,
	}
	hashes, err := shed.NewBulkhead("password hashing", settings.PasswordHashing.MaxConcurrent,
		settings.PasswordHashing.MaxWait, settings.Shedding.RetryAfter, env.Metrics)
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("user handler: %w", err)
	}
	users, err := cache.New(ctx, settings.Cache, cache.Options{Name: "user:user", Metrics: env.Metrics, Logger: env.Logger})
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("user cache: %w", err)
	}
	filter, err := users.NewFilter("ids", settings.UserFilter)
	if err == nil {
		err = filter.Rebuild(ctx, st.IDs(ctx))
	}
	if err != nil {
		users.Close()
		_ = st.Close()
		return nil, fmt.Errorf("user cache: id filter: %w", err)
	}
	repo := cached.New(st, users, filter, env.Logger)
	h, err := handler.New(repo, auth.Issuer{Key: keys[0], TTL: settings.TokenTTL}, hashing, hashes, env.Logger)
	if err != nil {
		users.Close()
		_ = st.Close()
		return nil, fmt.Errorf("user handler: %w", err)
	}
	env.Config.OnChange(func(_, s Settings) {
		h.SetTokenTTL(s.TokenTTL)
		_ = hashes.Set(s.PasswordHashing.MaxConcurrent, s.PasswordHashing.MaxWait) // validated already
	})

	srv := env.Server()
	srv.Handle(userv1connect.NewUserServiceHandler(h, srv.HandlerOptions()...))
	return &process{Server: srv, store: st, cache: users}, nil
}
