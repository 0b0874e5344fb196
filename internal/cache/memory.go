package cache

import (
	"context"
	"hash/maphash"
	"sync"
	"time"
)

// memShards is how many independently locked parts the in-process store
// has, so concurrent reads of different keys rarely contend.
const memShards = 64

// entryOverhead approximates the bytes an entry costs besides its key
// and value (map slot, struct, slice header).
const entryOverhead = 64

// evictSample is how many entries are looked at to pick one to evict:
// the one expiring first goes.
const evictSample = 8

// clockStart anchors the monotonic clock entries expire by.
var clockStart = time.Now()

// now is the monotonic time in nanoseconds since clockStart.
func now() int64 { return int64(time.Since(clockStart)) }

// memStore keeps entries in process memory: the cache without Redis.
type memStore struct {
	cfg      Config
	metrics  *metrics
	seed     maphash.Seed
	maxBytes int // per shard
	shards   [memShards]memShard
}

type memShard struct {
	mu      sync.Mutex
	entries map[string]memEntry
	bytes   int
	// epoch counts invalidations in the shard: a load that started
	// before one does not keep its result, which may predate the change.
	epoch uint64
}

type memEntry struct {
	val     []byte
	absent  bool
	expires int64 // now() value
}

func newMemStore(cfg Config, m *metrics) *memStore {
	s := &memStore{cfg: cfg, metrics: m, seed: maphash.MakeSeed(), maxBytes: max(cfg.LocalMaxBytes/memShards, 1)}
	for i := range s.shards {
		s.shards[i].entries = map[string]memEntry{}
	}
	return s
}

func (s *memStore) shard(key string) *memShard {
	return &s.shards[maphash.String(s.seed, key)%memShards]
}

// get returns the live entry of key and the shard's epoch.
func (s *memStore) get(key string) (e entry, ok bool, epoch uint64) {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	me, ok := sh.entries[key]
	if ok && me.expires <= now() {
		sh.remove(key, me)
		ok = false
	}
	if !ok {
		return entry{}, false, sh.epoch
	}
	if me.absent {
		return entry{absent: true}, true, sh.epoch
	}
	return entry{val: append([]byte(nil), me.val...)}, true, sh.epoch
}

func (s *memStore) lookup(_ context.Context, key string) (entry, status) {
	e, ok, _ := s.get(key)
	if !ok {
		return entry{}, miss
	}
	if e.absent {
		s.metrics.negativeHits.Inc()
	} else {
		s.metrics.hitsLocal.Inc()
	}
	return e, found
}

func (s *memStore) fill(ctx context.Context, key string, _ bool, load func(context.Context) entry) entry {
	e, ok, epoch := s.get(key)
	if ok {
		return e
	}
	e = load(ctx)
	var ttl time.Duration
	switch {
	case e.err != nil:
		return e
	case e.absent:
		ttl = jittered(s.cfg.NegativeTTL, s.cfg.Jitter)
	default:
		ttl = jittered(s.cfg.TTL, s.cfg.Jitter)
	}
	if ttl <= 0 {
		return e
	}
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.epoch != epoch {
		return e
	}
	if old, ok := sh.entries[key]; ok {
		sh.remove(key, old)
	}
	me := memEntry{val: e.val, absent: e.absent, expires: now() + int64(ttl)}
	sh.entries[key] = me
	sh.bytes += size(key, me)
	sh.evict(s.maxBytes)
	if e.val != nil {
		// The caller owns the value it is returned.
		e.val = append([]byte(nil), e.val...)
	}
	return e
}

func (s *memStore) invalidate(_ context.Context, keys []string) error {
	for _, key := range keys {
		sh := s.shard(key)
		sh.mu.Lock()
		sh.epoch++
		if me, ok := sh.entries[key]; ok {
			sh.remove(key, me)
		}
		sh.mu.Unlock()
	}
	return nil
}

func (s *memStore) bits(_ string, g geometry) filterBits { return newMemBits(g) }

func (s *memStore) breakerState() float64 { return 0 }

func (s *memStore) close() {}

func size(key string, me memEntry) int { return len(key) + len(me.val) + entryOverhead }

// remove deletes key, whose entry is me. The caller holds sh.mu.
func (sh *memShard) remove(key string, me memEntry) {
	delete(sh.entries, key)
	sh.bytes -= size(key, me)
}

// evict removes entries until the shard fits in limit bytes: expired
// ones first, else, out of a few sampled (map iteration order is
// random), the one that would expire first. The caller holds sh.mu.
func (sh *memShard) evict(limit int) {
	for sh.bytes > limit && len(sh.entries) > 1 {
		t := now()
		var victim string
		var ve memEntry
		n := 0
		for k, me := range sh.entries {
			if n == 0 || me.expires < ve.expires {
				victim, ve = k, me
			}
			if n++; n == evictSample || me.expires <= t {
				break
			}
		}
		sh.remove(victim, ve)
	}
}
