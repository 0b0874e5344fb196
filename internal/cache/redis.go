package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/redis/rueidis"
)

// Environment variables with the Redis credentials, when the server
// wants them. They are never logged.
const (
	envUsername = "KEEL_REDIS_USERNAME"
	envPassword = "KEEL_REDIS_PASSWORD"
)

// Tags of what a cache key holds in Redis: a value, the answer "does not
// exist", or the lock of a process loading it (tag and the lock's token).
const (
	tagValue  = 'v'
	tagAbsent = 'n'
	tagLock   = 'l'
)

// recentFor is how long this process ignores its in-memory copy of a key
// it invalidated, so it reads its own writes even before Redis's
// invalidation message reaches it (which it normally does within a
// round trip).
const recentFor = time.Second

// maxPending bounds the deletes and filter bits kept for when Redis is
// back.
const maxPending = 100_000

// maxWaitStep caps the pause between two looks at a key another process
// is loading.
const maxWaitStep = 20 * time.Millisecond

// rebuildChunk is the most bytes of a filter sent in one command.
const rebuildChunk = 1 << 20

// errUnavailable means Redis is not to be called now: not connected yet,
// or the breaker is open.
var errUnavailable = errors.New("redis unavailable")

var (
	// setIfLocked replaces the lock KEYS[1] holds if it is still ARGV[1]
	// with ARGV[2] for ARGV[3] ms, or deletes it when ARGV[2] is empty.
	// An Invalidate while loading deleted the lock: then the loaded
	// value, which may predate the change, is not written.
	setIfLocked = rueidis.NewLuaScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1`)
	// swapFilter ORs the filter KEYS[1] into the rebuilt KEYS[2], so bits
	// set during the rebuild stay, and moves it in place, for good.
	swapFilter = rueidis.NewLuaScript(`
redis.call('BITOP', 'OR', KEYS[2], KEYS[2], KEYS[1])
redis.call('RENAME', KEYS[2], KEYS[1])
redis.call('PERSIST', KEYS[1])
return 1`)
)

// redisStore keeps entries in Redis, and in process memory by Redis's
// client-side caching (RESP3, CLIENT TRACKING), which Redis invalidates
// when a key changes.
type redisStore struct {
	cfg     Config
	name    string
	prefix  string // KeyPrefix + name + ":"
	log     *slog.Logger
	metrics *metrics
	breaker circuitbreaker.CircuitBreaker[any]
	client  atomic.Pointer[clientBox] // nil until connected

	// recent holds keys (full) invalidated by this process lately, whose
	// local copies are not trusted, until the now() value they map to
	// (math.MaxInt64 while their delete in Redis is pending).
	recent  sync.Map
	nRecent atomic.Int64

	// failing is whether the last call that reached for Redis failed:
	// copies in process memory may be stale, since Redis may not reach
	// this process either.
	failing atomic.Bool

	mu          sync.Mutex
	pendingDels map[string]struct{}
	pendingBits map[string][]uint64 // filter key -> positions to set
	nPending    int
	lostFilters map[string]bool // filter keys that lost bits: mark them unbuilt
	// flushing holds the filter keys whose queued bits (or unbuilt mark)
	// flush is writing now: like pendingBits, not in Redis yet.
	flushing map[string]bool
	// filtersWait is whether any filter key is in pendingBits,
	// lostFilters or flushing, so filter reads skip mu while none is.
	filtersWait  atomic.Bool
	wake         chan struct{}
	done         chan struct{}
	maintainDone chan struct{}
}

type clientBox struct{ rueidis.Client }

func newRedisStore(ctx context.Context, cfg Config, name string, m *metrics, log *slog.Logger) *redisStore {
	r := &redisStore{
		cfg:          cfg,
		name:         name,
		prefix:       cfg.KeyPrefix + name + ":",
		log:          log,
		metrics:      m,
		pendingDels:  map[string]struct{}{},
		pendingBits:  map[string][]uint64{},
		lostFilters:  map[string]bool{},
		flushing:     map[string]bool{},
		wake:         make(chan struct{}, 1),
		done:         make(chan struct{}),
		maintainDone: make(chan struct{}),
	}
	r.breaker = circuitbreaker.NewBuilder[any]().
		WithFailureThresholdRatio(uint(cfg.Breaker.Failures), uint(cfg.Breaker.Window)).
		WithDelay(cfg.Breaker.OpenFor).
		WithSuccessThreshold(1).
		OnOpen(func(e circuitbreaker.StateChangedEvent) {
			// A failed probe reopens it: that is the same outage.
			if e.OldState == circuitbreaker.ClosedState {
				r.log.Warn("cache: Redis calls failing; reading from the loader", "addr", cfg.RedisAddr, "probe_every", cfg.Breaker.OpenFor)
			}
		}).
		OnClose(func(circuitbreaker.StateChangedEvent) {
			r.log.Info("cache: Redis is back", "addr", cfg.RedisAddr)
			r.signal()
		}).
		Build()
	if err := r.connect(ctx); err != nil {
		r.log.Warn("cache: cannot reach Redis; reading from the loader and retrying", "addr", cfg.RedisAddr, "error", err)
	}
	go r.maintain()
	return r
}

// connect makes the Redis client, once.
func (r *redisStore) connect(ctx context.Context) error {
	if r.client.Load() != nil {
		return nil
	}
	dialTimeout := min(max(10*r.cfg.Timeout, time.Second), 10*time.Second)
	if d, ok := ctx.Deadline(); ok && time.Until(d) < dialTimeout {
		dialTimeout = max(time.Until(d), time.Millisecond)
	}
	client, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress: []string{r.cfg.RedisAddr},
		Username:    os.Getenv(envUsername),
		Password:    os.Getenv(envPassword),
		ClientName:  "keel-cache",
		Dialer:      net.Dialer{Timeout: dialTimeout},
		// A hung server is given up on after this; each call is bounded
		// by cfg.Timeout anyway.
		ConnWriteTimeout: min(max(10*r.cfg.Timeout, time.Second), 10*time.Second),
		// One connection: its client-side cache is bounded by
		// LocalMaxBytes, and an invalidation of ours travels on the
		// connection that holds our copy.
		PipelineMultiplex: -1,
		CacheSizeEachConn: r.cfg.LocalMaxBytes,
		DisableCache:      r.cfg.LocalTTL == 0,
		// A failed call goes to the loader; retrying it would only make
		// the read slower.
		DisableRetry: true,
	})
	if err != nil {
		return err
	}
	r.client.Store(&clientBox{client})
	r.log.Info("cache: connected to Redis", "addr", r.cfg.RedisAddr)
	return nil
}

// maintain connects when New could not, writes the deletes and filter
// bits that waited for Redis, and forgets old recent invalidations.
func (r *redisStore) maintain() {
	defer close(r.maintainDone)
	tick := time.NewTicker(min(max(r.cfg.Breaker.OpenFor, 50*time.Millisecond), time.Second))
	defer tick.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-tick.C:
		case <-r.wake:
		}
		if r.client.Load() == nil {
			ctx, cancel := context.WithTimeout(context.Background(), min(max(10*r.cfg.Timeout, time.Second), 10*time.Second))
			err := r.connect(ctx)
			cancel()
			if err != nil {
				continue
			}
		}
		r.flush()
		r.forgetRecent()
	}
}

func (r *redisStore) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *redisStore) close() {
	close(r.done)
	<-r.maintainDone
	if b := r.client.Load(); b != nil {
		b.Close()
	}
}

func (r *redisStore) breakerState() float64 {
	if r.client.Load() == nil {
		return 2
	}
	switch r.breaker.State() {
	case circuitbreaker.HalfOpenState:
		return 1
	case circuitbreaker.OpenState:
		return 2
	}
	return 0
}

// begin gets the client for one call, bounded by the call timeout, or
// errUnavailable. A nil error must be followed by end.
func (r *redisStore) begin(ctx context.Context) (rueidis.Client, context.Context, context.CancelFunc, error) {
	b := r.client.Load()
	if b == nil || !r.breaker.TryAcquirePermit() {
		return nil, nil, nil, errUnavailable
	}
	cctx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	return b.Client, cctx, cancel, nil
}

// end records the outcome of a call for the breaker and the metrics. A
// nil reply is a success; a call the caller gave up on says nothing of
// Redis and counts as one too. local says the reply came from process
// memory, not from Redis.
func (r *redisStore) end(ctx context.Context, cancel context.CancelFunc, err error, local bool) error {
	cancel()
	switch {
	case err == nil || rueidis.IsRedisNil(err):
		r.breaker.RecordSuccess()
		if !local {
			r.failing.Store(false)
		}
	case ctx.Err() != nil:
		r.breaker.RecordSuccess()
		return ctx.Err()
	default:
		r.breaker.RecordFailure()
		r.failing.Store(true)
		r.metrics.redisErrors.Inc()
	}
	return err
}

// do sends one command.
func (r *redisStore) do(ctx context.Context, cmd func(rueidis.Builder) rueidis.Completed) rueidis.RedisResult {
	client, cctx, cancel, err := r.begin(ctx)
	if err != nil {
		return rueidis.NewErrorResult(err)
	}
	res := client.Do(cctx, cmd(client.B()))
	_ = r.end(ctx, cancel, res.Error(), false)
	return res
}

// doCache sends a read that may be answered from process memory.
func (r *redisStore) doCache(ctx context.Context, cmd func(rueidis.Builder) rueidis.Cacheable) rueidis.RedisResult {
	client, cctx, cancel, err := r.begin(ctx)
	if err != nil {
		return rueidis.NewErrorResult(err)
	}
	res := client.DoCache(cctx, cmd(client.B()), r.cfg.LocalTTL)
	_ = r.end(ctx, cancel, res.Error(), res.IsCacheHit())
	return res
}

// exec runs a Lua script.
func (r *redisStore) exec(ctx context.Context, script *rueidis.Lua, keys, args []string) error {
	client, cctx, cancel, err := r.begin(ctx)
	if err != nil {
		return err
	}
	return r.end(ctx, cancel, script.Exec(cctx, client, keys, args).Error(), false)
}

// read reads the full key k: from this process's memory when allowed.
// The string may be shared with the client-side cache: copy before
// handing out bytes.
func (r *redisStore) read(ctx context.Context, k string) (val string, local bool, err error) {
	var res rueidis.RedisResult
	if r.cfg.LocalTTL > 0 && !r.isRecent(k) {
		res = r.doCache(ctx, func(b rueidis.Builder) rueidis.Cacheable { return b.Get().Key(k).Cache() })
	} else {
		res = r.do(ctx, func(b rueidis.Builder) rueidis.Completed { return b.Get().Key(k).Build() })
	}
	val, err = res.ToString()
	return val, res.IsCacheHit(), err
}

// decode classifies what a key holds: found (a value, copied, or
// absent), miss (nothing, or a lock: loading, then locked is true) or
// unavailable (Redis failed).
func decode(val string, err error) (e entry, st status, locked bool) {
	switch {
	case rueidis.IsRedisNil(err):
		return entry{}, miss, false
	case err != nil:
		return entry{}, unavailable, false
	case len(val) > 0 && val[0] == tagValue:
		return entry{val: []byte(val[1:])}, found, false
	case val == string(tagAbsent):
		return entry{absent: true}, found, false
	case len(val) > 0 && val[0] == tagLock:
		return entry{}, miss, true
	}
	// Not written by a cache: read through without touching it.
	return entry{}, unavailable, false
}

func (r *redisStore) lookup(ctx context.Context, key string) (entry, status) {
	k := r.prefix + key
	if r.isPending(k) {
		return entry{}, unavailable
	}
	val, local, err := r.read(ctx, k)
	e, st, _ := decode(val, err)
	if st == found {
		switch {
		case e.absent:
			r.metrics.negativeHits.Inc()
		case local:
			r.metrics.hitsLocal.Inc()
		default:
			r.metrics.hitsRedis.Inc()
		}
	}
	return e, st
}

// fill loads key at most once across processes: the process that sets
// the key to its lock (SET NX PX lock_ttl) loads and replaces the lock
// with the value; the others wait for the value, reading the key, which
// their client-side cache answers until Redis invalidates it. Any Redis
// failure makes the read go to the loader without Redis.
func (r *redisStore) fill(ctx context.Context, key string, skip bool, load func(context.Context) entry) entry {
	k := r.prefix + key
	if skip || r.isPending(k) {
		return load(ctx)
	}
	lock := string(tagLock) + strconv.FormatUint(rand.Uint64(), 36)
	giveUp := time.Now().Add(2*r.cfg.LockTTL + r.cfg.Timeout)
	step := time.Millisecond
	waited := false
	for {
		val, _, err := r.read(ctx, k)
		e, st, locked := decode(val, err)
		switch st {
		case found:
			return e
		case unavailable:
			return load(ctx)
		}
		if !locked {
			res := r.do(ctx, func(b rueidis.Builder) rueidis.Completed {
				return b.Set().Key(k).Value(lock).Nx().PxMilliseconds(r.cfg.LockTTL.Milliseconds()).Build()
			})
			err := res.Error()
			switch {
			case err == nil:
				e := load(ctx)
				r.keep(ctx, k, lock, e)
				return e
			case !rueidis.IsRedisNil(err):
				return load(ctx)
			}
			// Another process took the lock first.
		}
		if !waited {
			waited = true
			r.metrics.lockWaits.Inc()
		}
		if time.Now().After(giveUp) {
			return load(ctx)
		}
		t := time.NewTimer(step)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return entry{err: ctx.Err()}
		}
		step = min(2*step, maxWaitStep)
	}
}

// keep replaces the lock of k with the outcome of the load, unless the
// key was invalidated meanwhile. A failed load just releases the lock.
func (r *redisStore) keep(ctx context.Context, k, lock string, e entry) {
	var val string
	var ttl time.Duration
	switch {
	case e.err != nil:
	case e.absent:
		if r.cfg.NegativeTTL > 0 {
			val, ttl = string(tagAbsent), jittered(r.cfg.NegativeTTL, r.cfg.Jitter)
		}
	default:
		val, ttl = string(tagValue)+string(e.val), jittered(r.cfg.TTL, r.cfg.Jitter)
	}
	ms := max(ttl.Milliseconds(), 1)
	_ = r.exec(ctx, setIfLocked, []string{k}, []string{lock, val, strconv.FormatInt(ms, 10)})
}

func (r *redisStore) invalidate(ctx context.Context, keys []string) error {
	full := make([]string, len(keys))
	for i, key := range keys {
		full[i] = r.prefix + key
		r.markRecent(full[i], now()+int64(recentFor))
	}
	client, cctx, cancel, err := r.begin(ctx)
	if err == nil {
		cmds := make(rueidis.Commands, len(full))
		for i, k := range full {
			cmds[i] = client.B().Del().Key(k).Build()
		}
		for _, res := range client.DoMulti(cctx, cmds...) {
			if err = res.Error(); err != nil {
				break
			}
		}
		err = r.end(ctx, cancel, err, false)
	}
	if err == nil {
		return nil
	}
	r.mu.Lock()
	for _, k := range full {
		r.queueDel(k)
	}
	r.mu.Unlock()
	return fmt.Errorf("%w (deleting later, when Redis is back)", err)
}

// markRecent notes that the full key k was invalidated by this process,
// so its local copy is not trusted until the now() value until.
func (r *redisStore) markRecent(k string, until int64) {
	if _, loaded := r.recent.Swap(k, until); !loaded {
		r.nRecent.Add(1)
	}
}

func (r *redisStore) isRecent(k string) bool {
	if r.nRecent.Load() == 0 {
		return false
	}
	until, ok := r.recent.Load(k)
	return ok && until.(int64) > now()
}

// isPending reports whether k's delete is waiting for Redis: until it is
// done, Redis may hold a stale value of k.
func (r *redisStore) isPending(k string) bool {
	if r.nRecent.Load() == 0 {
		return false
	}
	until, ok := r.recent.Load(k)
	return ok && until.(int64) == math.MaxInt64
}

func (r *redisStore) forgetRecent() {
	t := now()
	r.recent.Range(func(k, until any) bool {
		if until.(int64) <= t && r.recent.CompareAndDelete(k, until) {
			r.nRecent.Add(-1)
		}
		return true
	})
}

// flush writes the deletes and filter bits that waited for Redis.
func (r *redisStore) flush() {
	r.mu.Lock()
	if r.nPending == 0 && len(r.lostFilters) == 0 {
		r.mu.Unlock()
		return
	}
	dels, bits, lost := r.pendingDels, r.pendingBits, r.lostFilters
	r.pendingDels, r.pendingBits, r.lostFilters, r.nPending = map[string]struct{}{}, map[string][]uint64{}, map[string]bool{}, 0
	for k := range bits {
		r.flushing[k] = true
	}
	for k := range lost {
		r.flushing[k] = true
	}
	r.filtersChanged()
	r.mu.Unlock()

	ctx := context.Background()
	deleted := 0
	for k := range dels {
		res := r.do(ctx, func(b rueidis.Builder) rueidis.Completed { return b.Del().Key(k).Build() })
		if res.Error() != nil {
			r.requeue(dels, bits, lost)
			return
		}
		delete(dels, k)
		deleted++
		r.markRecent(k, now()+int64(recentFor))
	}
	if deleted > 0 {
		r.log.Info("cache: deleted keys invalidated while Redis was unreachable", "keys", deleted)
	}
	for k := range lost {
		// Bit 0 clear: unbuilt, so the filter lets every id through.
		res := r.do(ctx, func(b rueidis.Builder) rueidis.Completed {
			return b.Bitfield().Key(k).Set("u1", 0, 0).Build()
		})
		if res.Error() != nil {
			r.requeue(dels, bits, lost)
			return
		}
		r.log.Error("cache: a filter lost ids while Redis was unreachable; it lets every id through until rebuilt", "filter", k)
		delete(lost, k)
		delete(bits, k)
		r.flushed(k)
	}
	for k, pos := range bits {
		if err := r.setBits(ctx, k, pos); err != nil {
			r.requeue(dels, bits, lost)
			return
		}
		delete(bits, k)
		r.flushed(k)
	}
}

// flushed notes that Redis has the queued bits of the filter key k.
func (r *redisStore) flushed(k string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.flushing, k)
	r.filtersChanged()
}

// requeue puts back what flush could not write.
func (r *redisStore) requeue(dels map[string]struct{}, bits map[string][]uint64, lost map[string]bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range dels {
		r.queueDel(k)
	}
	for k, pos := range bits {
		r.queueBits(k, pos)
	}
	for k := range lost {
		r.lostFilters[k] = true
	}
	clear(r.flushing)
	r.filtersChanged()
}

// filtersChanged updates filtersWait after a change of pendingBits,
// lostFilters or flushing. The caller holds r.mu.
func (r *redisStore) filtersChanged() {
	r.filtersWait.Store(len(r.pendingBits) > 0 || len(r.lostFilters) > 0 || len(r.flushing) > 0)
}

// filterWaits reports whether bits of the filter key k, added by this
// process, are not in Redis yet: queued, being written, or dropped (the
// filter is to be marked unbuilt).
func (r *redisStore) filterWaits(k string) bool {
	if !r.filtersWait.Load() {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pendingBits[k]) > 0 || r.lostFilters[k] || r.flushing[k]
}

// queueDel keeps a delete for when Redis is back. The caller holds r.mu.
func (r *redisStore) queueDel(k string) {
	if _, ok := r.pendingDels[k]; ok {
		return
	}
	if r.nPending >= maxPending {
		r.log.Error("cache: too many invalidations wait for Redis; dropping one, whose key may stay stale until its TTL", "key", k)
		r.markRecent(k, now()+int64(recentFor))
		return
	}
	r.pendingDels[k] = struct{}{}
	r.nPending++
	r.markRecent(k, math.MaxInt64)
}

// queueBits keeps filter bits for when Redis is back; past the bound,
// the filter is to be marked unbuilt instead. The caller holds r.mu.
func (r *redisStore) queueBits(k string, pos []uint64) {
	defer r.filtersChanged()
	if r.lostFilters[k] {
		return
	}
	if r.nPending+len(pos) > maxPending {
		r.nPending -= len(r.pendingBits[k])
		delete(r.pendingBits, k)
		r.lostFilters[k] = true
		return
	}
	r.pendingBits[k] = append(r.pendingBits[k], pos...)
	r.nPending += len(pos)
}

// redisBits are a filter's bits in a Redis string: bit 0 says the filter
// was built, bit 1+p is position p.
type redisBits struct {
	r   *redisStore
	key string
	g   geometry
}

func (r *redisStore) bits(name string, g geometry) filterBits {
	// Outside the cache's keys, so no cache key can collide with it. The
	// braces keep the filter and its rebuild in one cluster slot; the
	// size in the key makes a differently sized filter another filter.
	key := fmt.Sprintf("%sfilter:{%s:%s}:%d:%d", r.cfg.KeyPrefix, r.name, name, g.m, g.k)
	return &redisBits{r: r, key: key, g: g}
}

func (b *redisBits) add(ctx context.Context, positions []uint64) error {
	err := b.r.setBits(ctx, b.key, positions)
	if err == nil {
		return nil
	}
	b.r.mu.Lock()
	b.r.queueBits(b.key, positions)
	b.r.mu.Unlock()
	return fmt.Errorf("%w (adding later, when Redis is back)", err)
}

// setBits sets the bits at positions of the filter key.
func (r *redisStore) setBits(ctx context.Context, key string, positions []uint64) error {
	res := r.do(ctx, func(b rueidis.Builder) rueidis.Completed {
		cmd := b.Bitfield().Key(key).Set("u1", int64(positions[0]+1), 1)
		for _, p := range positions[1:] {
			cmd = cmd.Set("u1", int64(p+1), 1)
		}
		return cmd.Build()
	})
	return res.Error()
}

func (b *redisBits) test(ctx context.Context, positions []uint64) (bool, error) {
	if b.r.filterWaits(b.key) {
		// Redis lacks ids this process added: it could reject them.
		return true, nil
	}
	read := func(rb rueidis.Builder) rueidis.Cacheable {
		cmd := rb.BitfieldRo().Key(b.key).Get().Get("u1", 0)
		for _, p := range positions {
			cmd = cmd.Get("u1", int64(p+1))
		}
		return cmd.Cache()
	}
	var res rueidis.RedisResult
	if b.r.failing.Load() {
		// The copy in memory may lack ids another process added, if
		// Redis cannot reach this process: ask Redis, or let the id
		// through.
		res = b.r.do(ctx, func(rb rueidis.Builder) rueidis.Completed { return rueidis.Completed(read(rb)) })
	} else {
		res = b.r.doCache(ctx, read)
	}
	bits, err := res.AsIntSlice()
	if err != nil {
		return true, err
	}
	if len(bits) == 0 || bits[0] == 0 {
		return true, nil // not built
	}
	for _, bit := range bits[1:] {
		if bit == 0 {
			return false, nil
		}
	}
	return true, nil
}

// rebuild writes the new bits to a temporary key, in chunks, then ORs
// the current bits into it and renames it over the filter, atomically.
func (b *redisBits) rebuild(ctx context.Context, fill func(set func(uint64)) error) error {
	buf := make([]byte, (b.g.m+1+7)/8)
	buf[0] = 0x80 // bit 0: built
	err := fill(func(p uint64) {
		p++
		buf[p/8] |= 0x80 >> (p % 8)
	})
	if err != nil {
		return err
	}
	tmp := b.key + ":rebuild:" + strconv.FormatUint(rand.Uint64(), 36)
	// Bulk writes get more time than a read; the temporary key expires
	// should this process die half-way.
	ctx, cancel := context.WithTimeout(ctx, 100*b.r.cfg.Timeout+time.Duration(len(buf)/rebuildChunk+1)*time.Second)
	defer cancel()
	for off := 0; off < len(buf); off += rebuildChunk {
		chunk := buf[off:min(off+rebuildChunk, len(buf))]
		client := b.r.client.Load()
		if client == nil {
			return errUnavailable
		}
		var cmd rueidis.Completed
		if off == 0 {
			cmd = client.B().Set().Key(tmp).Value(rueidis.BinaryString(chunk)).Ex(10 * time.Minute).Build()
		} else {
			cmd = client.B().Setrange().Key(tmp).Offset(int64(off)).Value(rueidis.BinaryString(chunk)).Build()
		}
		if err := client.Do(ctx, cmd).Error(); err != nil {
			return fmt.Errorf("write %s: %w", tmp, err)
		}
	}
	client := b.r.client.Load()
	if err := swapFilter.Exec(ctx, client, []string{b.key, tmp}, nil).Error(); err != nil {
		return fmt.Errorf("swap in %s: %w", tmp, err)
	}
	return nil
}
