package cache_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/keelplatform/keel/internal/cache"
)

// BenchmarkGet measures one read by where it is answered, so the ratios
// can be compared within one run: from process memory (Redis's
// client-side cache), from Redis (client-side caching off), a miss
// (Redis read, lock, load, write), and the in-process cache's hit and
// miss.
func BenchmarkGet(b *testing.B) {
	value := make([]byte, 512) // a typical marshalled message
	load := func(context.Context) ([]byte, error) { return value, nil }
	ctx := context.Background()
	hit := func(c *cache.Cache) func(b *testing.B) {
		return func(b *testing.B) {
			if _, err := c.Get(ctx, "hot", load); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.Get(ctx, "hot", load); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	miss := func(c *cache.Cache) func(b *testing.B) {
		return func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				if _, err := c.Get(ctx, "cold"+strconv.Itoa(i), load); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	rb, mb := newBackend(b, "redis"), newBackend(b, "memory")
	local := rb.cache(b, nil, nil)
	remote := rb.cache(b, func(cfg *cache.Config) { cfg.LocalTTL = 0 }, nil)
	mem := mb.cache(b, nil, nil)
	b.Run("local", hit(local))
	b.Run("redis", hit(remote))
	b.Run("miss", miss(remote))
	b.Run("memory", hit(mem))
	b.Run("memory-miss", miss(mem))
}
