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
	// rateLimited counts calls refused by a rate limit, by group.
	rateLimited *prometheus.CounterVec
	// canaryCalls counts calls to services with a canary, by side.
	canaryCalls *prometheus.CounterVec
}

// serviceMetrics are one label value's resolved series.
type serviceMetrics struct {
	codes    *server.CodeCounters
	duration prometheus.Observer
	// delayed and aborted count the faults injected into its calls.
	delayed, aborted prometheus.Counter
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
	rateLimited := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keel_edge_rate_limited_total",
		Help: "Calls the edge refused with resource_exhausted because their caller was over a rate limit, by rate limit group.",
	}, []string{"group"})
	faults := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keel_edge_faults_injected_total",
		Help: "Faults the edge injected into calls for chaos drills, by logical service and kind (delay or abort).",
	}, []string{"service", "kind"})
	canaryCalls := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keel_edge_canary_calls_total",
		Help: "Calls to a service with a canary, by logical service and the side chosen (canary or stable).",
	}, []string{"service", "side"})
	for _, c := range []prometheus.Collector{requests, duration, rateLimited, faults, canaryCalls} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	resolve := func(service string) *serviceMetrics {
		return &serviceMetrics{
			codes: server.NewCodeCounters(requests, service), duration: duration.WithLabelValues(service),
			delayed: faults.WithLabelValues(service, "delay"), aborted: faults.WithLabelValues(service, "abort"),
		}
	}
	byLogical := map[string]*serviceMetrics{}
	for _, r := range routes.services {
		if byLogical[r.logical] == nil {
			byLogical[r.logical] = resolve(r.logical)
		}
		r.metrics = byLogical[r.logical]
	}
	return &proxyMetrics{unrouted: resolve(unrouted), rateLimited: rateLimited, canaryCalls: canaryCalls}, nil
}

func (m *serviceMetrics) observe(start time.Time, code connect.Code) {
	m.duration.Observe(time.Since(start).Seconds())
	m.codes.Inc(code)
}
