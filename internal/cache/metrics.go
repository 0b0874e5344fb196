package cache

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are one cache's Prometheus series, each with the constant
// label cache=<name>.
type metrics struct {
	reg          prometheus.Registerer
	collectors   []prometheus.Collector
	hitsLocal    prometheus.Counter
	hitsRedis    prometheus.Counter
	negativeHits prometheus.Counter
	misses       prometheus.Counter
	loads        prometheus.Counter
	loadErrors   prometheus.Counter
	lockWaits    prometheus.Counter
	rejections   prometheus.Counter
	redisErrors  prometheus.Counter
}

// newMetrics registers the series of the cache named name in reg (none
// when reg is nil); state reports the breaker: 0 closed, 1 half-open,
// 2 open.
func newMetrics(reg prometheus.Registerer, name string, state func() float64) (*metrics, error) {
	labels := prometheus.Labels{"cache": name}
	counter := func(metric, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: metric, Help: help, ConstLabels: labels})
	}
	hits := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name:        "keel_cache_hits_total",
		Help:        "Reads answered with a value from the cache, by tier: local (process memory) or redis.",
		ConstLabels: labels,
	}, []string{"tier"})
	m := &metrics{
		reg:          reg,
		hitsLocal:    hits.WithLabelValues("local"),
		hitsRedis:    hits.WithLabelValues("redis"),
		negativeHits: counter("keel_cache_negative_hits_total", "Reads answered not-found from a cached negative entry."),
		misses:       counter("keel_cache_misses_total", "Reads that found no entry and went to the loader or waited for another process's load."),
		loads:        counter("keel_cache_loads_total", "Calls of the loader (the database)."),
		loadErrors:   counter("keel_cache_load_errors_total", "Loader calls that failed with an error other than not-found; their result is not cached."),
		lockWaits:    counter("keel_cache_lock_waits_total", "Misses that waited for another process to load the key instead of loading it."),
		rejections:   counter("keel_cache_bloom_rejections_total", "Reads answered not-found because the Bloom filter says the id cannot exist."),
		redisErrors:  counter("keel_cache_redis_errors_total", "Redis calls that failed or timed out; the read went on without Redis."),
	}
	breaker := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "keel_cache_breaker_state",
		Help:        "Circuit breaker in front of Redis: 0 closed (using Redis), 1 half-open (probing), 2 open (reads go to the loader); 0 without Redis.",
		ConstLabels: labels,
	}, state)
	m.collectors = []prometheus.Collector{hits, m.negativeHits, m.misses, m.loads, m.loadErrors, m.lockWaits, m.rejections, m.redisErrors, breaker}
	if reg == nil {
		return m, nil
	}
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors[:i] {
				reg.Unregister(done)
			}
			if are := (prometheus.AlreadyRegisteredError{}); errors.As(err, &are) {
				return nil, fmt.Errorf("cache %s: metrics already registered: one cache of a name per registry: %w", name, err)
			}
			return nil, fmt.Errorf("cache %s: register metrics: %w", name, err)
		}
	}
	return m, nil
}

// unregister removes the series, so a cache of the same name can be
// created again in the same registry.
func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}
