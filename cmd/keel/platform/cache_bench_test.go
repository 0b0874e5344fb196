package platform_test

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/rueidis"
	"golang.org/x/sync/errgroup"

	"github.com/keelplatform/keel/cmd/keel/platform"
	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	"github.com/keelplatform/keel/internal/cache/redistest"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/testkit"
)

// BenchmarkGetItem measures one GetItem, a Connect JSON call over
// HTTP/1.1 keep-alive from one caller, by where the item comes from, sent
// straight to the inventory service ("direct") and through the edge
// ("edge"), against whole platforms as `keel up` runs them (SQLite, a real
// redis-server):
//
//   - hit: the same item again and again, with the cache in Redis: the
//     inventory answers from its client-side copy (RESP3 tracking);
//   - miss: with the cache in Redis, every read an item that exists in the
//     database but was never read, so never cached: the filter, a Redis
//     read, the load lock, the database and the write back to Redis;
//   - nocache: the same item again and again, with the cache turned off
//     (cache/enabled false): a database read every time;
//   - memory: the same item again and again, with the cache in process
//     memory (no redis_addr, the embedded default).
//
// Each sub-benchmark checks the inventory's keel_cache_* counters, so a
// hit that loaded or a miss that did not fails it. Each reports its ratio
// to the hit of the same path (ratio-to-hit) and, through the edge, to the
// direct call of the same scenario (ratio-to-direct); with -v a table
// sums them all up. Client, edge, services and Redis share this machine:
// compare the ratios of one run, not absolute numbers across runs.
func BenchmarkGetItem(b *testing.B) {
	redis := redistest.Start(b)
	inRedis := startBenchPlatform(b, platform.Options{RedisAddr: redis.Addr()})
	inRedis.redis = redisClient(b, redis.Addr())
	inMemory := startBenchPlatform(b, platform.Options{})
	b.Setenv("KEEL_CACHE_ENABLED", "false") // read once, at start
	off := startBenchPlatform(b, platform.Options{})

	hot := platform.DemoItems()[0].SKU
	same := func(*testing.B) string { return hot }
	pool := &missPool{p: inRedis, size: missPoolBatch()}
	pool.seed(b)

	scenarios := []struct {
		name  string
		p     *benchPlatform
		sku   func(*testing.B) string
		miss  bool // every read loads from the database
		local bool // every read is answered from the client-side cache
	}{
		{name: "hit", p: inRedis, sku: same, local: true},
		{name: "miss", p: inRedis, sku: pool.next, miss: true},
		{name: "nocache", p: off, sku: same, miss: true},
		{name: "memory", p: inMemory, sku: same},
	}
	paths := []string{"direct", "edge"}
	nsPerOp := map[string]float64{} // by "scenario/path"
	for _, sc := range scenarios {
		for _, path := range paths {
			b.Run(sc.name+"/"+path, func(b *testing.B) {
				client := sc.p.direct
				if path == "edge" {
					client = sc.p.edge
				}
				if !sc.miss {
					sc.p.warm(b, client, hot, sc.local)
				}
				before := sc.p.cacheCounters(b)
				for b.Loop() {
					sku := sc.sku(b)
					res, err := client.GetItem(b.Context(), connect.NewRequest(&inventoryv1.GetItemRequest{Sku: sku}))
					if err != nil {
						b.Fatalf("GetItem %s: %v", sku, err)
					}
					if res.Msg.GetItem().GetSku() != sku {
						b.Fatalf("GetItem %s returned %v", sku, res.Msg.GetItem())
					}
				}
				after := sc.p.cacheCounters(b)
				loads, local, stored := after.loads-before.loads, after.local-before.local, after.redis-before.redis
				switch {
				case sc.miss && loads != b.N:
					b.Fatalf("%d reads made %d database loads, want one each", b.N, loads)
				case !sc.miss && loads != 0:
					b.Fatalf("%d reads of a cached item made %d database loads, want none", b.N, loads)
				case sc.local && local != b.N:
					b.Fatalf("%d reads of a cached item: %d answered from the client-side cache, want all", b.N, local)
				case sc.p.redis != nil && sc.miss && stored != b.N:
					b.Fatalf("%d reads of items not cached added %d items to Redis, want one each", b.N, stored)
				case sc.p.redis != nil && !sc.miss && after.redis == 0:
					b.Fatalf("Redis holds no item after %d reads", b.N)
				}

				ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
				nsPerOp[sc.name+"/"+path] = ns
				if hit, ok := nsPerOp["hit/"+path]; ok && sc.name != "hit" {
					b.ReportMetric(ns/hit, "ratio-to-hit")
				}
				if direct, ok := nsPerOp[sc.name+"/direct"]; ok && path == "edge" {
					b.ReportMetric(ns/direct, "ratio-to-direct")
				}
			})
		}
	}
	if pool.late > 0 {
		b.Logf("miss: %d reads were of items created less than a second before, which the inventory "+
			"reads from Redis without its client-side cache (a longer -benchtime avoids it)", pool.late)
	}
	names := make([]string, len(scenarios))
	for i, sc := range scenarios {
		names[i] = sc.name
	}
	b.Log(summary(nsPerOp, names, paths))
}

// summary formats the ns/op of every scenario and path (keys
// "scenario/path" of nsPerOp), with each one's ratio to the first scenario
// on the same path and, per scenario, the last path's ratio to the first.
func summary(nsPerOp map[string]float64, scenarios, paths []string) string {
	base := scenarios[0]
	var s strings.Builder
	fmt.Fprintf(&s, "GetItem, ns/op (ratio to %s of the same path)\n%-10s", base, "")
	for _, path := range paths {
		fmt.Fprintf(&s, "%22s", path)
	}
	fmt.Fprintf(&s, "%16s\n", paths[len(paths)-1]+"/"+paths[0])
	for _, name := range scenarios {
		fmt.Fprintf(&s, "%-10s", name)
		for _, path := range paths {
			ns, ok := nsPerOp[name+"/"+path]
			if b, okb := nsPerOp[base+"/"+path]; ok && okb {
				fmt.Fprintf(&s, "%13.0f (%5.2fx)", ns, ns/b)
			} else if ok {
				fmt.Fprintf(&s, "%13.0f %8s", ns, "")
			} else {
				fmt.Fprintf(&s, "%22s", "-")
			}
		}
		first, ok1 := nsPerOp[name+"/"+paths[0]]
		last, ok2 := nsPerOp[name+"/"+paths[len(paths)-1]]
		if ok1 && ok2 {
			fmt.Fprintf(&s, "%15.2fx", last/first)
		}
		s.WriteByte('\n')
	}
	return strings.TrimSuffix(s.String(), "\n")
}

// benchPlatform is a platform started for a benchmark, with clients of
// its edge and, directly, of its inventory service.
type benchPlatform struct {
	edge, direct  inventoryv1connect.InventoryServiceClient
	admin         inventoryv1connect.InventoryServiceClient // direct, as a process of the platform
	inventoryAddr string
	redis         rueidis.Client // of the Redis its services cache in, if any
}

// redisClient returns a plain client of the Redis at addr, closed when b
// ends.
func redisClient(b *testing.B, addr string) rueidis.Client {
	b.Helper()
	c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{addr}, DisableCache: true})
	if err != nil {
		b.Fatalf("connect to Redis at %s: %v", addr, err)
	}
	b.Cleanup(c.Close)
	return c
}

// startBenchPlatform starts a platform as `keel up` does, with the test
// environment's configuration and the demo catalogue, changed by opts
// (and by KEEL_<KEY> variables set now), and stops it when b ends.
func startBenchPlatform(b *testing.B, opts platform.Options) *benchPlatform {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	opts.Env, opts.ConfigDir, opts.EdgeAddr, opts.DataDir, opts.Demo = config.EnvTest, "../../../consul/kv", "127.0.0.1:0", b.TempDir(), true
	opts.IdentityKey = strings.Repeat("k", 32)
	p, err := platform.Start(ctx, opts)
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cancel()
		if err := p.Wait(); err != nil {
			b.Errorf("platform stopped with %v", err)
		}
	})
	bp := &benchPlatform{}
	for _, s := range p.Services() {
		if addr, ok := strings.CutPrefix(s, "inventory@"); ok {
			bp.inventoryAddr = addr
		}
	}
	if bp.inventoryAddr == "" {
		b.Fatalf("no inventory among %v", p.Services())
	}
	httpClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.Cleanup(httpClient.CloseIdleConnections)
	bp.edge = inventoryv1connect.NewInventoryServiceClient(httpClient, "http://"+p.EdgeAddr(), connect.WithProtoJSON())
	bp.direct = inventoryv1connect.NewInventoryServiceClient(httpClient, "http://"+bp.inventoryAddr, connect.WithProtoJSON())
	// CreateItem is internal: the items are made as the platform makes them.
	bp.admin = inventoryv1connect.NewInventoryServiceClient(httpClient, "http://"+bp.inventoryAddr, connect.WithProtoJSON(),
		testkit.AsPlatform(b, opts.IdentityKey, "bench"))
	return bp
}

// cacheCounts are the inventory's item cache counters, and what its
// Redis holds.
type cacheCounts struct {
	loads int // reads that went to the database
	local int // reads answered from process memory
	redis int // items in Redis
}

func (p *benchPlatform) cacheCounters(b *testing.B) cacheCounts {
	b.Helper()
	m := testkit.Scrape(b, "http://"+p.inventoryAddr+"/metrics")
	c := cacheCounts{
		loads: int(m[`keel_cache_loads_total{cache="inventory:item"}`]),
		local: int(m[`keel_cache_hits_total{cache="inventory:item",tier="local"}`]),
	}
	if p.redis != nil {
		keys, err := p.redis.Do(b.Context(), p.redis.B().Keys().Pattern("*inventory:item:*").Build()).AsStrSlice()
		if err != nil {
			b.Fatalf("list the items in Redis: %v", err)
		}
		c.redis = len(keys)
	}
	return c
}

// warm reads sku through client until the inventory has it cached: until
// a read is answered from process memory when local is set (Redis's
// client-side cache skips an item for a second after this process
// changed it), else until a read makes no database load.
func (p *benchPlatform) warm(b *testing.B, client inventoryv1connect.InventoryServiceClient, sku string, local bool) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		before := p.cacheCounters(b)
		if _, err := client.GetItem(b.Context(), connect.NewRequest(&inventoryv1.GetItemRequest{Sku: sku})); err != nil {
			b.Fatalf("warm GetItem %s: %v", sku, err)
		}
		after := p.cacheCounters(b)
		if after.loads == before.loads && (!local || after.local > before.local) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s is still not cached after 10s of reads", sku)
		}
		time.Sleep(10 * time.Millisecond) // the poll interval
	}
}

// missPool hands out skus of items that exist in the inventory's
// database and were never read, each once.
type missPool struct {
	p    *benchPlatform
	size int

	skus  []string // seeded, not handed out yet
	made  int      // items seeded so far
	late  int      // skus handed out within a second of their creation
	until time.Time
}

// missPoolBatch is how many items the pool seeds at a time: enough for
// both paths of the miss scenario at -benchtime (reads of an item the
// service has just created take another path, see missPool.next), and at
// least 2,000.
func missPoolBatch() int {
	const fastestMissPerSecond = 2500 // about twice the rate of misses here
	n := 2000
	f := flag.Lookup("test.benchtime")
	if f == nil {
		return n
	}
	v := f.Value.String()
	if x, ok := strings.CutSuffix(v, "x"); ok {
		if k, err := strconv.Atoi(x); err == nil {
			return max(n, 2*k+2)
		}
	}
	if d, err := time.ParseDuration(v); err == nil {
		return max(n, int(2*d.Seconds()*fastestMissPerSecond))
	}
	return n
}

// seed creates the pool's next batch of items, concurrently, through the
// inventory service directly.
func (m *missPool) seed(b *testing.B) {
	b.Helper()
	began := time.Now()
	g, ctx := errgroup.WithContext(b.Context())
	g.SetLimit(8)
	skus := make([]string, m.size)
	for i := range skus {
		skus[i] = fmt.Sprintf("BENCH-MISS-%07d", m.made+i)
		g.Go(func() error {
			_, err := m.p.admin.CreateItem(ctx, connect.NewRequest(&inventoryv1.CreateItemRequest{
				RequestId:    "bench-" + skus[i],
				Sku:          skus[i],
				Name:         "Benchmark item " + strconv.Itoa(m.made+i),
				Price:        &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: 100},
				InitialStock: 10,
			}))
			if err != nil {
				return fmt.Errorf("seed %s: %w", skus[i], err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	m.made += len(skus)
	m.skus = append(m.skus, skus...)
	// Creating an item invalidates it, and for a second the inventory
	// then reads it from Redis without its client-side cache.
	m.until = time.Now().Add(time.Second)
	b.Logf("miss: seeded %d items in %v", len(skus), time.Since(began).Round(time.Millisecond))
}

// next returns the sku of an item never read, seeding more (with the
// timer stopped) when the pool runs out.
func (m *missPool) next(b *testing.B) string {
	if len(m.skus) == 0 {
		b.StopTimer()
		m.seed(b)
		b.StartTimer()
	}
	if time.Now().Before(m.until) {
		m.late++
	}
	sku := m.skus[0]
	m.skus = m.skus[1:]
	return sku
}
