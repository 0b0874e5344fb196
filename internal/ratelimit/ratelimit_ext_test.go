package ratelimit_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/keelplatform/keel/internal/cache/redistest"
	"github.com/keelplatform/keel/internal/ratelimit"
)

// TestLimitValidate: a limit is refused exactly when one of its fields is
// under its minimum, or its events come more often than one per
// microsecond; the limits at each minimum are enforceable.
func TestLimitValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		lim  ratelimit.Limit
		want string // a word of the error; empty: valid
	}{
		{lim: ratelimit.Limit{Rate: 1, Per: time.Microsecond, Burst: 1}},
		{lim: ratelimit.Limit{Rate: 1000, Per: time.Millisecond, Burst: 1}}, // one per µs exactly
		{lim: ratelimit.Limit{Rate: 5, Per: time.Second, Burst: 3}},
		{lim: ratelimit.Limit{Rate: 0, Per: time.Second, Burst: 1}, want: "rate 0"},
		{lim: ratelimit.Limit{Rate: -1, Per: time.Second, Burst: 1}, want: "rate -1"},
		{lim: ratelimit.Limit{Rate: 1, Per: time.Microsecond - 1, Burst: 1}, want: "per 999ns"},
		{lim: ratelimit.Limit{Rate: 1, Per: time.Second, Burst: 0}, want: "burst 0"},
		{lim: ratelimit.Limit{Rate: 1001, Per: time.Millisecond, Burst: 1}, want: "more than one event per microsecond"},
		{lim: ratelimit.Limit{Rate: 2, Per: time.Microsecond, Burst: 1}, want: "more than one event per microsecond"},
	} {
		err := tc.lim.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v, want valid", tc.lim, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: %v, want an error about %q", tc.lim, err, tc.want)
		}
	}
}

// TestLocalSweepFreesAnEighth: a Local made for 64 keys a shard admits
// fresh keys one by one, and a full shard frees exactly an eighth of
// itself before taking the next, so it never holds more than the bound:
// every new key adds one to the count, or, when its shard was full, the
// count falls by 16/8 - 1.
func TestLocalSweepFreesAnEighth(t *testing.T) {
	t.Parallel()
	const perShard = 16
	const maxKeys = 64 * perShard
	l := ratelimit.NewLocal(maxKeys)
	lim := ratelimit.Limit{Rate: 1, Per: time.Hour, Burst: 1} // no state runs out
	now := time.Unix(1_700_000_000, 0)
	sweeps := 0
	n := l.Len()
	for i := range 4 * maxKeys {
		if !l.Allow("default", fmt.Sprintf("key-%d", i), lim, now).Allowed {
			t.Fatalf("new key %d refused", i)
		}
		next := l.Len()
		switch next - n {
		case 1:
		case 1 - perShard/8:
			sweeps++
		default:
			t.Fatalf("key %d took the count from %d to %d; want one more, or %d after a sweep of a full shard", i, n, next, n+1-perShard/8)
		}
		if next > maxKeys {
			t.Fatalf("key %d: %d keys remembered, bound %d", i, next, maxKeys)
		}
		n = next
	}
	if sweeps < 64 {
		t.Fatalf("%d sweeps for %d keys in 64 shards of %d", sweeps, 4*maxKeys, perShard)
	}
}

// TestLocalStateRunsOutAtItsTAT: a key's state has run out at its TAT
// itself, not a moment after: new keys arriving exactly when every key of
// a flood may start afresh push the flood's keys out, never each other.
func TestLocalStateRunsOutAtItsTAT(t *testing.T) {
	t.Parallel()
	const maxKeys = 64 * 64
	l := ratelimit.NewLocal(maxKeys)
	lim := ratelimit.Limit{Rate: 1, Per: time.Hour, Burst: 1}
	now := time.Unix(1_700_000_000, 0)
	for i := range 3 * maxKeys {
		l.Allow("default", fmt.Sprintf("flood-%d", i), lim, now)
	}
	at := now.Add(time.Hour) // the TAT of every flood key
	for i := range 512 {
		if !l.Allow("default", fmt.Sprintf("user-%d", i), lim, at).Allowed {
			t.Fatalf("new key %d refused", i)
		}
	}
	for i := range 512 {
		if l.Allow("default", fmt.Sprintf("user-%d", i), lim, at).Allowed {
			t.Fatalf("key %d, admitted when the flood's state ran out, lost its own to the sweep", i)
		}
	}
}

// TestLimiterDefaults: a Limiter given only a Redis address shares its
// limits there under keel:ratelimit:, within the default timeout; one
// given nothing remembers many keys in process, and MaxKeys bounds them.
func TestLimiterDefaults(t *testing.T) {
	t.Parallel()
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		srv, client := startRedis(t)
		l := ratelimit.New(ratelimit.Options{RedisAddr: srv.Addr()})
		defer l.Close()
		lim := ratelimit.Limit{Rate: 1, Per: time.Hour, Burst: 1000}
		// A call the 50ms default timeout cuts short on a busy machine is
		// decided in process; one that gets through writes the key.
		waitFor(t, "the limit kept in Redis under keel:ratelimit:", func() bool {
			l.Allow(context.Background(), "login", "ada", lim)
			n, err := client.Do(context.Background(), client.B().Exists().Key("keel:ratelimit:login:ada").Build()).AsInt64()
			return err == nil && n == 1
		})
	})
	t.Run("memory", func(t *testing.T) {
		t.Parallel()
		lim := ratelimit.Limit{Rate: 1, Per: time.Hour, Burst: 1}
		for _, tc := range []struct {
			maxKeys, want int
		}{
			{maxKeys: 0, want: 1000}, // the default, 100,000, holds them all
			{maxKeys: 640, want: 640},
		} {
			l := ratelimit.New(ratelimit.Options{MaxKeys: tc.maxKeys})
			for i := range 1000 {
				if !l.Allow(context.Background(), "login", fmt.Sprintf("user-%d", i), lim).Allowed {
					t.Fatalf("MaxKeys %d: new key %d refused", tc.maxKeys, i)
				}
			}
			if n := l.Local().Len(); n > tc.want || n < tc.want-tc.want/8 {
				t.Errorf("MaxKeys %d: %d of 1000 keys remembered, want %d (less at most an eighth)", tc.maxKeys, n, tc.want)
			}
			if l.Distributed() {
				t.Error("Distributed without a Redis address")
			}
			l.Close()
		}
	})
}

// TestLimiterWaitsRetryEveryBeforeTryingRedisAgain: once a Redis call
// failed, no call goes to Redis before RetryEvery has passed, even with
// Redis back: every decision is taken in process meanwhile.
func TestLimiterWaitsRetryEveryBeforeTryingRedisAgain(t *testing.T) {
	t.Parallel()
	srv, client := startRedis(t)
	l := ratelimit.New(ratelimit.Options{RedisAddr: srv.Addr(), Timeout: 2 * time.Second, RetryEvery: time.Hour})
	defer l.Close()
	ctx := context.Background()
	lim := ratelimit.Limit{Rate: 1, Per: time.Hour, Burst: 100}
	waitFor(t, "the limiter on Redis", func() bool {
		return l.Distributed() && l.Allow(ctx, "login", "ada", lim).Allowed
	})
	srv.Kill()
	l.Allow(ctx, "login", "ada", lim) // fails: Redis is skipped for an hour
	if l.Distributed() {
		t.Fatal("Distributed after a failed call")
	}
	srv.Restart()
	for range 20 {
		if !l.Allow(ctx, "login", "grace", lim).Allowed {
			t.Fatal("call refused within the burst")
		}
	}
	n, err := client.Do(ctx, client.B().Exists().Key("keel:ratelimit:login:grace").Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 || l.Distributed() {
		t.Fatalf("a call went to Redis within RetryEvery of a failure (key written: %v, distributed: %v)", n == 1, l.Distributed())
	}
}

// clientsNamed counts the connections Redis has from clients named name.
func clientsNamed(t *testing.T, client rueidis.Client, name string) int {
	t.Helper()
	list, err := client.Do(context.Background(), client.B().ClientList().Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(list, " name="+name+" ")
}

// TestLimiterHoldsOneConnectionAndClosesIt: a Limiter talks to Redis over
// a single connection, whatever keys its calls touch, and Close closes
// it; a Limiter that never reached Redis closes as well.
func TestLimiterHoldsOneConnectionAndClosesIt(t *testing.T) {
	t.Parallel()
	srv, client := startRedis(t)
	l := ratelimit.New(ratelimit.Options{RedisAddr: srv.Addr(), Timeout: 2 * time.Second, RetryEvery: 20 * time.Millisecond})
	ctx := context.Background()
	lim := ratelimit.Limit{Rate: 1, Per: time.Hour, Burst: 10}
	waitFor(t, "the limiter on Redis", l.Distributed)
	for i := range 64 {
		l.Allow(ctx, "login", fmt.Sprintf("user-%d", i), lim)
	}
	if !l.Distributed() {
		t.Fatal("a call failed with Redis up")
	}
	if n := clientsNamed(t, client, "keel-ratelimit"); n != 1 {
		t.Fatalf("%d connections to Redis from one limiter, want 1", n)
	}
	l.Close()
	waitFor(t, "the limiter's connection to close", func() bool { return clientsNamed(t, client, "keel-ratelimit") == 0 })

	// Nothing answers: Close stops the connect loop and has no client to
	// close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	unconnected := ratelimit.New(ratelimit.Options{RedisAddr: dead, RetryEvery: 10 * time.Millisecond})
	if !unconnected.Allow(ctx, "login", "ada", lim).Allowed {
		t.Fatal("refused without Redis")
	}
	unconnected.Close()
	ratelimit.New(ratelimit.Options{}).Close()
}

// TestLimiterGivesRedisTenTimesTheTimeoutToConnect: a Redis that accepts
// the connection but answers nothing (hung) is given ten times the call
// timeout to answer the handshake before the limiter calls it
// unreachable; once it answers, the limiter connects.
func TestLimiterGivesRedisTenTimesTheTimeoutToConnect(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	srv.Pause()
	log := &syncBuffer{}
	start := time.Now()
	l := ratelimit.New(ratelimit.Options{RedisAddr: srv.Addr(), Timeout: 200 * time.Millisecond, RetryEvery: 20 * time.Millisecond, Logger: slog.New(slog.NewJSONHandler(log, nil))})
	defer l.Close()
	waitFor(t, "the hung Redis to be called unreachable", func() bool { return log.count("cannot reach Redis") > 0 })
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("Redis called unreachable after %v, before 10 times the 200ms timeout", took)
	}
	if !l.Allow(context.Background(), "login", "ada", ratelimit.Limit{Rate: 1, Per: time.Hour, Burst: 1}).Allowed {
		t.Fatal("refused while Redis hangs")
	}
	srv.Resume()
	waitFor(t, "the limiter to connect", l.Distributed)
}
