package ratelimit

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Options configure a [Limiter]. The zero value of each field means its
// documented default.
type Options struct {
	// RedisAddr is the host:port of the Redis server every process shares
	// limits on; empty limits in process memory alone.
	RedisAddr string
	// RedisUsername and RedisPassword authenticate to Redis when it wants
	// them. They are never logged.
	RedisUsername, RedisPassword string
	// KeyPrefix starts every key written in Redis. Default
	// "keel:ratelimit:".
	KeyPrefix string
	// Timeout bounds each Redis call; a slower answer counts as Redis
	// being down. Default 50ms.
	Timeout time.Duration
	// RetryEvery is how often Redis is tried again while it is down.
	// Default 1s.
	RetryEvery time.Duration
	// MaxKeys bounds the keys remembered in process memory. Default
	// 100,000.
	MaxKeys int
	// Logger says when Redis goes away and comes back. Default: discard.
	Logger *slog.Logger
}

// Limiter limits on Redis when it has an address and Redis answers, and
// in process memory otherwise: while Redis is unreachable (or until it
// is first reached) every decision is taken by a [Local] instead, and
// Redis is tried again every RetryEvery. It never refuses an event
// because Redis is down. It is safe for concurrent use. Create it with
// [New]; Close it when done.
type Limiter struct {
	opts  Options
	local *Local

	client    atomic.Pointer[clientBox] // nil until connected
	redis     atomic.Pointer[Redis]
	downUntil atomic.Int64 // unix ns: Redis is not called before then
	failing   atomic.Bool  // an outage has been logged and not yet its end

	closeOnce sync.Once
	done      chan struct{}
	connected chan struct{} // closed when the connect loop ends
}

type clientBox struct{ rueidis.Client }

// New returns a limiter under opts. With a Redis address it connects in
// the background, limiting in process memory until it has.
func New(opts Options) *Limiter {
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = "keel:ratelimit:"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 50 * time.Millisecond
	}
	if opts.RetryEvery <= 0 {
		opts.RetryEvery = time.Second
	}
	if opts.MaxKeys <= 0 {
		opts.MaxKeys = 100_000
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	l := &Limiter{opts: opts, local: NewLocal(opts.MaxKeys), done: make(chan struct{}), connected: make(chan struct{})}
	if opts.RedisAddr == "" {
		close(l.connected)
		return l
	}
	go l.connectLoop()
	return l
}

// Distributed reports whether l shares its limits through Redis now.
func (l *Limiter) Distributed() bool {
	return l.redis.Load() != nil && !l.failing.Load()
}

// Local is the in-process limiter l falls back to.
func (l *Limiter) Local() *Local { return l.local }

// Allow decides one event of key under the limit named name.
func (l *Limiter) Allow(ctx context.Context, name, key string, lim Limit) Result {
	r := l.redis.Load()
	if r == nil || !l.mayCall() {
		return l.local.Allow(name, key, lim, time.Now())
	}
	cctx, cancel := context.WithTimeout(ctx, l.opts.Timeout)
	res, err := r.Allow(cctx, name, key, lim)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			l.down(err)
		}
		return l.local.Allow(name, key, lim, time.Now())
	}
	if l.downUntil.Load() != 0 {
		l.up()
	}
	if l.failing.CompareAndSwap(true, false) {
		l.opts.Logger.Info("rate limits: Redis is back; limits are shared again", slog.String("addr", l.opts.RedisAddr))
	}
	return res
}

// mayCall reports whether this call may go to Redis: always while it
// is up; while it is down, one call every RetryEvery, which probes it.
func (l *Limiter) mayCall() bool {
	until := l.downUntil.Load()
	if until == 0 {
		return true
	}
	now := time.Now().UnixNano()
	if now < until {
		return false
	}
	return l.downUntil.CompareAndSwap(until, now+int64(l.opts.RetryEvery))
}

// down records a failed Redis call: Redis is skipped for RetryEvery, and
// the first failure of an outage is logged.
func (l *Limiter) down(err error) {
	l.downUntil.Store(time.Now().Add(l.opts.RetryEvery).UnixNano())
	if l.failing.CompareAndSwap(false, true) {
		l.opts.Logger.Warn("rate limits: Redis unreachable; limiting in process memory until it is back",
			slog.String("addr", l.opts.RedisAddr), slog.String("error", err.Error()))
	}
}

// up clears the outage once a call succeeded.
func (l *Limiter) up() { l.downUntil.Store(0) }

// connectLoop makes the Redis client, trying every RetryEvery until it
// has one or l is closed.
func (l *Limiter) connectLoop() {
	defer close(l.connected)
	tick := time.NewTicker(l.opts.RetryEvery)
	defer tick.Stop()
	for {
		client, err := rueidis.NewClient(rueidis.ClientOption{
			InitAddress:      []string{l.opts.RedisAddr},
			Username:         l.opts.RedisUsername,
			Password:         l.opts.RedisPassword,
			ClientName:       "keel-ratelimit",
			Dialer:           net.Dialer{Timeout: max(10*l.opts.Timeout, time.Second)},
			ConnWriteTimeout: max(10*l.opts.Timeout, time.Second),
			DisableCache:     true,
			// A failed call is decided in process; retrying would only
			// make it slower.
			DisableRetry: true,
			// One connection, auto-pipelined: after a Redis restart only
			// one broken connection fails a call, where each of several
			// would fail one in turn after the first call got through and
			// made the limits look shared again.
			PipelineMultiplex: -1,
		})
		if err == nil {
			select {
			case <-l.done:
				client.Close()
				return
			default:
			}
			l.client.Store(&clientBox{client})
			l.redis.Store(NewRedis(client, l.opts.KeyPrefix))
			if l.failing.CompareAndSwap(true, false) {
				l.opts.Logger.Info("rate limits: connected to Redis; limits are shared", slog.String("addr", l.opts.RedisAddr))
			}
			return
		}
		if l.failing.CompareAndSwap(false, true) {
			l.opts.Logger.Warn("rate limits: cannot reach Redis; limiting in process memory and retrying",
				slog.String("addr", l.opts.RedisAddr), slog.String("error", err.Error()))
		}
		select {
		case <-l.done:
			return
		case <-tick.C:
		}
	}
}

// Close stops trying to connect and closes the Redis client.
func (l *Limiter) Close() {
	l.closeOnce.Do(func() {
		close(l.done)
		<-l.connected
		if b := l.client.Load(); b != nil {
			b.Close()
		}
	})
}
