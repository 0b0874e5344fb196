package cache_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/rueidis"

	"github.com/keelplatform/keel/internal/cache"
	"github.com/keelplatform/keel/internal/cache/redistest"
	"github.com/keelplatform/keel/internal/config"
)

// backend makes caches of one kind for a test; caches made by one
// backend value share their store (two "processes" on one Redis).
type backend struct {
	name  string
	redis *redistest.Server // nil in process
	logs  *logRecorder      // what the caches made log, when set
}

// backends are the two implementations every behavioural test runs on.
func backends() []string { return []string{"memory", "redis"} }

func newBackend(t testing.TB, name string) *backend {
	t.Helper()
	b := &backend{name: name}
	if name == "redis" {
		b.redis = redistest.Start(t)
	}
	return b
}

// cache returns a new cache named "test" on the backend, with cfg
// changed by change, closed when t ends. Its Redis calls time out after
// a second, not the default 100ms, so that a busy machine does not make
// a healthy Redis look failing; tests of timeouts set their own.
func (b *backend) cache(t testing.TB, change func(*cache.Config), reg prometheus.Registerer) *cache.Cache {
	t.Helper()
	cfg := cache.DefaultConfig()
	if b.redis != nil {
		cfg.RedisAddr = b.redis.Addr()
		cfg.Timeout = time.Second
	}
	if change != nil {
		change(&cfg)
	}
	opts := cache.Options{Name: "test", Metrics: reg}
	if b.logs != nil {
		opts.Logger = slog.New(b.logs)
	}
	c, err := cache.New(context.Background(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// source is a fake database: values by key, and a count of loads.
type source struct {
	mu     sync.Mutex
	values map[string]string
	loads  atomic.Int64
	delay  time.Duration
}

func newSource() *source { return &source{values: map[string]string{}} }

func (s *source) set(key, val string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.values[key] = val
}

// loader reads key, after s.delay; absent keys are cache.ErrNotFound.
func (s *source) loader(key string) cache.Loader {
	return func(ctx context.Context) ([]byte, error) {
		s.loads.Add(1)
		if s.delay > 0 {
			time.Sleep(s.delay)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		v, ok := s.values[key]
		if !ok {
			return nil, fmt.Errorf("key %s: %w", key, cache.ErrNotFound)
		}
		return []byte(v), nil
	}
}

// get reads key through c from s and fails t on an unexpected answer.
func get(t testing.TB, c *cache.Cache, s *source, key string) string {
	t.Helper()
	v, err := c.Get(context.Background(), key, s.loader(key))
	if err != nil {
		t.Fatalf("Get(%s): %v", key, err)
	}
	return string(v)
}

// metric returns the value of the counter or gauge name with the label
// values labels (pairs) in reg, 0 when there is none.
func metric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for i := 0; i+1 < len(labels); i += 2 {
				if have[labels[i]] != labels[i+1] {
					continue next
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// eventually waits until cond holds, failing t after timeout.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// redisClient is a plain client of the test's server, to look at what the
// cache wrote.
func redisClient(t testing.TB, s *redistest.Server) rueidis.Client {
	t.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{s.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// stampede makes n goroutines read key at once through the caches (in
// turn) and checks each got want.
func stampede(t *testing.T, n int, caches []*cache.Cache, s *source, key, want string) {
	t.Helper()
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		c := caches[i%len(caches)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			v, err := c.Get(context.Background(), key, s.loader(key))
			if err != nil || string(v) != want {
				errs <- fmt.Errorf("Get = %q, %v; want %q", v, err, want)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestGetLoadsOnceUnderConcurrency: 1,000 concurrent misses of one key
// make one load, in one process and across two sharing Redis.
func TestGetLoadsOnceUnderConcurrency(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			s := newSource()
			s.delay = 50 * time.Millisecond
			s.set("hot", "value")
			c := b.cache(t, nil, nil)
			stampede(t, 1000, []*cache.Cache{c}, s, "hot", "value")
			if n := s.loads.Load(); n != 1 {
				t.Fatalf("%d loads for 1,000 concurrent misses, want 1", n)
			}
		})
	}
	t.Run("redis/two processes", func(t *testing.T) {
		b := newBackend(t, "redis")
		s := newSource()
		s.delay = 50 * time.Millisecond
		for round := range 5 {
			key := "hot" + strconv.Itoa(round)
			s.set(key, "value")
			s.loads.Store(0)
			caches := []*cache.Cache{b.cache(t, nil, nil), b.cache(t, nil, nil)}
			stampede(t, 1000, caches, s, key, "value")
			if n := s.loads.Load(); n != 1 {
				t.Fatalf("round %d: %d loads for 1,000 concurrent misses in two processes, want 1", round, n)
			}
		}
	})
	t.Run("redis/two processes, load slower than timeout", func(t *testing.T) {
		// The process that does not load waits for the other's value as
		// long as the load holds its lock (lock_ttl), not just a call's
		// timeout.
		b := newBackend(t, "redis")
		s := newSource()
		s.delay = 600 * time.Millisecond
		s.set("hot", "value")
		timeout := func(cfg *cache.Config) { cfg.Timeout = 250 * time.Millisecond }
		caches := []*cache.Cache{b.cache(t, timeout, nil), b.cache(t, timeout, nil)}
		stampede(t, 100, caches, s, "hot", "value")
		if n := s.loads.Load(); n != 1 {
			t.Fatalf("%d loads for 100 concurrent misses in two processes, want 1", n)
		}
	})
}

// TestFilterRejectsAbsentIDs: with the filter rebuilt from the ids that
// exist, reads of 10,000 random absent ids almost never reach the loader,
// and no existing id is rejected.
func TestFilterRejectsAbsentIDs(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			reg := prometheus.NewRegistry()
			c := b.cache(t, nil, reg)
			s := newSource()
			ids := make([]string, 10_000)
			for i := range ids {
				ids[i] = "item-" + strconv.Itoa(i)
				s.set(ids[i], "v")
			}
			f, err := c.NewFilter("ids", cache.FilterConfig{ExpectedItems: len(ids), FalsePositiveRate: 0.001})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if err := f.Rebuild(ctx, cache.IDs(ids)); err != nil {
				t.Fatal(err)
			}
			lookups := 10_000
			if name == "memory" {
				lookups = 100_000 // fast enough to measure the rate closely
			}
			for range lookups {
				id := "absent-" + strconv.FormatUint(rand.Uint64(), 36)
				if _, err := c.GetChecked(ctx, f, id, s.loader(id)); !errors.Is(err, cache.ErrNotFound) {
					t.Fatalf("GetChecked(%s) = %v, want ErrNotFound", id, err)
				}
			}
			// The configured rate is 0.1%: allow twice that, with room for
			// chance on fewer lookups.
			if n := s.loads.Load(); n >= int64(max(lookups/500, 40)) {
				t.Fatalf("%d of %d absent ids reached the loader, want about 0.1%%", n, lookups)
			}
			if got := metric(t, reg, "keel_cache_bloom_rejections_total", "cache", "test"); got < float64(lookups)*0.99 {
				t.Errorf("keel_cache_bloom_rejections_total = %g, want >= %g", got, float64(lookups)*0.99)
			}
			t.Logf("%d of %d absent ids reached the loader", s.loads.Load(), lookups)
			for _, id := range ids {
				if !f.MayContain(ctx, id) {
					t.Fatalf("MayContain(%s) = false for an id that exists", id)
				}
			}
			// Rejected, and with Redis that answer is kept in process
			// memory: the Add must reach it.
			if f.MayContain(ctx, "new-item") {
				t.Fatal("the filter lets new-item through before it is added; pick another id")
			}
			if err := f.Add(ctx, "new-item"); err != nil {
				t.Fatal(err)
			}
			s.set("new-item", "fresh")
			if v, err := c.GetChecked(ctx, f, "new-item", s.loader("new-item")); err != nil || string(v) != "fresh" {
				t.Fatalf("GetChecked(new-item) after Add = %q, %v; want fresh", v, err)
			}
		})
	}
}

// TestFilterNeverRejectsUnlessBuilt: a filter never built, or lost with a
// Redis restart, lets every id through; ids added before a rebuild
// survive it even when the rebuild does not list them; a rebuild whose
// ids fail changes nothing.
func TestFilterNeverRejectsUnlessBuilt(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			c := b.cache(t, nil, nil)
			ctx := context.Background()
			f, err := c.NewFilter("ids", cache.FilterConfig{ExpectedItems: 1000, FalsePositiveRate: 0.001})
			if err != nil {
				t.Fatal(err)
			}
			if !f.MayContain(ctx, "anything") {
				t.Fatal("an unbuilt filter rejected an id")
			}
			if err := f.Add(ctx, "added-early"); err != nil {
				t.Fatal(err)
			}
			broken := func(yield func(string, error) bool) {
				if yield("a", nil) {
					yield("", errors.New("database gone"))
				}
			}
			if err := f.Rebuild(ctx, broken); err == nil {
				t.Fatal("Rebuild with failing ids returned nil")
			}
			if !f.MayContain(ctx, "anything") {
				t.Fatal("a failed rebuild marked the filter built")
			}
			if err := f.Rebuild(ctx, cache.IDs([]string{"a", "b"})); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{"a", "b", "added-early"} {
				if !f.MayContain(ctx, id) {
					t.Fatalf("MayContain(%s) = false after rebuild", id)
				}
			}
			rejected := 0
			for i := range 100 {
				if !f.MayContain(ctx, "absent-"+strconv.Itoa(i)) {
					rejected++
				}
			}
			if rejected < 90 {
				t.Fatalf("a built filter rejected %d of 100 absent ids", rejected)
			}
			if b.redis == nil {
				return
			}
			b.redis.Restart() // empty: the filter is gone
			eventually(t, 10*time.Second, "filter still rejects ids after Redis lost it", func() bool {
				for i := range 100 {
					if !f.MayContain(ctx, "absent-"+strconv.Itoa(i)) {
						return false
					}
				}
				return true
			})
		})
	}
}

// TestFilterLargerThanOneWrite: a filter sized by the defaults (a
// million ids, about 1.2 MB in Redis, more than one write) is rebuilt
// whole: every id in it is let through, absent ids are rejected.
func TestFilterLargerThanOneWrite(t *testing.T) {
	b := newBackend(t, "redis")
	c := b.cache(t, nil, nil)
	ctx := context.Background()
	f, err := c.NewFilter("ids", cache.DefaultFilterConfig())
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 2000)
	for i := range ids {
		ids[i] = "id-" + strconv.Itoa(i)
	}
	// The rebuild is not bound by the timeout of a call, even the
	// shortest.
	hasty := b.cache(t, func(cfg *cache.Config) { cfg.Timeout = time.Millisecond }, nil)
	hf, err := hasty.NewFilter("ids", cache.DefaultFilterConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := hf.Rebuild(ctx, cache.IDs(ids)); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if !f.MayContain(ctx, id) {
			t.Fatalf("MayContain(%s) = false after a rebuild with it", id)
		}
	}
	rejected := 0
	for i := range 100 {
		if !f.MayContain(ctx, "absent-"+strconv.Itoa(i)) {
			rejected++
		}
	}
	if rejected < 90 {
		t.Fatalf("the rebuilt filter rejected %d of 100 absent ids", rejected)
	}
}

// TestFilterSmallest: the smallest filter (64 bits, one per id), full
// after a rebuild with many ids, lets every one of them through, the
// bits at its very end too.
func TestFilterSmallest(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			c := b.cache(t, nil, nil)
			ctx := context.Background()
			f, err := c.NewFilter("ids", cache.FilterConfig{ExpectedItems: 1, FalsePositiveRate: 0.5})
			if err != nil {
				t.Fatal(err)
			}
			ids := make([]string, 1000) // every one of the 64 bits, many times over
			for i := range ids {
				ids[i] = "id-" + strconv.Itoa(i)
			}
			if err := f.Rebuild(ctx, cache.IDs(ids)); err != nil {
				t.Fatal(err)
			}
			for _, id := range ids {
				if !f.MayContain(ctx, id) {
					t.Fatalf("MayContain(%s) = false after a rebuild with it", id)
				}
			}
		})
	}
}

// TestNegativeEntries: a key the loader says does not exist is
// remembered for negative_ttl, then asked again. Each half holds however
// slowly the machine runs: the reads that must be answered from the
// negative entry run well within a negative_ttl of a minute, and the
// expiry is checked against when the entry was written.
func TestNegativeEntries(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			ctx := context.Background()

			// Remembered: one load for five reads, four answered as absent
			// from the cache.
			reg := prometheus.NewRegistry()
			c := b.cache(t, func(cfg *cache.Config) { cfg.NegativeTTL, cfg.Jitter = time.Minute, 0 }, reg)
			s := newSource()
			for i := range 5 {
				if _, err := c.Get(ctx, "ghost", s.loader("ghost")); !errors.Is(err, cache.ErrNotFound) {
					t.Fatalf("Get #%d = %v, want ErrNotFound", i+1, err)
				}
			}
			if n := s.loads.Load(); n != 1 {
				t.Fatalf("%d loads for 5 reads of an absent key within negative_ttl, want 1", n)
			}
			if got := metric(t, reg, "keel_cache_negative_hits_total", "cache", "test"); got != 4 {
				t.Errorf("keel_cache_negative_hits_total = %g, want 4", got)
			}
			// Once the key exists and is invalidated, it is read.
			s.set("ghost", "here")
			if err := c.Invalidate(ctx, "ghost"); err != nil {
				t.Fatal(err)
			}
			if v := get(t, c, s, "ghost"); v != "here" {
				t.Fatalf("after Invalidate: %q, want here", v)
			}

			// Expired: asked again after negative_ttl, never before.
			const negTTL = 300 * time.Millisecond
			short := b.cache(t, func(cfg *cache.Config) { cfg.NegativeTTL, cfg.Jitter = negTTL, 0 }, prometheus.NewRegistry())
			s2 := newSource()
			var written time.Time
			load := func(ctx context.Context) ([]byte, error) {
				v, err := s2.loader("phantom")(ctx)
				written = time.Now() // the entry is written after this
				return v, err
			}
			began := time.Now()
			if _, err := short.Get(ctx, "phantom", load); !errors.Is(err, cache.ErrNotFound) {
				t.Fatalf("Get = %v, want ErrNotFound", err)
			}
			eventually(t, 5*time.Second, "the negative entry never expired", func() bool {
				_, err := short.Get(ctx, "phantom", load)
				return errors.Is(err, cache.ErrNotFound) && s2.loads.Load() == 2
			})
			if d := written.Sub(began); d < negTTL {
				t.Fatalf("the absent key was loaded again %s after its first read, before negative_ttl %s", d, negTTL)
			}
		})
	}
}

// TestLoaderErrorsAreNotCached: a failed load fails the read and the next
// read loads again.
func TestLoaderErrorsAreNotCached(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			c := b.cache(t, nil, nil)
			var calls atomic.Int64
			boom := errors.New("database down")
			load := func(context.Context) ([]byte, error) { calls.Add(1); return nil, boom }
			for range 3 {
				if _, err := c.Get(context.Background(), "k", load); !errors.Is(err, boom) {
					t.Fatalf("Get = %v, want the loader's error", err)
				}
			}
			if n := calls.Load(); n != 3 {
				t.Fatalf("%d loads for 3 reads that failed, want 3", n)
			}
		})
	}
}

// TestLoaderPanicFailsTheRead: a loader that panics fails that read,
// not the process, and nothing is cached: the next read loads.
func TestLoaderPanicFailsTheRead(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			c := b.cache(t, nil, nil)
			_, err := c.Get(context.Background(), "k", func(context.Context) ([]byte, error) { panic("bad row") })
			if err == nil || !strings.Contains(err.Error(), "panicked") || !strings.Contains(err.Error(), "bad row") {
				t.Fatalf("Get with a panicking loader = %v, want an error saying it panicked", err)
			}
			s := newSource()
			s.set("k", "v")
			if v := get(t, c, s, "k"); v != "v" || s.loads.Load() != 1 {
				t.Fatalf("the read after the panic = %q with %d loads, want v loaded", v, s.loads.Load())
			}
		})
	}
}

// TestReturnedValueBelongsToCaller: changing a returned value changes
// nothing cached, for concurrent readers of one load too.
func TestReturnedValueBelongsToCaller(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			c := b.cache(t, nil, nil)
			s := newSource()
			s.delay = 20 * time.Millisecond
			s.set("k", "value")
			var wg sync.WaitGroup
			for range 10 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					v, err := c.Get(context.Background(), "k", s.loader("k"))
					if err != nil || string(v) != "value" {
						t.Errorf("Get = %q, %v; want value", v, err)
						return
					}
					copy(v, "XXXXX")
				}()
			}
			wg.Wait()
			// A read that loads alone (no other reader shares the load).
			s.set("alone", "value")
			v, err := c.Get(context.Background(), "alone", s.loader("alone"))
			if err != nil || string(v) != "value" {
				t.Fatalf("Get(alone) = %q, %v; want value", v, err)
			}
			copy(v, "XXXXX")
			if v := get(t, c, s, "alone"); v != "value" {
				t.Fatalf("Get(alone) = %q after the loading caller changed its copy; want value", v)
			}
			for range 3 {
				v, err := c.Get(context.Background(), "k", s.loader("k"))
				if err != nil || string(v) != "value" {
					t.Fatalf("Get = %q, %v after callers changed their copies; want value", v, err)
				}
				copy(v, "XXXXX")
			}
		})
	}
}

// TestInvalidateReadsOwnWrites: right after Invalidate, the same cache
// reads the new value, every time.
func TestInvalidateReadsOwnWrites(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			c := b.cache(t, nil, nil)
			s := newSource()
			ctx := context.Background()
			for i := range 300 {
				want := "v" + strconv.Itoa(i)
				s.set("k", want)
				if err := c.Invalidate(ctx, "k"); err != nil {
					t.Fatal(err)
				}
				for range 3 {
					if v := get(t, c, s, "k"); v != want {
						t.Fatalf("round %d: read %q right after Invalidate, want %q", i, v, want)
					}
				}
			}
		})
	}
}

// TestInvalidateDuringLoadKeepsNoStaleValue: a load that started before
// an Invalidate may return what it read, but does not cache it.
func TestInvalidateDuringLoadKeepsNoStaleValue(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			c := b.cache(t, nil, nil)
			ctx := context.Background()
			entered, release := make(chan struct{}), make(chan struct{})
			slow := func(context.Context) ([]byte, error) {
				close(entered)
				<-release
				return []byte("old"), nil
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _ = c.Get(ctx, "k", slow)
			}()
			<-entered
			if err := c.Invalidate(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			close(release)
			<-done
			v, err := c.Get(ctx, "k", func(context.Context) ([]byte, error) { return []byte("new"), nil })
			if err != nil || string(v) != "new" {
				t.Fatalf("Get after the racing load = %q, %v; want new (the stale value was cached)", v, err)
			}
		})
	}
}

// TestReadOwnWriteDuringLoad: a load that began before a write and read
// the old value is still running when the writer invalidates the key;
// the writer's next read does not wait for that load but reads the new
// value at once, and once the old load returns, its value is not kept
// over the new one.
func TestReadOwnWriteDuringLoad(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			c := b.cache(t, nil, nil)
			ctx := context.Background()
			s := newSource()
			s.set("k", "old")
			entered, release := make(chan struct{}), make(chan struct{})
			var releaseOnce sync.Once
			defer releaseOnce.Do(func() { close(release) })
			first := true
			load := func(ctx context.Context) ([]byte, error) {
				v, err := s.loader("k")(ctx)
				if first { // only the first load runs before the write
					first = false
					close(entered)
					<-release
				}
				return v, err
			}
			oldRead := make(chan string, 1)
			go func() {
				v, err := c.Get(ctx, "k", load)
				oldRead <- fmt.Sprintf("%s, %v", v, err)
			}()
			<-entered // the first load has read "old" and is held

			s.set("k", "new")
			if err := c.Invalidate(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			// With the first load still held, a read that waited for it
			// would end with rctx.
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			v, err := c.Get(rctx, "k", load)
			cancel()
			if err != nil || string(v) != "new" {
				t.Fatalf("read right after Invalidate, during a load begun before the write = %q, %v; want new", v, err)
			}

			releaseOnce.Do(func() { close(release) })
			if got := <-oldRead; got != "old, <nil>" {
				t.Fatalf("the read that began before the write = %s; want old, <nil>", got)
			}
			for i := range 3 {
				if v := get(t, c, s, "k"); v != "new" {
					t.Fatalf("read %d after the old load returned = %q, want new (the old value was kept)", i+1, v)
				}
			}
			if n := s.loads.Load(); n != 2 {
				t.Fatalf("%d loads, want 2: the one before the write, and one after Invalidate whose value is kept", n)
			}
		})
	}
}

// TestInvalidateReachesOtherProcesses: a value another process keeps in
// memory (client-side caching) is dropped when the key is invalidated
// through this one.
func TestInvalidateReachesOtherProcesses(t *testing.T) {
	b := newBackend(t, "redis")
	regB := prometheus.NewRegistry()
	a, cb := b.cache(t, nil, nil), b.cache(t, nil, regB)
	s := newSource()
	s.set("item", "v1")
	if v := get(t, cb, s, "item"); v != "v1" {
		t.Fatalf("B read %q, want v1", v)
	}
	for range 3 {
		get(t, cb, s, "item")
	}
	if n := metric(t, regB, "keel_cache_hits_total", "cache", "test", "tier", "local"); n < 1 {
		t.Fatalf("B served no read from process memory (client-side caching off?): local hits %g", n)
	}
	s.set("item", "v2")
	if err := a.Invalidate(context.Background(), "item"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "B still serves the stale value", func() bool { return get(t, cb, s, "item") == "v2" })
}

// TestRedisKilledMidRun: readers see no error while Redis is killed and
// get values from the loader; once a new Redis runs on the same port, the
// cache uses it again.
func TestRedisKilledMidRun(t *testing.T) {
	b := newBackend(t, "redis")
	reg := prometheus.NewRegistry()
	c := b.cache(t, func(cfg *cache.Config) { cfg.Breaker.OpenFor = 100 * time.Millisecond }, reg)
	s := newSource()
	const keys = 20
	for i := range keys {
		s.set("k"+strconv.Itoa(i), "v"+strconv.Itoa(i))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reads, failures atomic.Int64
	var firstErr atomic.Value
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := rand.IntN(keys)
				v, err := c.Get(context.Background(), "k"+strconv.Itoa(i), s.loader("k"+strconv.Itoa(i)))
				reads.Add(1)
				if err != nil || string(v) != "v"+strconv.Itoa(i) {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("Get(k%d) = %q, %v", i, v, err))
				}
				time.Sleep(200 * time.Microsecond)
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	hits := func() float64 {
		return metric(t, reg, "keel_cache_hits_total", "cache", "test", "tier", "local") +
			metric(t, reg, "keel_cache_hits_total", "cache", "test", "tier", "redis")
	}
	// Warm: every key loaded once, then served from the cache.
	eventually(t, 10*time.Second, "the cache never warmed", func() bool { return s.loads.Load() == keys && hits() > 500 })

	b.redis.Kill()
	loadsAtKill, readsAtKill := s.loads.Load(), reads.Load()
	eventually(t, 10*time.Second, "reads did not go to the loader with Redis down", func() bool {
		if n := failures.Load(); n > 0 {
			t.Fatalf("%d reads failed with Redis down; first: %v", n, firstErr.Load())
		}
		return s.loads.Load() > loadsAtKill+200 && reads.Load() > readsAtKill+200
	})
	if state := metric(t, reg, "keel_cache_breaker_state", "cache", "test"); state == 0 {
		t.Errorf("breaker state %g with Redis down, want open (2) or half-open (1)", state)
	}

	b.redis.Restart()
	// Back on Redis: loads stop (each key loaded once more, at most) and
	// hits resume.
	eventually(t, 10*time.Second, "the cache did not use Redis again", func() bool {
		l, h := s.loads.Load(), hits()
		time.Sleep(300 * time.Millisecond)
		return s.loads.Load() == l && hits() > h+100
	})
	if state := metric(t, reg, "keel_cache_breaker_state", "cache", "test"); state != 0 {
		t.Errorf("breaker state %g with Redis back, want closed (0)", state)
	}
	if n := failures.Load(); n > 0 {
		t.Fatalf("%d of %d reads failed; first: %v", n, reads.Load(), firstErr.Load())
	}
	if metric(t, reg, "keel_cache_redis_errors_total", "cache", "test") == 0 {
		t.Error("no Redis errors counted while Redis was down")
	}
}

// logRecorder is a slog.Handler keeping the messages logged.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.msgs = append(l.msgs, r.Message)
	return nil
}

func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }

func (l *logRecorder) WithGroup(string) slog.Handler { return l }

// count returns how many messages logged start with prefix.
func (l *logRecorder) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// TestRedisOutageLoggedOnce: an outage is logged once as it starts,
// however many probes fail during it, and once as it ends.
func TestRedisOutageLoggedOnce(t *testing.T) {
	b := newBackend(t, "redis")
	cfg := cache.DefaultConfig()
	cfg.RedisAddr = b.redis.Addr()
	cfg.Breaker.OpenFor = 20 * time.Millisecond
	logs := &logRecorder{}
	reg := prometheus.NewRegistry()
	c, err := cache.New(context.Background(), cfg, cache.Options{Name: "test", Metrics: reg, Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := newSource()
	s.set("k", "v")
	get(t, c, s, "k")
	const failing, back = "cache: Redis calls failing", "cache: Redis is back"

	b.redis.Kill()
	errs := func() float64 { return metric(t, reg, "keel_cache_redis_errors_total", "cache", "test") }
	eventually(t, 10*time.Second, "the breaker never opened", func() bool {
		get(t, c, s, "k")
		return metric(t, reg, "keel_cache_breaker_state", "cache", "test") == 2
	})
	// Failed probes: each is one more error.
	atOpen := errs()
	eventually(t, 10*time.Second, "no probe failed", func() bool {
		get(t, c, s, "k")
		return errs() >= atOpen+3
	})
	if n := logs.count(failing); n != 1 {
		t.Fatalf("%d %q messages for one outage, want 1", n, failing)
	}

	b.redis.Restart()
	eventually(t, 10*time.Second, "the end of the outage was never logged", func() bool {
		get(t, c, s, "k")
		return logs.count(back) == 1
	})
	if n := logs.count(failing); n != 1 {
		t.Fatalf("%d %q messages for one outage, want 1", n, failing)
	}
}

// TestHungRedisDoesNotStallReads: with Redis hung (SIGSTOP), every read
// still answers within a few call timeouts, from the loader.
func TestHungRedisDoesNotStallReads(t *testing.T) {
	b := newBackend(t, "redis")
	const timeout = 50 * time.Millisecond
	c := b.cache(t, func(cfg *cache.Config) { cfg.Timeout = timeout }, nil)
	s := newSource()
	for i := range 10 {
		s.set("k"+strconv.Itoa(i), "v")
	}
	get(t, c, s, "k0")
	b.redis.Pause()
	defer b.redis.Resume()
	var wg sync.WaitGroup
	var slowest atomic.Int64
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				key := "k" + strconv.Itoa((g+i)%10)
				start := time.Now()
				v, err := c.Get(context.Background(), key, s.loader(key))
				d := time.Since(start)
				if err != nil || string(v) != "v" {
					t.Errorf("Get(%s) with Redis hung = %q, %v", key, v, err)
				}
				for old := slowest.Load(); int64(d) > old && !slowest.CompareAndSwap(old, int64(d)); old = slowest.Load() {
				}
			}
		}()
	}
	wg.Wait()
	if d := time.Duration(slowest.Load()); d > 10*timeout {
		t.Fatalf("slowest read with Redis hung took %s, want < %s", d, 10*timeout)
	}
}

// TestHungRedisDropsLocalCopies: once Redis stops answering, a process
// stops serving the values it keeps in memory within a few seconds (a
// small multiple of 10×timeout, at least 1s, is how long its connection
// may stay silent): Redis could not tell it of a change meanwhile.
func TestHungRedisDropsLocalCopies(t *testing.T) {
	b := newBackend(t, "redis")
	reg := prometheus.NewRegistry()
	c := b.cache(t, func(cfg *cache.Config) { cfg.Timeout = 50 * time.Millisecond }, reg)
	s := newSource()
	s.set("k", "v")
	eventually(t, 5*time.Second, "the value was never served from process memory", func() bool {
		get(t, c, s, "k")
		return metric(t, reg, "keel_cache_hits_total", "cache", "test", "tier", "local") > 0
	})
	b.redis.Pause()
	defer b.redis.Resume()
	loads := s.loads.Load()
	eventually(t, 5*time.Second, "the process kept serving its copy with Redis hung", func() bool {
		get(t, c, s, "k")
		return s.loads.Load() > loads
	})
}

// TestRedisDownAtStart: New succeeds without Redis, reads come from the
// loader, and the cache connects when Redis appears.
func TestRedisDownAtStart(t *testing.T) {
	b := newBackend(t, "redis")
	const cannot = "cache: cannot reach Redis"
	b.logs = &logRecorder{}
	b.cache(t, nil, nil)
	if n := b.logs.count(cannot); n != 0 {
		t.Fatalf("%d %q messages with Redis up, want none", n, cannot)
	}
	b.redis.Kill()
	reg := prometheus.NewRegistry()
	c := b.cache(t, func(cfg *cache.Config) { cfg.Breaker.OpenFor = 50 * time.Millisecond }, reg)
	if n := b.logs.count(cannot); n != 1 {
		t.Fatalf("%d %q messages for a start without Redis, want 1", n, cannot)
	}
	s := newSource()
	s.set("k", "v")
	for range 3 {
		if v := get(t, c, s, "k"); v != "v" {
			t.Fatalf("read %q, want v", v)
		}
	}
	if n := s.loads.Load(); n != 3 {
		t.Fatalf("%d loads for 3 reads without Redis, want 3", n)
	}
	b.redis.Restart()
	eventually(t, 10*time.Second, "the cache never used Redis", func() bool {
		get(t, c, s, "k")
		return metric(t, reg, "keel_cache_hits_total", "cache", "test", "tier", "local")+
			metric(t, reg, "keel_cache_hits_total", "cache", "test", "tier", "redis") > 0
	})
}

// TestNewWithinContext: when Redis does not answer at all (its address
// takes no connection), New returns within a bounded time, and by its
// context's deadline when that is sooner; reads then go to the loader.
func TestNewWithinContext(t *testing.T) {
	addr, release := blackHole(t)
	newCache := func(ctx context.Context, timeout time.Duration) <-chan *cache.Cache {
		cfg := cache.DefaultConfig()
		cfg.RedisAddr, cfg.Timeout = addr, timeout
		made := make(chan *cache.Cache, 1)
		go func() {
			c, err := cache.New(ctx, cfg, cache.Options{Name: "test"})
			if err != nil {
				t.Error(err)
			}
			made <- c
		}()
		return made
	}
	// within is the bound, and room for a busy machine.
	wait := func(made <-chan *cache.Cache, within time.Duration) *cache.Cache {
		t.Helper()
		select {
		case c := <-made:
			if c == nil {
				t.FailNow()
			}
			t.Cleanup(c.Close)
			return c
		case <-time.After(within):
			t.Fatalf("New did not return within %s with Redis not answering", within)
			return nil
		}
	}
	// With a timeout of 100ms, connecting is given 1s.
	wait(newCache(context.Background(), 100*time.Millisecond), 5*time.Second)
	// With 1s it is given 10s, but the context ends sooner.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	c := wait(newCache(ctx, time.Second), 5*time.Second)
	s := newSource()
	s.set("k", "v")
	if v := get(t, c, s, "k"); v != "v" {
		t.Fatalf("read %q, want v", v)
	}
	release() // the caches' retries fail now, so they close quickly
}

// blackHole returns a loopback address that takes no connection (a
// listener whose queue of connections is full, so connecting hangs), and
// a function that closes it, after which connecting fails.
func blackHole(t *testing.T) (addr string, release func()) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { syscall.Close(fd) }) }
	t.Cleanup(release)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	// Fill the queue until a connection attempt hangs.
	for i := 0; ; i++ {
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return addr, release
		}
		t.Cleanup(func() { conn.Close() })
		if i == 10 {
			t.Fatal("the listener keeps taking connections")
		}
	}
}

// TestInvalidateWhileRedisDown: an invalidation that could not reach
// Redis (a network partition: Redis keeps its data) is applied when Redis
// is reachable again, so no process goes on reading the stale value; the
// invalidating process reads the new value meanwhile.
func TestInvalidateWhileRedisDown(t *testing.T) {
	b := newBackend(t, "redis")
	p := newCutProxy(t, b.redis.Addr())
	a := b.cache(t, func(cfg *cache.Config) {
		cfg.RedisAddr = p.addr()
		cfg.Breaker.OpenFor = 50 * time.Millisecond
	}, nil)
	other := b.cache(t, func(cfg *cache.Config) { cfg.LocalTTL = 0 }, nil)
	s := newSource()
	s.set("k", "v1")
	get(t, a, s, "k")
	p.cut()
	s.set("k", "v2")
	if err := a.Invalidate(context.Background(), "k"); err == nil {
		t.Fatal("Invalidate with Redis cut off returned nil")
	}
	for range 3 {
		if v := get(t, a, s, "k"); v != "v2" {
			t.Fatalf("read %q after Invalidate with Redis cut off, want v2", v)
		}
	}
	if v := get(t, other, s, "k"); v != "v1" {
		t.Fatalf("the other process read %q during the partition; the test wants Redis to keep v1", v)
	}
	p.heal()
	// Redis still holds v1 until the delete goes through: the invalidating
	// process must not read it there meanwhile.
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
		if v := get(t, a, s, "k"); v != "v2" {
			t.Fatalf("read %q right after the partition healed, want v2", v)
		}
	}
	eventually(t, 10*time.Second, "the other process still reads the stale value", func() bool {
		return get(t, other, s, "k") == "v2"
	})
}

// TestInvalidateRefusedByRedis: when Redis refuses an invalidation's
// delete while it still answers reads, Invalidate says so, and the
// invalidating process reads the new value, never the old one Redis
// still holds, while it retries the delete by itself; once the delete
// goes through it is logged, every process reads the new value, and the
// invalidating process is served from the cache again.
func TestInvalidateRefusedByRedis(t *testing.T) {
	b := newBackend(t, "redis")
	ctx := context.Background()
	other := b.cache(t, func(cfg *cache.Config) { cfg.LocalTTL = 0 }, nil)
	allow := denyCommands(t, b, "del")
	b.logs = &logRecorder{}
	reg := prometheus.NewRegistry()
	a := b.cache(t, func(cfg *cache.Config) {
		// Retry often, and keep calling Redis however often it refuses.
		cfg.Breaker = cache.BreakerConfig{Failures: 1000, Window: 1000, OpenFor: 20 * time.Millisecond}
	}, reg)
	const deleted = "cache: deleted keys invalidated while Redis was unreachable"
	s := newSource()
	s.set("k", "v1")
	get(t, a, s, "k")
	s.set("k", "v2")
	if err := a.Invalidate(ctx, "k"); err == nil {
		t.Fatal("Invalidate whose delete Redis refused returned nil")
	}
	errs := func() float64 { return metric(t, reg, "keel_cache_redis_errors_total", "cache", "test") }
	atInvalidate := errs()
	eventually(t, 10*time.Second, "the delete was not retried", func() bool {
		if v := get(t, a, s, "k"); v != "v2" {
			t.Fatalf("read %q after an Invalidate Redis refused, want v2", v)
		}
		return errs() >= atInvalidate+3
	})
	if v := get(t, other, s, "k"); v != "v1" {
		t.Fatalf("the other process read %q; the test wants Redis to keep v1 while it refuses deletes", v)
	}
	if n := b.logs.count(deleted); n != 0 {
		t.Fatalf("%d %q messages before any delete went through", n, deleted)
	}

	allow()
	eventually(t, 10*time.Second, "the other process still reads the stale value", func() bool {
		return get(t, other, s, "k") == "v2"
	})
	eventually(t, 10*time.Second, "the delete was not logged", func() bool { return b.logs.count(deleted) == 1 })
	eventually(t, 10*time.Second, "the invalidating process never used the cache again", func() bool {
		before := s.loads.Load()
		get(t, a, s, "k")
		return s.loads.Load() == before
	})
	if v := get(t, a, s, "k"); v != "v2" {
		t.Fatalf("read %q, want v2", v)
	}
}

// TestInvalidatePartlyRefused: when Redis deletes one key of an
// Invalidate but refuses another, Invalidate says so, and neither key is
// read stale by the invalidating process.
func TestInvalidatePartlyRefused(t *testing.T) {
	b := newBackend(t, "redis")
	ctx := context.Background()
	other := b.cache(t, nil, nil)
	s := newSource()
	s.set("a", "a1")
	s.set("b", "b1")
	get(t, other, s, "a")
	get(t, other, s, "b") // Redis holds a1 and b1
	// The user may change keys under keel:test:a, only read keel:test:b.
	restrictRedis(t, b, "~keel:test:a*", "%R~keel:test:b*", "+@all")
	a := b.cache(t, nil, nil)
	s.set("a", "a2")
	s.set("b", "b2")
	if err := a.Invalidate(ctx, "a", "b"); err == nil {
		t.Fatal("Invalidate whose second delete Redis refused returned nil")
	}
	for range 3 {
		if va, vb := get(t, a, s, "a"), get(t, a, s, "b"); va != "a2" || vb != "b2" {
			t.Fatalf("read %q, %q after Invalidate, want a2, b2", va, vb)
		}
	}
}

// TestTooManyInvalidationsWhileRedisDown: while Redis is out of reach,
// 100,000 invalidations wait for it; one more is dropped, and logged.
func TestTooManyInvalidationsWhileRedisDown(t *testing.T) {
	b := newBackend(t, "redis")
	p := newCutProxy(t, b.redis.Addr())
	b.logs = &logRecorder{}
	reg := prometheus.NewRegistry()
	c := b.cache(t, func(cfg *cache.Config) {
		cfg.RedisAddr = p.addr()
		// The first failure stops the calls to Redis, for the test's
		// length: the invalidations just wait.
		cfg.Breaker = cache.BreakerConfig{Failures: 1, Window: 1, OpenFor: time.Minute}
	}, reg)
	p.cut()
	s := newSource()
	s.set("x", "v")
	eventually(t, 10*time.Second, "the breaker never opened", func() bool {
		get(t, c, s, "x")
		return metric(t, reg, "keel_cache_breaker_state", "cache", "test") == 2
	})
	keys := make([]string, 100_001)
	for i := range keys {
		keys[i] = "k" + strconv.Itoa(i)
	}
	if err := c.Invalidate(context.Background(), keys...); err == nil {
		t.Fatal("Invalidate with Redis cut off returned nil")
	}
	if n := b.logs.count("cache: too many invalidations wait for Redis"); n != 1 {
		t.Fatalf("%d invalidations dropped of 100,001 waiting for Redis, want 1", n)
	}
}

// TestZeroNegativeTTLKeepsNothing: with negative_ttl 0, "does not
// exist" is never cached: every read of an absent key loads.
func TestZeroNegativeTTLKeepsNothing(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			c := b.cache(t, func(cfg *cache.Config) { cfg.NegativeTTL = 0 }, nil)
			s := newSource()
			for range 20 {
				if _, err := c.Get(context.Background(), "ghost", s.loader("ghost")); !errors.Is(err, cache.ErrNotFound) {
					t.Fatalf("Get = %v, want ErrNotFound", err)
				}
			}
			if n := s.loads.Load(); n != 20 {
				t.Fatalf("%d loads for 20 reads of an absent key with negative_ttl 0, want 20", n)
			}
		})
	}
}

// TestCloseReleasesRedis: a cache talks to Redis over one connection
// (its copies in memory are invalidated on the connection that read
// them, and bounded by local_max_bytes once), however busy; Close closes
// it.
func TestCloseReleasesRedis(t *testing.T) {
	b := newBackend(t, "redis")
	c := b.cache(t, nil, nil)
	s := newSource()
	s.set("k", "v")
	get(t, c, s, "k")
	f, err := c.NewFilter("ids", cache.FilterConfig{ExpectedItems: 1000, FalsePositiveRate: 0.01})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := "k" + strconv.Itoa(i%5)
			s.set(key, "v")
			for range 20 {
				get(t, c, s, key)
				_ = f.MayContain(context.Background(), key)
				_ = f.Add(context.Background(), key)
				_ = c.Invalidate(context.Background(), key)
			}
		}()
	}
	wg.Wait()
	rc := redisClient(t, b.redis)
	clients := func() int {
		list, err := rc.Do(context.Background(), rc.B().ClientList().Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(list, "name=keel-cache ")
	}
	if n := clients(); n != 1 {
		t.Fatalf("%d connections of the cache in CLIENT LIST, want 1", n)
	}
	c.Close()
	eventually(t, 10*time.Second, "the cache's connections stay open after Close", func() bool { return clients() == 0 })
}

// TestFilterAddWhileRedisDown: ids added while Redis was out of reach
// reach the shared filter once it is back, so no process rejects them.
func TestFilterAddWhileRedisDown(t *testing.T) {
	b := newBackend(t, "redis")
	p := newCutProxy(t, b.redis.Addr())
	a := b.cache(t, func(cfg *cache.Config) {
		cfg.RedisAddr = p.addr()
		cfg.Breaker.OpenFor = 50 * time.Millisecond
	}, nil)
	other := b.cache(t, nil, nil)
	ctx := context.Background()
	fc := cache.FilterConfig{ExpectedItems: 1000, FalsePositiveRate: 0.0001}
	fa, err := a.NewFilter("ids", fc)
	if err != nil {
		t.Fatal(err)
	}
	fo, err := other.NewFilter("ids", fc)
	if err != nil {
		t.Fatal(err)
	}
	if err := fa.Rebuild(ctx, cache.IDs([]string{"old"})); err != nil {
		t.Fatal(err)
	}
	if fo.MayContain(ctx, "created-during-partition") {
		t.Fatal("the filter lets an id through before it is added; pick another id")
	}
	p.cut()
	if err := fa.Add(ctx, "created-during-partition"); err == nil {
		t.Fatal("Add with Redis cut off returned nil")
	}
	if !fa.MayContain(ctx, "created-during-partition") {
		t.Fatal("the adding process rejects the id it added during the partition")
	}
	p.heal()
	if !fa.MayContain(ctx, "created-during-partition") {
		t.Fatal("the adding process rejects the id it added during the partition, once healed")
	}
	eventually(t, 10*time.Second, "the other process's filter still rejects the id added during the partition", func() bool {
		return fo.MayContain(ctx, "created-during-partition")
	})
}

// denyCommands makes the cache processes that b makes from now on log
// in to Redis as a user that may run every command but those named, which
// Redis then refuses while it answers the others. allow lets the user run
// them again.
func denyCommands(t *testing.T, b *backend, commands ...string) (allow func()) {
	t.Helper()
	rules := []string{"~*", "+@all"}
	for _, c := range commands {
		rules = append(rules, "-"+c)
	}
	return restrictRedis(t, b, rules...)
}

// restrictRedis makes the cache processes that b makes from now on log
// in to Redis as a user with the ACL rules given (which keys, which
// commands). allow lets the user do everything again.
func restrictRedis(t *testing.T, b *backend, rules ...string) (allow func()) {
	t.Helper()
	rc := redisClient(t, b.redis)
	acl := func(rules ...string) {
		t.Helper()
		if err := rc.Do(context.Background(), rc.B().AclSetuser().Username("svc").Rule(rules...).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	acl(append([]string{"reset", "on", ">secret", "&*"}, rules...)...)
	t.Setenv("KEEL_REDIS_USERNAME", "svc")
	t.Setenv("KEEL_REDIS_PASSWORD", "secret")
	return func() { acl("allkeys", "+@all") }
}

// denyFilterWrites is denyCommands of BITFIELD, which sets filter bits
// (BITFIELD_RO, which reads them, is allowed): Redis fails filter adds
// while it answers everything else.
func denyFilterWrites(t *testing.T, b *backend) (allow func()) {
	t.Helper()
	return denyCommands(t, b, "bitfield")
}

// TestFilterFailedAddIsNotRejected: Redis fails one Add (the breaker
// stays closed, and Redis answers reads); until Redis has the id, the
// adding process's filter lets every id through, that one first, while
// another process, which cannot know of the add, still rejects it. Once
// Redis takes the write, which the adding process retries by itself,
// every process lets the id through and absent ids are rejected again.
func TestFilterFailedAddIsNotRejected(t *testing.T) {
	b := newBackend(t, "redis")
	ctx := context.Background()
	fc := cache.FilterConfig{ExpectedItems: 1000, FalsePositiveRate: 0.0001}
	other := b.cache(t, nil, nil)
	fo, err := other.NewFilter("ids", fc)
	if err != nil {
		t.Fatal(err)
	}
	if err := fo.Rebuild(ctx, cache.IDs([]string{"old"})); err != nil {
		t.Fatal(err)
	}
	allow := denyFilterWrites(t, b)
	b.logs = &logRecorder{}
	reg := prometheus.NewRegistry()
	a := b.cache(t, nil, reg)
	fa, err := a.NewFilter("ids", fc)
	if err != nil {
		t.Fatal(err)
	}
	// Another filter of the process, with nothing waiting for Redis.
	fx, err := a.NewFilter("other-ids", fc)
	if err != nil {
		t.Fatal(err)
	}
	if err := fx.Rebuild(ctx, cache.IDs([]string{"old"})); err != nil {
		t.Fatal(err)
	}
	const id, absent = "registered-just-now", "never-added"
	for _, f := range []*cache.Filter{fa, fo, fx} {
		if f.MayContain(ctx, id) || f.MayContain(ctx, absent) || !f.MayContain(ctx, "old") {
			t.Fatal("the built filter does not reject the ids that are not added yet; pick others")
		}
	}

	if err := fa.Add(ctx, id); err == nil {
		t.Fatal("Add that Redis refused returned nil")
	}
	if !fa.MayContain(ctx, id) {
		t.Fatal("MayContain right after an Add Redis missed = false in the adding process, want true")
	}
	if !fa.MayContain(ctx, absent) {
		t.Fatal("MayContain(an absent id) while an add waits for Redis = false, want true (fail open)")
	}
	if fx.MayContain(ctx, absent) {
		t.Fatal("another filter, with no add waiting for Redis, lets an absent id through")
	}
	if state := metric(t, reg, "keel_cache_breaker_state", "cache", "test"); state != 0 {
		t.Fatalf("breaker state %g after one failed add, want closed (0): the test is of a single failure", state)
	}
	if fo.MayContain(ctx, id) {
		t.Fatal("the other process lets the id through: Redis has it, the test wants Redis to have missed the add")
	}

	allow()
	eventually(t, 10*time.Second, "the add never reached Redis", func() bool { return fo.MayContain(ctx, id) })
	eventually(t, 10*time.Second, "the adding process lets absent ids through after its add reached Redis", func() bool {
		return !fa.MayContain(ctx, absent)
	})
	if !fa.MayContain(ctx, id) || !fo.MayContain(ctx, id) {
		t.Fatal("a filter rejects the added id once Redis has it")
	}
	if n := b.logs.count("cache: deleted keys"); n != 0 {
		t.Fatalf("%d messages of deleted keys, when no key was invalidated", n)
	}
}

// TestFilterManyFailedAddsKept: as many filter bits as wait for Redis
// (100,000: here 100,000 ids of one bit each) are kept, not dropped:
// once Redis takes writes the filter has them and is still built.
func TestFilterManyFailedAddsKept(t *testing.T) {
	b := newBackend(t, "redis")
	ctx := context.Background()
	fc := cache.FilterConfig{ExpectedItems: 100_000, FalsePositiveRate: 0.5} // one bit per id
	other := b.cache(t, nil, nil)
	fo, err := other.NewFilter("ids", fc)
	if err != nil {
		t.Fatal(err)
	}
	if err := fo.Rebuild(ctx, cache.IDs(nil)); err != nil {
		t.Fatal(err)
	}
	allow := denyFilterWrites(t, b)
	a := b.cache(t, nil, nil)
	fa, err := a.NewFilter("ids", fc)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 100_000)
	for i := range ids {
		ids[i] = "new-" + strconv.Itoa(i)
	}
	if err := fa.Add(ctx, ids...); err == nil {
		t.Fatal("Add that Redis refused returned nil")
	}
	allow()
	eventually(t, 10*time.Second, "the adds never reached Redis", func() bool {
		return fo.MayContain(ctx, ids[0]) && fo.MayContain(ctx, ids[len(ids)-1])
	})
	rejected := 0
	for i := range 100 {
		if !fo.MayContain(ctx, "absent-"+strconv.Itoa(i)) {
			rejected++
		}
	}
	if rejected < 20 { // about half the bits are set
		t.Fatalf("the filter rejected %d of 100 absent ids after the adds: it was marked unbuilt", rejected)
	}
}

// TestFilterAddBeingWrittenIsNotRejected: while the retry of an add
// Redis missed is on its way (Redis slow to answer), the adding process
// still lets the id through, although it kept Redis's earlier answer
// that the id was absent.
func TestFilterAddBeingWrittenIsNotRejected(t *testing.T) {
	b := newBackend(t, "redis")
	ctx := context.Background()
	fc := cache.FilterConfig{ExpectedItems: 1000, FalsePositiveRate: 0.0001}
	other := b.cache(t, nil, nil)
	fo, err := other.NewFilter("ids", fc)
	if err != nil {
		t.Fatal(err)
	}
	if err := fo.Rebuild(ctx, cache.IDs([]string{"old"})); err != nil {
		t.Fatal(err)
	}
	allow := denyFilterWrites(t, b)
	const retryEvery = 200 * time.Millisecond
	a := b.cache(t, func(cfg *cache.Config) {
		// Retries often; a call waits out the pause below; refusals
		// never open the breaker.
		cfg.Timeout = 5 * time.Second
		cfg.Breaker = cache.BreakerConfig{Failures: 1000, Window: 1000, OpenFor: retryEvery}
	}, nil)
	fa, err := a.NewFilter("ids", fc)
	if err != nil {
		t.Fatal(err)
	}
	const id = "registered-just-now"
	if fa.MayContain(ctx, id) { // kept in process memory
		t.Fatal("the built filter lets the id through before it is added; pick another")
	}
	if err := fa.Add(ctx, id); err == nil {
		t.Fatal("Add that Redis refused returned nil")
	}
	allow()
	// A call that reaches Redis: the process trusts its memory again.
	s := newSource()
	s.set("k", "v")
	get(t, a, s, "k")
	b.redis.Pause()
	paused := true
	defer func() {
		if paused {
			b.redis.Resume()
		}
	}()
	// The next retry is sent now, and waits for Redis.
	for end := time.Now().Add(3 * retryEvery); time.Now().Before(end); {
		if !fa.MayContain(ctx, id) {
			t.Fatal("MayContain = false while the add is being written, want true")
		}
	}
	b.redis.Resume()
	paused = false
	eventually(t, 10*time.Second, "the add never reached Redis", func() bool { return fo.MayContain(ctx, id) })
	if !fa.MayContain(ctx, id) {
		t.Fatal("MayContain = false once the add reached Redis, want true")
	}
}

// TestFilterTooManyFailedAdds: when more adds than are kept wait for
// Redis, the filter is marked unbuilt as soon as Redis takes writes; it
// lets every id through meanwhile in the adding process, and afterwards
// in every process, until it is rebuilt.
func TestFilterTooManyFailedAdds(t *testing.T) {
	b := newBackend(t, "redis")
	ctx := context.Background()
	fc := cache.FilterConfig{ExpectedItems: 100_000, FalsePositiveRate: 0.0001}
	other := b.cache(t, nil, nil)
	fo, err := other.NewFilter("ids", fc)
	if err != nil {
		t.Fatal(err)
	}
	if err := fo.Rebuild(ctx, cache.IDs([]string{"old"})); err != nil {
		t.Fatal(err)
	}
	allow := denyFilterWrites(t, b)
	a := b.cache(t, nil, nil)
	fa, err := a.NewFilter("ids", fc)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 20_000) // more bits than wait for Redis
	for i := range ids {
		ids[i] = "new-" + strconv.Itoa(i)
	}
	if fa.MayContain(ctx, ids[0]) {
		t.Fatal("the built filter lets an id through before it is added; pick others")
	}
	if err := fa.Add(ctx, ids...); err == nil {
		t.Fatal("Add that Redis refused returned nil")
	}
	for _, id := range []string{ids[0], ids[len(ids)-1], "absent"} {
		if !fa.MayContain(ctx, id) {
			t.Fatalf("MayContain(%s) = false while the filter waits to be marked unbuilt, want true", id)
		}
	}
	allow()
	eventually(t, 10*time.Second, "the other process's filter was never marked unbuilt", func() bool {
		return fo.MayContain(ctx, ids[0]) && fo.MayContain(ctx, "absent")
	})
	if !fa.MayContain(ctx, "absent") {
		t.Fatal("the adding process rejects ids after its filter was marked unbuilt")
	}
	if err := fo.Rebuild(ctx, cache.IDs(append(ids, "old"))); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the rebuilt filter does not answer from its ids", func() bool {
		return !fa.MayContain(ctx, "absent") && fa.MayContain(ctx, ids[0])
	})
}

// TestFilterFailsOpenWhileRedisDown: with Redis hung or killed, once a
// call has failed, a built filter lets every id through, the ids it
// rejected before too (their answers are kept in process memory, which
// Redis cannot keep up to date meanwhile); it rejects absent ids again
// once Redis answers.
func TestFilterFailsOpenWhileRedisDown(t *testing.T) {
	b := newBackend(t, "redis")
	reg := prometheus.NewRegistry()
	c := b.cache(t, func(cfg *cache.Config) {
		cfg.Timeout = 50 * time.Millisecond
		cfg.Breaker.OpenFor = 50 * time.Millisecond
	}, reg)
	ctx := context.Background()
	f, err := c.NewFilter("ids", cache.FilterConfig{ExpectedItems: 1000, FalsePositiveRate: 0.0001})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Rebuild(ctx, cache.IDs([]string{"a"})); err != nil {
		t.Fatal(err)
	}
	absent := func() bool {
		for i := range 20 {
			if f.MayContain(ctx, "absent-"+strconv.Itoa(i)) {
				return false
			}
		}
		return true
	}
	letsThrough := func(what string) {
		t.Helper()
		for i := range 20 {
			if !f.MayContain(ctx, "absent-"+strconv.Itoa(i)) {
				t.Fatalf("MayContain(absent-%d) = false with Redis %s, want true", i, what)
			}
		}
	}
	if !absent() {
		t.Fatal("the built filter lets absent ids through; pick others")
	}

	b.redis.Pause()
	if !f.MayContain(ctx, "not-asked-before") {
		t.Fatal("MayContain(an id not asked before) = false with Redis hung, want true")
	}
	letsThrough("hung")
	b.redis.Resume()
	eventually(t, 10*time.Second, "the filter never rejected absent ids again after Redis resumed", absent)
	// And it reads its copy in memory again, not Redis.
	rc := redisClient(t, b.redis)
	reads := func() int {
		info, err := rc.Do(ctx, rc.B().Info().Section("commandstats").Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		_, after, _ := strings.Cut(info, "cmdstat_bitfield_ro:calls=")
		n, _ := strconv.Atoi(after[:strings.IndexByte(after, ',')])
		return n
	}
	before := reads()
	for range 50 {
		absent()
	}
	if n := reads() - before; n > 40 {
		t.Fatalf("%d reads of the filter in Redis for 50 rounds of the same 20 ids after Redis resumed, want them from memory", n)
	}

	b.redis.Kill()
	if !f.MayContain(ctx, "not-asked-before-either") {
		t.Fatal("MayContain(an id not asked before) = false with Redis killed, want true")
	}
	letsThrough("killed")
	eventually(t, 10*time.Second, "the breaker never opened with Redis killed", func() bool {
		return metric(t, reg, "keel_cache_breaker_state", "cache", "test") == 2
	})
	letsThrough("killed and the breaker open")
}

// cutProxy forwards TCP connections to a server until cut: then it
// drops them and refuses new ones, like a network partition, until
// healed.
type cutProxy struct {
	t      testing.TB
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newCutProxy(t testing.TB, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{t: t, ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go p.serve()
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) serve() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			in.Close()
			continue
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			in.Close()
			continue
		}
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(out, in); out.Close() }()
		go func() { _, _ = io.Copy(in, out); in.Close() }()
	}
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

// TestTTLJitter: TTLs vary within ±jitter around ttl, so entries loaded
// together do not expire together.
func TestTTLJitter(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		b := newBackend(t, "redis")
		ttl, jitter := time.Minute, 0.1
		c := b.cache(t, func(cfg *cache.Config) { cfg.TTL, cfg.Jitter = ttl, jitter }, nil)
		s := newSource()
		rc := redisClient(t, b.redis)
		lo, hi := time.Duration(1<<62), time.Duration(0)
		for i := range 200 {
			key := "k" + strconv.Itoa(i)
			s.set(key, "v")
			get(t, c, s, key)
			ms, err := rc.Do(context.Background(), rc.B().Pttl().Key("keel:test:"+key).Build()).AsInt64()
			if err != nil {
				t.Fatal(err)
			}
			d := time.Duration(ms) * time.Millisecond
			lo, hi = min(lo, d), max(hi, d)
		}
		if lo < time.Duration(float64(ttl)*(1-jitter))-time.Second || hi > time.Duration(float64(ttl)*(1+jitter)) {
			t.Fatalf("TTLs in [%s, %s], want within %s ± %g", lo, hi, ttl, jitter)
		}
		if hi-lo < time.Duration(float64(ttl)*jitter) {
			t.Fatalf("TTLs in [%s, %s]: spread %s, want at least %s", lo, hi, hi-lo, time.Duration(float64(ttl)*jitter))
		}
	})
	t.Run("memory", func(t *testing.T) {
		b := newBackend(t, "memory")
		ttl, jitter := time.Second, 0.5
		c := b.cache(t, func(cfg *cache.Config) { cfg.TTL, cfg.Jitter = ttl, jitter }, nil)
		s := newSource()
		const n = 100
		loaded := make([]time.Time, n)
		for i := range n {
			key := "k" + strconv.Itoa(i)
			s.set(key, "v")
			get(t, c, s, key)
			loaded[i] = time.Now()
		}
		// How long after its load each key was loaded again: its entry
		// expired.
		expired := map[int]time.Duration{}
		for len(expired) < n && time.Since(loaded[0]) < 3*ttl {
			for i := range n {
				if _, done := expired[i]; done {
					continue
				}
				before := s.loads.Load()
				get(t, c, s, "k"+strconv.Itoa(i))
				if s.loads.Load() > before {
					expired[i] = time.Since(loaded[i])
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		if len(expired) < n {
			t.Fatalf("%d of %d entries expired within %s", len(expired), n, 3*ttl)
		}
		lo, hi := time.Duration(1<<62), time.Duration(0)
		for _, d := range expired {
			lo, hi = min(lo, d), max(hi, d)
		}
		if lo < time.Duration(float64(ttl)*(1-jitter))-50*time.Millisecond || hi > time.Duration(float64(ttl)*(1+jitter))+500*time.Millisecond {
			t.Fatalf("entries expired after [%s, %s], want within %s ± %g", lo, hi, ttl, jitter)
		}
		if hi-lo < time.Duration(float64(ttl)*jitter) {
			t.Fatalf("entries expired after [%s, %s]: spread %s, want at least %s", lo, hi, hi-lo, time.Duration(float64(ttl)*jitter))
		}
	})
}

// TestConfigValidate: the defaults are valid; each bad value is reported
// under its key path.
func TestConfigValidate(t *testing.T) {
	if errs := cache.DefaultConfig().Validate("cache"); len(errs) > 0 {
		t.Fatalf("defaults: %v", errors.Join(errs...))
	}
	if errs := cache.DefaultFilterConfig().Validate("filter"); len(errs) > 0 {
		t.Fatalf("filter defaults: %v", errors.Join(errs...))
	}
	tests := []struct {
		change func(*cache.Config)
		key    string
	}{
		{func(c *cache.Config) { c.RedisAddr = "no-port" }, "cache/redis_addr"},
		{func(c *cache.Config) { c.TTL = 0 }, "cache/ttl"},
		{func(c *cache.Config) { c.Jitter = 0.9 }, "cache/jitter"},
		{func(c *cache.Config) { c.NegativeTTL = -time.Second }, "cache/negative_ttl"},
		{func(c *cache.Config) { c.LockTTL = time.Millisecond }, "cache/lock_ttl"},
		{func(c *cache.Config) { c.LocalTTL = 2 * time.Hour }, "cache/local_ttl"},
		{func(c *cache.Config) { c.LocalMaxBytes = 10 }, "cache/local_max_bytes"},
		{func(c *cache.Config) { c.Timeout = 0 }, "cache/timeout"},
		{func(c *cache.Config) { c.Breaker.Failures = 11 }, "cache/breaker/failures"},
		{func(c *cache.Config) { c.Breaker.Window = 0 }, "cache/breaker/window"},
		{func(c *cache.Config) { c.Breaker.OpenFor = 0 }, "cache/breaker/open_for"},
	}
	for _, tt := range tests {
		cfg := cache.DefaultConfig()
		tt.change(&cfg)
		errs := cfg.Validate("cache")
		keys := config.ErrorKeys(errors.Join(errs...))
		if len(keys) == 0 || keys[0] != tt.key {
			t.Errorf("want an error for %s, got keys %v", tt.key, keys)
		}
		for _, err := range errs {
			var ke *config.KeyError
			if !errors.As(err, &ke) {
				t.Errorf("%v is not a *config.KeyError", err)
			}
		}
		if _, err := cache.New(context.Background(), cfg, cache.Options{Name: "x"}); err == nil {
			t.Errorf("New accepted a config with a bad %s", tt.key)
		}
	}
	f := cache.FilterConfig{ExpectedItems: 0, FalsePositiveRate: 1}
	if keys := config.ErrorKeys(errors.Join(f.Validate("f")...)); len(keys) != 2 || keys[0] != "f/expected_items" || keys[1] != "f/false_positive_rate" {
		t.Errorf("filter config keys %v, want f/expected_items, f/false_positive_rate", keys)
	}
}

// TestDefaultConfig: DefaultConfig is what the Config fields document.
func TestDefaultConfig(t *testing.T) {
	want := cache.Config{
		Enabled:       true,
		RedisAddr:     "",
		KeyPrefix:     "keel:",
		TTL:           5 * time.Minute,
		Jitter:        0.1,
		NegativeTTL:   30 * time.Second,
		LockTTL:       2 * time.Second,
		LocalTTL:      time.Minute,
		LocalMaxBytes: 64 << 20,
		Timeout:       100 * time.Millisecond,
		Breaker:       cache.BreakerConfig{Failures: 5, Window: 10, OpenFor: time.Second},
	}
	if got := cache.DefaultConfig(); got != want {
		t.Errorf("DefaultConfig() = %+v,\nwant %+v", got, want)
	}
	wantF := cache.FilterConfig{ExpectedItems: 1_000_000, FalsePositiveRate: 0.01}
	if got := cache.DefaultFilterConfig(); got != wantF {
		t.Errorf("DefaultFilterConfig() = %+v, want %+v", got, wantF)
	}
}

// TestConfigRangesInclusive: the ends of every documented range are
// valid.
func TestConfigRangesInclusive(t *testing.T) {
	for _, end := range []struct {
		name   string
		change func(*cache.Config)
	}{
		{"low", func(c *cache.Config) {
			c.TTL, c.Jitter, c.NegativeTTL, c.LockTTL = time.Second, 0, 0, 10*time.Millisecond
			c.LocalTTL, c.LocalMaxBytes, c.Timeout = 0, 1<<20, time.Millisecond
			c.Breaker = cache.BreakerConfig{Failures: 1, Window: 1, OpenFor: 10 * time.Millisecond}
		}},
		{"high", func(c *cache.Config) {
			c.TTL, c.Jitter, c.NegativeTTL, c.LockTTL = 24*time.Hour, 0.5, time.Hour, time.Minute
			c.LocalTTL, c.LocalMaxBytes, c.Timeout = time.Hour, 16<<30, 10*time.Second
			c.Breaker = cache.BreakerConfig{Failures: 1000, Window: 1000, OpenFor: time.Minute}
		}},
	} {
		cfg := cache.DefaultConfig()
		end.change(&cfg)
		if errs := cfg.Validate("cache"); len(errs) > 0 {
			t.Errorf("%s ends: %v", end.name, errors.Join(errs...))
		}
	}
	for _, f := range []cache.FilterConfig{{ExpectedItems: 1, FalsePositiveRate: 0.000001}, {ExpectedItems: 100_000_000, FalsePositiveRate: 0.5}} {
		if errs := f.Validate("filter"); len(errs) > 0 {
			t.Errorf("%+v: %v", f, errors.Join(errs...))
		}
	}
}

// TestMemoryBound: without Redis, the entries kept take at most
// local_max_bytes, evicting those that expire first; what fits is kept,
// a value larger than the bound's share of one shard too.
func TestMemoryBound(t *testing.T) {
	b := newBackend(t, "memory")
	const maxBytes = 1 << 20
	c := b.cache(t, func(cfg *cache.Config) { cfg.LocalMaxBytes, cfg.Jitter = maxBytes, 0 }, nil)
	s := newSource()
	val := strings.Repeat("x", 100)
	const n = 15_000 // about 1.5 MiB of keys and values
	key := func(i int) string { return fmt.Sprintf("k%05d", i) }
	for i := range n {
		s.set(key(i), val)
		get(t, c, s, key(i))
	}
	// A read of an entry no longer kept fails, and changes nothing.
	gone := errors.New("not kept")
	kept := func(k string) bool {
		_, err := c.Get(context.Background(), k, func(context.Context) ([]byte, error) { return nil, gone })
		return err == nil
	}
	keptBytes := 0
	for i := range n {
		if kept(key(i)) {
			keptBytes += len(key(i)) + len(val)
		}
	}
	if keptBytes > maxBytes {
		t.Fatalf("%d bytes of keys and values kept, want at most local_max_bytes %d", keptBytes, maxBytes)
	}
	t.Logf("%d bytes of keys and values kept", keptBytes)
	if keptBytes < maxBytes/4 {
		t.Fatalf("only %d bytes of keys and values kept within local_max_bytes %d", keptBytes, maxBytes)
	}
	// The entries expiring first go: the newest are kept.
	for i := n - 1000; i < n; i++ {
		if !kept(key(i)) {
			t.Fatalf("%s, among the 1,000 newest entries, was evicted", key(i))
		}
	}
	big := strings.Repeat("b", maxBytes/8)
	s.set("big", big)
	get(t, c, s, "big")
	if !kept("big") {
		t.Fatal("a value of an eighth of local_max_bytes was not kept")
	}
}

// TestMetricsRegistration: every cache has its series, labelled with its
// name; a second cache of the same name in one registry is refused, and
// allowed again once the first is closed.
func TestMetricsRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, err := cache.New(context.Background(), cache.DefaultConfig(), cache.Options{Name: "inventory:item", Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	s := newSource()
	s.set("k", "v")
	get(t, c, s, "k")
	get(t, c, s, "k")
	for _, m := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"keel_cache_misses_total", nil, 1},
		{"keel_cache_loads_total", nil, 1},
		{"keel_cache_hits_total", []string{"tier", "local"}, 1},
		{"keel_cache_breaker_state", nil, 0},
	} {
		if got := metric(t, reg, m.name, append([]string{"cache", "inventory:item"}, m.labels...)...); got != m.want {
			t.Errorf("%s%v = %g, want %g", m.name, m.labels, got, m.want)
		}
	}
	if _, err := cache.New(context.Background(), cache.DefaultConfig(), cache.Options{Name: "inventory:item", Metrics: reg}); err == nil {
		t.Error("a second cache of the same name registered its metrics")
	}
	c.Close()
	c2, err := cache.New(context.Background(), cache.DefaultConfig(), cache.Options{Name: "inventory:item", Metrics: reg})
	if err != nil {
		t.Fatalf("after Close: %v", err)
	}
	c2.Close()
}

// TestDisabledCacheAlwaysLoads: with enabled false every read reaches the
// loader, values and "does not exist" alike; filters let every id
// through without reading the ids; and Redis, even when set, is never
// written.
func TestDisabledCacheAlwaysLoads(t *testing.T) {
	for _, name := range backends() {
		t.Run(name, func(t *testing.T) {
			b := newBackend(t, name)
			reg := prometheus.NewRegistry()
			c := b.cache(t, func(cfg *cache.Config) { cfg.Enabled = false }, reg)
			s := newSource()
			s.set("a", "1")
			for i := range 3 {
				if v := get(t, c, s, "a"); v != "1" {
					t.Fatalf("read %d: %q", i, v)
				}
			}
			if n := s.loads.Load(); n != 3 {
				t.Fatalf("%d loads for 3 reads, want 3", n)
			}
			if err := c.Invalidate(context.Background(), "a"); err != nil {
				t.Fatal(err)
			}

			f, err := c.NewFilter("ids", cache.DefaultFilterConfig())
			if err != nil {
				t.Fatal(err)
			}
			readIDs := false
			err = f.Rebuild(context.Background(), func(yield func(string, error) bool) { readIDs = true; yield("a", nil) })
			if err != nil || readIDs {
				t.Fatalf("Rebuild: %v, read the ids: %v", err, readIDs)
			}
			for range 2 {
				if _, err := c.GetChecked(context.Background(), f, "absent", s.loader("absent")); !errors.Is(err, cache.ErrNotFound) {
					t.Fatalf("GetChecked(absent) = %v, want ErrNotFound", err)
				}
			}
			if n := s.loads.Load(); n != 5 {
				t.Fatalf("%d loads after 2 reads of an absent id, want 5: the filter or a negative entry answered", n)
			}
			if got := metric(t, reg, "keel_cache_loads_total", "cache", "test"); got != 5 {
				t.Fatalf("keel_cache_loads_total = %v, want 5", got)
			}
			if b.redis != nil {
				rc := redisClient(t, b.redis)
				n, err := rc.Do(context.Background(), rc.B().Dbsize().Build()).AsInt64()
				if err != nil || n != 0 {
					t.Fatalf("Redis holds %d keys (%v), want none", n, err)
				}
			}
		})
	}
}
