package edge

import (
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keelplatform/keel/internal/server"
)

// unrouted is the service label of calls the edge routes nowhere (a bad
// path, an unknown service). Service names from the path are never used
// as labels: callers must not be able to grow the label set.
const unrouted = "unrouted"

// proxyMetrics are the edge's per-service call metrics. The set of
// services is fixed at construction, so lookups need no lock.
type proxyMetrics struct {
	unrouted *serviceMetrics
}

// serviceMetrics are one label value's resolved series.
type serviceMetrics struct {
	codes    *server.CodeCounters
	duration prometheus.Observer
}

// newProxyMetrics registers the edge's metrics in reg and resolves the
// series of every route.
func newProxyMetrics(reg prometheus.Registerer, routes *routeTable) (*proxyMetrics, error) {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keel_edge_requests_total",
		Help: `Calls the edge proxied or answered itself, by logical service ("unrouted" when none) and Connect code as the upstream returned it.`,
	}, []string{"service", "code"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "keel_edge_duration_seconds",
		Help:    "Time from a call's arrival at the edge to the end of its response, by logical service.",
		Buckets: server.LatencyBuckets,
	}, []string{"service"})
	for _, c := range []prometheus.Collector{requests, duration} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	resolve := func(service string) *serviceMetrics {
		return &serviceMetrics{codes: server.NewCodeCounters(requests, service), duration: duration.WithLabelValues(service)}
	}
	byLogical := map[string]*serviceMetrics{}
	for _, r := range routes.services {
		if byLogical[r.logical] == nil {
			byLogical[r.logical] = resolve(r.logical)
		}
		r.metrics = byLogical[r.logical]
	}
	return &proxyMetrics{unrouted: resolve(unrouted)}, nil
}

func (m *serviceMetrics) observe(start time.Time, code connect.Code) {
	m.duration.Observe(time.Since(start).Seconds())
	m.codes.Inc(code)
}
