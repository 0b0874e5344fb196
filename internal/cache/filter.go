package cache

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"math"
	"strings"
	"sync"
	"sync/atomic"
)

// Filter is a Bloom filter of the ids that exist, so reads of ids that
// cannot exist are answered without the cache or the database
// ([Cache.GetChecked]). It lives where its cache does: in Redis, shared
// by every process, or in process memory. It is safe for concurrent use.
// Create it with [Cache.NewFilter].
//
// A filter that was never built ([Filter.Rebuild]) lets every id through,
// and so does one whose store is out of reach, fails, or was lost (a
// Redis restart without persistence), and, in the process that added
// them, one whose store has not taken ids [Filter.Add]ed yet: a filter
// may let absent ids through, but never rejects one that exists,
// provided every id created after the rebuild started is added. Across
// processes sharing Redis this holds for every Add that returned nil; an
// id whose Add returned an error may be rejected by the other processes
// until Redis has taken it, which this process retries on its own.
type Filter struct {
	cache *Cache
	name  string
	geo   geometry
	bits  filterBits
}

// filterBits is where a filter's bits live.
type filterBits interface {
	// add sets the bits at positions.
	add(ctx context.Context, positions []uint64) error
	// test reports false when the filter is built and a bit at positions
	// is clear.
	test(ctx context.Context, positions []uint64) (bool, error)
	// rebuild replaces the bits with those fill sets, keeping the bits
	// set meanwhile, and marks the filter built; when fill fails it
	// changes nothing.
	rebuild(ctx context.Context, fill func(set func(pos uint64)) error) error
}

// NewFilter returns the filter called name (e.g. "ids") of the cache,
// sized by cfg, which must be valid ([FilterConfig.Validate]). Processes
// that use the same cache name, filter name and cfg share the filter; a
// filter sized differently is another filter, which starts unbuilt.
func (c *Cache) NewFilter(name string, cfg FilterConfig) (*Filter, error) {
	if name == "" || strings.ContainsAny(name, "{}") {
		return nil, fmt.Errorf("cache %s: filter name %q: want a non-empty name without braces", c.name, name)
	}
	if errs := cfg.Validate(""); len(errs) > 0 {
		return nil, fmt.Errorf("cache %s: filter %s: %w", c.name, name, errors.Join(errs...))
	}
	g := newGeometry(cfg)
	return &Filter{cache: c, name: name, geo: g, bits: c.store.bits(name, g)}, nil
}

// Add records ids as existing; call it when an id is created, after the
// database committed it. Once Add returns nil the ids are in Redis, and
// every process sharing the filter lets them through (another process
// once Redis's invalidation of its copy reaches it). When Redis cannot
// be reached, or fails the write, the ids are written once it answers,
// and Add returns an error saying so; if too many pile up, the filter is
// marked unbuilt instead (it then lets every id through until the next
// [Filter.Rebuild]). Until then this process's filter lets every id
// through, so it never rejects the ids it added, but other processes may
// reject them.
func (f *Filter) Add(ctx context.Context, ids ...string) error {
	var pos []uint64
	for _, id := range ids {
		pos = f.geo.positions(id, pos)
	}
	if len(pos) == 0 {
		return nil
	}
	if err := f.bits.add(ctx, pos); err != nil {
		return fmt.Errorf("cache %s: filter %s: add: %w", f.cache.name, f.name, err)
	}
	return nil
}

// MayContain reports whether id may exist: false means it certainly
// does not (it was not added since the filter was built), true that it
// may. It answers true when the filter cannot be read, and while ids
// this process added wait to be written to Redis.
func (f *Filter) MayContain(ctx context.Context, id string) bool {
	var buf [32]uint64
	ok, err := f.bits.test(ctx, f.geo.positions(id, buf[:0]))
	return ok || err != nil
}

// Rebuild fills the filter with ids, typically every id in the database,
// then marks it built; call it at start. Ids added meanwhile, by any
// process, are kept. It returns the first error ids yields, or the
// store's, leaving the filter as it was.
func (f *Filter) Rebuild(ctx context.Context, ids iter.Seq2[string, error]) error {
	var buf []uint64
	err := f.bits.rebuild(ctx, func(set func(uint64)) error {
		for id, err := range ids {
			if err != nil {
				return err
			}
			buf = f.geo.positions(id, buf[:0])
			for _, p := range buf {
				set(p)
			}
		}
		return ctx.Err()
	})
	if err != nil {
		return fmt.Errorf("cache %s: filter %s: rebuild: %w", f.cache.name, f.name, err)
	}
	return nil
}

// IDs yields the ids of a slice, for [Filter.Rebuild].
func IDs(ids []string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		for _, id := range ids {
			if !yield(id, nil) {
				return
			}
		}
	}
}

// geometry is a Bloom filter's size: m bits, k of them per id.
type geometry struct {
	m uint64
	k int
}

// newGeometry sizes a filter for cfg: m = -n ln p / (ln 2)², k = m/n ln 2.
func newGeometry(cfg FilterConfig) geometry {
	n := float64(cfg.ExpectedItems)
	m := math.Ceil(-n * math.Log(cfg.FalsePositiveRate) / (math.Ln2 * math.Ln2))
	k := int(math.Round(m / n * math.Ln2))
	return geometry{m: uint64(max(m, 64)), k: min(max(k, 1), 32)}
}

// positions appends the k bit positions of id to dst: enhanced double
// hashing of the two halves of one 64-bit hash.
func (g geometry) positions(id string, dst []uint64) []uint64 {
	h := hash64(id)
	a, b := h&0xffffffff, h>>32
	for i := range g.k {
		dst = append(dst, a%g.m)
		a += b
		b += uint64(i)
	}
	return dst
}

// hash64 is FNV-1a with murmur3's finalizer, so every bit of the result
// depends on every byte of s. It must never change: filters in Redis
// outlive processes.
func hash64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// memBits are a filter's bits in process memory.
type memBits struct {
	// mu is held shared to set or read bits and exclusively to swap in a
	// rebuilt set, so no bit set during a rebuild is lost.
	mu    sync.RWMutex
	words []uint64
	ready bool
	g     geometry
}

func newMemBits(g geometry) *memBits {
	return &memBits{g: g, words: make([]uint64, (g.m+63)/64)}
}

func (b *memBits) add(_ context.Context, positions []uint64) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	for _, p := range positions {
		atomic.OrUint64(&b.words[p/64], 1<<(p%64))
	}
	return nil
}

func (b *memBits) test(_ context.Context, positions []uint64) (bool, error) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if !b.ready {
		return true, nil
	}
	for _, p := range positions {
		if atomic.LoadUint64(&b.words[p/64])&(1<<(p%64)) == 0 {
			return false, nil
		}
	}
	return true, nil
}

func (b *memBits) rebuild(_ context.Context, fill func(set func(uint64)) error) error {
	words := make([]uint64, len(b.words))
	if err := fill(func(p uint64) { words[p/64] |= 1 << (p % 64) }); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, w := range b.words {
		words[i] |= w
	}
	b.words, b.ready = words, true
	return nil
}
