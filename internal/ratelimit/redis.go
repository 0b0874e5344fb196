package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// gcraScript runs GCRA for one event of the key KEYS[1] on the server's
// clock, in microseconds: ARGV[1] is the interval between events, ARGV[2]
// the burst. It returns {1, 0} for an event allowed, {0, µs to wait} for
// one refused. The TAT is stored as a decimal integer string (a Lua
// number would be written in %.14g and lose microseconds) and expires
// when it has passed, so idle keys cost nothing.
var gcraScript = rueidis.NewLuaScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local nextTat = tat + interval
local allowAt = nextTat - interval * burst
if allowAt > now then
  return {0, allowAt - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', nextTat), 'PX', math.max(1, math.ceil((nextTat - now) / 1000)))
return {1, 0}`)

// Redis limits on a Redis server (7 or newer), shared by every process
// that uses the same server and key prefix. It is safe for concurrent
// use. Create it with [NewRedis].
type Redis struct {
	client rueidis.Client
	prefix string
}

// NewRedis returns a limiter keeping its state in client's server, under
// keys starting with prefix ("keel:ratelimit:").
func NewRedis(client rueidis.Client, prefix string) *Redis {
	return &Redis{client: client, prefix: prefix}
}

// Allow decides one event of key under the limit named name. The error
// is Redis's (unreachable, timed out); the result is then meaningless.
func (r *Redis) Allow(ctx context.Context, name, key string, lim Limit) (Result, error) {
	interval := max(lim.interval().Microseconds(), 1)
	out, err := gcraScript.Exec(ctx, r.client,
		[]string{r.prefix + name + ":" + key},
		[]string{strconv.FormatInt(interval, 10), strconv.Itoa(lim.Burst)},
	).AsIntSlice()
	if err != nil {
		return Result{}, fmt.Errorf("ratelimit: redis: %w", err)
	}
	if len(out) != 2 {
		return Result{}, fmt.Errorf("ratelimit: redis: script answered %d values, want 2", len(out))
	}
	if out[0] == 1 {
		return Result{Allowed: true}, nil
	}
	return Result{RetryAfter: time.Duration(out[1]) * time.Microsecond}, nil
}
