package cache

import (
	"fmt"
	"math"
	"net"
	"time"

	"github.com/keelplatform/keel/internal/config"
)

// Config is how a [Cache] is set up. A service embeds it in its settings,
// under a key of its choice, static since a Cache reads it once:
//
//	type Settings struct {
//		config.Process `yaml:",inline"`
//		Cache cache.Config `yaml:"cache" keel:"static"`
//	}
//
// and calls [Config.Validate] with that key from its own Validate method.
// Start from [DefaultConfig]: a zero Config is not valid. The Redis
// username and password never come from here but from the environment
// (KEEL_REDIS_USERNAME, KEEL_REDIS_PASSWORD).
type Config struct {
	// Enabled false turns the cache off: every read goes to the loader,
	// nothing is kept, filters let every id through and are not built,
	// and Redis is not used. Default true.
	Enabled bool `yaml:"enabled"`
	// RedisAddr is the host:port of the Redis 7 server. Empty keeps every
	// entry in process memory instead (the embedded default).
	// Default "".
	RedisAddr string `yaml:"redis_addr"`
	// KeyPrefix is put before every key the cache writes in Redis, ahead
	// of the cache's name, so environments can share a server. Default
	// "keel:".
	KeyPrefix string `yaml:"key_prefix"`
	// TTL is how long a loaded value is kept, before jitter, 1s to 24h.
	// Default 5m.
	TTL time.Duration `yaml:"ttl"`
	// Jitter varies every TTL (and NegativeTTL) randomly by up to this
	// fraction of it, either way, so entries loaded together do not expire
	// together, 0 to 0.5. Default 0.1.
	Jitter float64 `yaml:"jitter"`
	// NegativeTTL is how long "does not exist" answers of the loader are
	// kept, before jitter, 0 (not kept) to 1h. Default 30s.
	NegativeTTL time.Duration `yaml:"negative_ttl"`
	// LockTTL bounds how long one process may hold the right to load a
	// key while the others wait for its value, 10ms to 1m: a loader that
	// takes longer is raced by the next process that wants the key.
	// Default 2s.
	LockTTL time.Duration `yaml:"lock_ttl"`
	// LocalTTL is the longest an entry read from Redis is kept in process
	// memory (client-side caching; Redis invalidates it as soon as the key
	// changes), 0 (off: every read goes to Redis) to 1h. Unused without
	// Redis, where process memory is the only tier and TTL applies.
	// Default 1m.
	LocalTTL time.Duration `yaml:"local_ttl"`
	// LocalMaxBytes bounds the process memory the cache's entries take
	// (the client-side cache with Redis, the whole cache without), 1 MiB
	// to 16 GiB. Default 64 MiB.
	LocalMaxBytes int `yaml:"local_max_bytes"`
	// Timeout bounds every call to Redis, 1ms to 10s: a slow or hung Redis
	// costs a read at most this before it goes to the loader. Default
	// 100ms.
	Timeout time.Duration `yaml:"timeout"`
	// Breaker stops calling Redis for a while once its calls fail.
	Breaker BreakerConfig `yaml:"breaker"`
}

// BreakerConfig is the circuit breaker in front of Redis: while it is
// open, reads go straight to the loader.
type BreakerConfig struct {
	// Failures out of the last Window Redis calls open the breaker, 1 to
	// Window. Default 5.
	Failures int `yaml:"failures"`
	// Window is how many recent Redis calls Failures counts over, 1 to
	// 1000. Default 10.
	Window int `yaml:"window"`
	// OpenFor is how long an open breaker waits before one probe call
	// tries Redis again, 10ms to 1m. Default 1s.
	OpenFor time.Duration `yaml:"open_for"`
}

// FilterConfig sizes a [Filter]. Embed it in settings like [Config], and
// call [FilterConfig.Validate] from their Validate method.
type FilterConfig struct {
	// ExpectedItems is how many ids the filter is sized for, 1 to
	// 100,000,000; past it the false-positive rate grows. Default
	// 1,000,000.
	ExpectedItems int `yaml:"expected_items"`
	// FalsePositiveRate is the share of absent ids the filter lets
	// through to the loader when it holds ExpectedItems ids, 0.000001 to
	// 0.5. Default 0.01.
	FalsePositiveRate float64 `yaml:"false_positive_rate"`
}

// DefaultConfig returns the documented defaults of [Config]: in process
// memory, since RedisAddr is empty.
func DefaultConfig() Config {
	return Config{
		Enabled:       true,
		KeyPrefix:     "keel:",
		TTL:           5 * time.Minute,
		Jitter:        0.1,
		NegativeTTL:   30 * time.Second,
		LockTTL:       2 * time.Second,
		LocalTTL:      time.Minute,
		LocalMaxBytes: 64 << 20,
		Timeout:       100 * time.Millisecond,
		Breaker:       BreakerConfig{Failures: 5, Window: 10, OpenFor: time.Second},
	}
}

// DefaultFilterConfig returns the documented defaults of [FilterConfig].
func DefaultFilterConfig() FilterConfig {
	return FilterConfig{ExpectedItems: 1_000_000, FalsePositiveRate: 0.01}
}

// Validate reports every setting of c out of range, each as a
// *[config.KeyError] whose key is under prefix: with prefix "cache", a
// bad TTL is reported as "cache/ttl".
func (c Config) Validate(prefix string) []error {
	v := check{prefix: prefix}
	if c.RedisAddr != "" {
		if _, _, err := net.SplitHostPort(c.RedisAddr); err != nil {
			v.bad("redis_addr", "want host:port or empty (in process): %v", err)
		}
	}
	v.duration("ttl", c.TTL, time.Second, 24*time.Hour)
	v.float("jitter", c.Jitter, 0, 0.5)
	v.duration("negative_ttl", c.NegativeTTL, 0, time.Hour)
	v.duration("lock_ttl", c.LockTTL, 10*time.Millisecond, time.Minute)
	v.duration("local_ttl", c.LocalTTL, 0, time.Hour)
	v.integer("local_max_bytes", c.LocalMaxBytes, 1<<20, 16<<30)
	v.duration("timeout", c.Timeout, time.Millisecond, 10*time.Second)
	v.integer("breaker/window", c.Breaker.Window, 1, 1000)
	v.integer("breaker/failures", c.Breaker.Failures, 1, max(c.Breaker.Window, 1))
	v.duration("breaker/open_for", c.Breaker.OpenFor, 10*time.Millisecond, time.Minute)
	return v.errs
}

// Validate reports every setting of f out of range, each as a
// *[config.KeyError] whose key is under prefix.
func (f FilterConfig) Validate(prefix string) []error {
	v := check{prefix: prefix}
	v.integer("expected_items", f.ExpectedItems, 1, 100_000_000)
	v.float("false_positive_rate", f.FalsePositiveRate, 0.000001, 0.5)
	return v.errs
}

// check collects KeyErrors for values out of range, keys under a prefix.
type check struct {
	prefix string
	errs   []error
}

func (v *check) bad(key, format string, args ...any) {
	if v.prefix != "" {
		key = v.prefix + "/" + key
	}
	v.errs = append(v.errs, &config.KeyError{Key: key, Err: fmt.Errorf(format, args...)})
}

func (v *check) duration(key string, d, lo, hi time.Duration) {
	if d < lo || d > hi {
		v.bad(key, "%s is out of range [%s, %s]", d, lo, hi)
	}
}

func (v *check) integer(key string, n, lo, hi int) {
	if n < lo || n > hi {
		v.bad(key, "%d is out of range [%d, %d]", n, lo, hi)
	}
}

func (v *check) float(key string, f, lo, hi float64) {
	if math.IsNaN(f) || f < lo || f > hi {
		v.bad(key, "%g is out of range [%g, %g]", f, lo, hi)
	}
}
