package ratelimit_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/keelplatform/keel/internal/cache/redistest"
	"github.com/keelplatform/keel/internal/ratelimit"
)

// TestLocalIsATokenBucket: a burst passes at once, the next event waits
// one interval, and the bucket refills at the rate.
func TestLocalIsATokenBucket(t *testing.T) {
	t.Parallel()
	l := ratelimit.NewLocal(1000)
	lim := ratelimit.Limit{Rate: 5, Per: time.Second, Burst: 3} // one every 200ms
	now := time.Unix(1_700_000_000, 0)
	for i := range 3 {
		if r := l.Allow("login", "ada", lim, now); !r.Allowed {
			t.Fatalf("event %d of the burst refused: %+v", i+1, r)
		}
	}
	r := l.Allow("login", "ada", lim, now)
	if r.Allowed || r.RetryAfter != 200*time.Millisecond {
		t.Fatalf("event past the burst: %+v, want refused, retry after 200ms", r)
	}
	// Another key, and another limit of the same key, are untouched.
	if !l.Allow("login", "grace", lim, now).Allowed || !l.Allow("default", "ada", lim, now).Allowed {
		t.Fatal("keys and limits share a bucket")
	}
	if l.Allow("login", "ada", lim, now.Add(199*time.Millisecond)).Allowed {
		t.Fatal("allowed before the retry hint")
	}
	if !l.Allow("login", "ada", lim, now.Add(200*time.Millisecond)).Allowed {
		t.Fatal("refused at the retry hint")
	}
	// Sustained: at 5/s over 10s, 50 events pass besides the burst.
	allowed := 0
	for ms := 201; ms <= 10_200; ms++ {
		if l.Allow("login", "ada", lim, now.Add(time.Duration(ms)*time.Millisecond)).Allowed {
			allowed++
		}
	}
	if allowed != 50 {
		t.Fatalf("%d events allowed over 10s at 5/s, want 50", allowed)
	}
}

// TestLocalMemoryIsBounded: a flood of distinct keys never makes a Local
// remember more than it was made for, and a key limited before the flood
// is still limited by its own state when it survives, or starts afresh.
func TestLocalMemoryIsBounded(t *testing.T) {
	t.Parallel()
	const maxKeys = 6400
	l := ratelimit.NewLocal(maxKeys)
	lim := ratelimit.Limit{Rate: 1, Per: time.Hour, Burst: 1}
	now := time.Now()
	for i := range 200_000 {
		l.Allow("default", fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), lim, now)
		if n := l.Len(); i%10_000 == 0 && n > maxKeys {
			t.Fatalf("after %d keys: %d remembered, bound %d", i+1, n, maxKeys)
		}
	}
	if n := l.Len(); n > maxKeys || n < maxKeys/2 {
		t.Fatalf("%d keys remembered after the flood, want at most %d (and not emptied)", n, maxKeys)
	}
	// Keys whose state ran out go first: an hour later the flood's keys
	// are all stale, and new keys push them out, not each other.
	later := now.Add(2 * time.Hour)
	for i := range maxKeys / 2 {
		if !l.Allow("default", fmt.Sprintf("user-%d", i), lim, later).Allowed {
			t.Fatalf("new key %d refused", i)
		}
	}
	for i := range maxKeys / 2 {
		if l.Allow("default", fmt.Sprintf("user-%d", i), lim, later).Allowed {
			t.Fatalf("key %d, admitted after the flood, lost its state to the sweep", i)
		}
	}
}

// startRedis starts a real redis-server and a client of it.
func startRedis(t *testing.T) (*redistest.Server, rueidis.Client) {
	t.Helper()
	srv := redistest.Start(t)
	client, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(client.Close)
	return srv, client
}

// TestRedisGCRAIsShared runs GCRA on a real redis-server through two
// clients, as two edges would: they draw from one bucket, the refusal
// carries the wait, and the bucket refills on the server's clock.
func TestRedisGCRAIsShared(t *testing.T) {
	t.Parallel()
	srv, a := startRedis(t)
	b, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := t.Context()
	ra, rb := ratelimit.NewRedis(a, "test:"), ratelimit.NewRedis(b, "test:")

	hourly := ratelimit.Limit{Rate: 3, Per: time.Hour, Burst: 4}
	allowed := 0
	for i := range 10 {
		r := ra
		if i%2 == 1 {
			r = rb
		}
		res, err := r.Allow(ctx, "login", "ada", hourly)
		if err != nil {
			t.Fatal(err)
		}
		if res.Allowed {
			allowed++
			continue
		}
		if res.RetryAfter <= 19*time.Minute || res.RetryAfter > 20*time.Minute {
			t.Fatalf("retry after %s, want just under 20m (one interval of 3/h)", res.RetryAfter)
		}
	}
	if allowed != 4 {
		t.Fatalf("%d of 10 events allowed through two clients, want the burst of 4", allowed)
	}
	// The state is one key under the prefix, expiring when it runs out.
	ttl, err := a.Do(ctx, a.B().Pttl().Key("test:login:ada").Build()).AsInt64()
	if err != nil || ttl <= 0 || ttl > int64(80*time.Minute/time.Millisecond) {
		t.Fatalf("PTTL of the key: %d (%v), want (0, 80m]", ttl, err)
	}

	// 20/s, burst 1: refused right after, allowed again once the hint has
	// passed, waited for by polling.
	fast := ratelimit.Limit{Rate: 20, Per: time.Second, Burst: 1}
	if res, err := ra.Allow(ctx, "default", "grace", fast); err != nil || !res.Allowed {
		t.Fatalf("first event: %+v %v", res, err)
	}
	start := time.Now()
	res, err := rb.Allow(ctx, "default", "grace", fast)
	if err != nil || res.Allowed || res.RetryAfter <= 0 || res.RetryAfter > 50*time.Millisecond {
		t.Fatalf("second event at once: %+v %v, want refused with a hint up to 50ms", res, err)
	}
	for {
		res, err := ra.Allow(ctx, "default", "grace", fast)
		if err != nil {
			t.Fatal(err)
		}
		if res.Allowed {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("never allowed again")
		}
	}
	if waited := time.Since(start); waited < 40*time.Millisecond {
		t.Fatalf("allowed again after %s, before the interval of 50ms", waited)
	}
}

// syncBuffer is a log destination tests can read while it is written.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

// waitFor polls cond until it holds or fails t after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestLimiterFallsBackToLocalWhileRedisIsDown: a Limiter on a real
// redis-server shares limits; with Redis killed it goes on deciding, in
// process memory, and says so once; with Redis back it shares again.
func TestLimiterFallsBackToLocalWhileRedisIsDown(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	log := &syncBuffer{}
	// A generous timeout, so that only the outage makes Redis calls fail,
	// not a busy machine.
	opts := ratelimit.Options{RedisAddr: srv.Addr(), Timeout: 2 * time.Second, RetryEvery: 20 * time.Millisecond, Logger: slog.New(slog.NewJSONHandler(log, nil))}
	l1, l2 := ratelimit.New(opts), ratelimit.New(opts)
	defer l1.Close()
	defer l2.Close()
	ctx := context.Background()
	waitFor(t, "both limiters on Redis", func() bool { return l1.Distributed() && l2.Distributed() })

	// Budgets of 5, 6 calls: shared, 5 pass; each limiter on its own
	// would let all of them through, and a call Redis failed must be
	// decided in process, not refused.
	lim := ratelimit.Limit{Rate: 5, Per: time.Hour, Burst: 5}
	count := func(user string) (allowed int) {
		for i := range 6 {
			l := l1
			if i%2 == 1 {
				l = l2
			}
			if l.Allow(ctx, "login", user, lim).Allowed {
				allowed++
			}
		}
		return allowed
	}
	if n := count("ada"); n != 5 {
		t.Fatalf("shared: %d of 6 allowed through two limiters, want 5", n)
	}

	srv.Kill()
	// Each limiter now limits on its own: 3 calls each, within 5.
	if n := count("grace"); n != 6 {
		t.Fatalf("Redis down: %d of 6 allowed, want 6 (each limiter on its own)", n)
	}
	for range 100 {
		l1.Allow(ctx, "login", "lin", lim)
	}
	if n := log.count("Redis unreachable"); n != 2 {
		t.Fatalf("the outage was logged %d times by two limiters, want once each:\n%s", n, log.buf.String())
	}
	if l1.Distributed() {
		t.Fatal("Distributed while Redis is down")
	}

	srv.Restart()
	waitFor(t, "limits shared again", func() bool {
		l1.Allow(ctx, "probe", "x", lim)
		l2.Allow(ctx, "probe", "x", lim)
		return l1.Distributed() && l2.Distributed()
	})
	if n := count("ming"); n != 5 {
		t.Fatalf("Redis back: %d of 6 allowed, want 5", n)
	}
	// A connection that broke with the server may fail one more call
	// after it is back: that is a short outage of its own, logged too.
	if back, out := log.count("Redis is back"), log.count("Redis unreachable"); back < 2 || back != out {
		t.Fatalf("%d outages logged, %d returns, want every outage's end logged, at least one per limiter:\n%s", out, back, log.buf.String())
	}
}

// TestLimiterWithoutRedisAtStart: a Redis address nobody answers on
// leaves the limiter deciding in process memory from the first call.
func TestLimiterWithoutRedisAtStart(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	addr := srv.Addr()
	srv.Kill()
	l := ratelimit.New(ratelimit.Options{RedisAddr: addr, RetryEvery: 10 * time.Millisecond})
	defer l.Close()
	lim := ratelimit.Limit{Rate: 1, Per: time.Hour, Burst: 1}
	if !l.Allow(context.Background(), "login", "ada", lim).Allowed || l.Allow(context.Background(), "login", "ada", lim).Allowed {
		t.Fatal("without Redis the limit is not enforced in process")
	}
	// Redis appears later: the limiter connects on its own.
	srv.Restart()
	waitFor(t, "the limiter to connect", l.Distributed)
}
