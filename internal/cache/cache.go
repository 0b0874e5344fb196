package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
)

// ErrNotFound is returned by [Cache.Get] when the loader said the key
// does not exist (now or within the negative TTL), and by
// [Cache.GetChecked] also when the filter says it cannot exist. A loader
// reports a missing key by returning an error that wraps ErrNotFound.
var ErrNotFound = errors.New("cache: not found")

// Loader reads the value of one key from the source of truth (the
// database), typically a marshalled protobuf message. It returns an error
// wrapping [ErrNotFound] when the key does not exist. The context it gets
// carries the values of the first caller's context and its deadline, but
// not its cancellation: other callers may be waiting for the same load.
type Loader func(ctx context.Context) ([]byte, error)

// Options are what a [Cache] needs besides its [Config].
type Options struct {
	// Name is the cache's namespace, e.g. "inventory:item": its keys live
	// under Config.KeyPrefix+Name+":" in Redis, and its metrics carry the
	// label cache=Name. Required; one cache of a name per registry.
	Name string
	// Metrics is where the keel_cache_* series are registered; nil
	// registers none.
	Metrics prometheus.Registerer
	// Logger receives Redis outages and recoveries; nil logs nothing.
	Logger *slog.Logger
}

// Cache is a read-through cache of byte values by string key, in front
// of a loader: in Redis with client-side caching when Config.RedisAddr is
// set, else in process memory, or nowhere when Config.Enabled is false.
// It is safe for concurrent use. Create it with [New] and release it with
// [Cache.Close].
type Cache struct {
	name    string
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	store   store
	flights singleflight.Group
	closed  sync.Once
}

// store is where entries live: process memory or Redis.
type store interface {
	// lookup returns the entry of key from the fastest place that has
	// one, counting hits; miss is true when there is none, unavailable
	// when the store cannot answer now (the read must not use it).
	lookup(ctx context.Context, key string) (e entry, st status)
	// fill runs once per process for concurrent misses of key: it checks
	// again, then loads with load (at most once across processes when
	// the store is shared) and keeps the result. skip says the store
	// failed this read already: load without it.
	fill(ctx context.Context, key string, skip bool, load func(context.Context) entry) entry
	// invalidate drops the entries of keys (full keys).
	invalidate(ctx context.Context, keys []string) error
	// bits returns the bit set of the filter called name.
	bits(name string, g geometry) filterBits
	// breakerState is 0 closed, 1 half-open, 2 open (0 without Redis).
	breakerState() float64
	close()
}

// status is what a lookup found.
type status int

const (
	found       status = iota // a value or a negative entry
	miss                      // nothing (or another process is loading)
	unavailable               // the store cannot be used for this read
)

// entry is a cached answer, or the outcome of a load.
type entry struct {
	val    []byte
	absent bool  // the key does not exist
	err    error // the load failed; never cached
}

func (e entry) result() ([]byte, error) {
	switch {
	case e.err != nil:
		return nil, e.err
	case e.absent:
		return nil, ErrNotFound
	}
	return e.val, nil
}

// New returns a cache configured by cfg, which must be valid
// ([Config.Validate]). With Config.RedisAddr set it connects to Redis
// within ctx; when Redis cannot be reached New still succeeds, logs a
// warning, serves reads from the loader and keeps trying to connect in
// the background.
func New(ctx context.Context, cfg Config, opts Options) (*Cache, error) {
	if opts.Name == "" {
		return nil, errors.New("cache: Options.Name is required")
	}
	if errs := cfg.Validate(""); len(errs) > 0 {
		return nil, fmt.Errorf("cache %s: %w", opts.Name, errors.Join(errs...))
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{name: opts.Name, cfg: cfg, log: log.With("cache", opts.Name)}
	m, err := newMetrics(opts.Metrics, opts.Name, func() float64 { return c.store.breakerState() })
	if err != nil {
		return nil, err
	}
	c.metrics = m
	switch {
	case !cfg.Enabled:
		c.store = offStore{}
	case cfg.RedisAddr == "":
		// Nothing tells this process of another's writes: right for one
		// instance (keel up), stale reads for several.
		c.log.Info("cache in process memory: correct while this is the service's only instance; with several, set cache/redis_addr or cache/enabled false")
		c.store = newMemStore(cfg, m)
	default:
		c.store = newRedisStore(ctx, cfg, opts.Name, m, c.log)
	}
	return c, nil
}

// Close stops the cache's background work, closes its Redis connections
// and unregisters its metrics. The cache must not be used afterwards;
// closing it again does nothing.
func (c *Cache) Close() {
	c.closed.Do(func() {
		c.store.close()
		c.metrics.unregister()
	})
}

// Get returns the value of key: from process memory, else from Redis,
// else from load, whose answer is then cached for Config.TTL (with
// jitter), or for Config.NegativeTTL when it is [ErrNotFound]. Concurrent
// misses of a key call load once per process, and once across processes
// sharing Redis. Redis being slow or down never fails Get: the read goes
// to load. Get returns load's errors, [ErrNotFound] for a key that does
// not exist, or ctx's error when ctx ends first. The returned slice
// belongs to the caller. A cache turned off (Config.Enabled false) calls
// load every time.
func (c *Cache) Get(ctx context.Context, key string, load Loader) ([]byte, error) {
	if !c.cfg.Enabled {
		// Every read loads, even concurrent reads of one key.
		c.metrics.misses.Inc()
		return c.load(ctx, key, load).result()
	}
	e, st := c.store.lookup(ctx, key)
	if st == found {
		return e.result()
	}
	c.metrics.misses.Inc()
	skip := st == unavailable
	flight := c.flights.DoChan(key, func() (any, error) {
		fctx, cancel := detach(ctx)
		defer cancel()
		return c.store.fill(fctx, key, skip, func(ctx context.Context) entry { return c.load(ctx, key, load) }), nil
	})
	select {
	case r := <-flight:
		e := r.Val.(entry)
		if r.Shared && e.val != nil {
			e.val = append([]byte(nil), e.val...)
		}
		return e.result()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// GetChecked is [Cache.Get] for a key that is an id of f: when f says the
// id cannot exist, it returns [ErrNotFound] at once, without a cache or
// loader call. A nil f checks nothing.
func (c *Cache) GetChecked(ctx context.Context, f *Filter, key string, load Loader) ([]byte, error) {
	if f != nil && !f.MayContain(ctx, key) {
		c.metrics.rejections.Inc()
		return nil, ErrNotFound
	}
	return c.Get(ctx, key, load)
}

// Invalidate drops the entries of keys, after their source changed: it
// deletes them in Redis, which makes Redis drop the copies every process
// keeps in memory, and this process stops trusting its own copies at
// once: its reads that follow load again rather than wait for a load
// begun before Invalidate, which may have read the old value. When Redis
// cannot be reached it returns an error; the keys are then read from the
// loader by this process and deleted in Redis as soon as it is back, so
// the caller may log the error and go on.
func (c *Cache) Invalidate(ctx context.Context, keys ...string) error {
	if len(keys) == 0 {
		return nil
	}
	err := c.store.invalidate(ctx, keys)
	// A load of these keys in flight may have read the source before it
	// changed: later reads of this process must not wait for its answer
	// but load again. The store is invalidated first, so a load that
	// starts from here on cannot find the old entry in it.
	for _, key := range keys {
		c.flights.Forget(key)
	}
	if err != nil {
		return fmt.Errorf("cache %s: invalidate: %w", c.name, err)
	}
	return nil
}

// load calls the loader, counting it, and turns its answer into an
// entry. A panicking loader fails the read instead of the process.
func (c *Cache) load(ctx context.Context, key string, load Loader) (e entry) {
	c.metrics.loads.Inc()
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("cache loader panicked", "key", key, "panic", p, "stack", string(debug.Stack()))
			c.metrics.loadErrors.Inc()
			e = entry{err: fmt.Errorf("cache %s: loader of %q panicked: %v", c.name, key, p)}
		}
	}()
	val, err := load(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		return entry{absent: true}
	case err != nil:
		c.metrics.loadErrors.Inc()
		return entry{err: err}
	case val == nil:
		val = []byte{}
	}
	return entry{val: val}
}

// detach returns a context with ctx's values and deadline but not its
// cancellation, for work shared with other callers.
func detach(ctx context.Context) (context.Context, context.CancelFunc) {
	d := context.WithoutCancel(ctx)
	if deadline, ok := ctx.Deadline(); ok {
		return context.WithDeadline(d, deadline)
	}
	return d, func() {}
}

// jittered varies d randomly by up to jitter (a fraction of d) either
// way.
func jittered(d time.Duration, jitter float64) time.Duration {
	if jitter <= 0 {
		return d
	}
	return d + time.Duration((rand.Float64()*2-1)*jitter*float64(d))
}
