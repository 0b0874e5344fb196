package server

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// LatencyBuckets are the histogram buckets, in seconds, of Keel's latency
// metrics: from 100µs (a cache hit on loopback) to 10s (a call at its
// deadline), about three per decade.
var LatencyBuckets = []float64{
	0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005,
	0.01, 0.025, 0.05,
	0.1, 0.25, 0.5,
	1, 2.5, 5, 10,
}

// CodeLabel returns the value of a "code" label for code: "ok" for 0 and
// the Connect name ("invalid_argument", ...) otherwise. It never
// allocates, and maps codes outside the Connect range to "unknown" so that
// a label set stays bounded.
func CodeLabel(code connect.Code) string {
	if code == 0 {
		return "ok"
	}
	if code > connect.CodeUnauthenticated {
		return connect.CodeUnknown.String()
	}
	return code.String()
}

// CodeCounters counts calls by code for one fixed set of other label
// values. It resolves each code's counter once and keeps it, so counting
// costs an atomic load and add, with no label hashing or allocation. It is
// safe for concurrent use.
type CodeCounters struct {
	vec    *prometheus.CounterVec
	labels []string // the other label values, then a slot for the code
	byCode [connect.CodeUnauthenticated + 1]atomic.Pointer[prometheus.Counter]
}

// NewCodeCounters returns counters of vec, whose last label is the code,
// with its other labels set to labels. A code's series appears on first
// use.
func NewCodeCounters(vec *prometheus.CounterVec, labels ...string) *CodeCounters {
	return &CodeCounters{vec: vec, labels: append(append([]string(nil), labels...), "")}
}

// Inc counts one call that ended with code (0 for success).
func (c *CodeCounters) Inc(code connect.Code) {
	if code > connect.CodeUnauthenticated {
		code = connect.CodeUnknown
	}
	if p := c.byCode[code].Load(); p != nil {
		(*p).Inc()
		return
	}
	lvs := append([]string(nil), c.labels...)
	lvs[len(lvs)-1] = CodeLabel(code)
	counter := c.vec.WithLabelValues(lvs...)
	// Two first calls racing get the same counter from the vector.
	c.byCode[code].Store(&counter)
	counter.Inc()
}

// metrics are a server's Prometheus metrics: its own registry, with the Go
// runtime and process collectors, RPC counts and latencies by procedure,
// and whether it drains.
type metrics struct {
	registry *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	draining prometheus.Gauge

	// procedures holds a *procedureMetrics per procedure called so far.
	// Procedures come from mounted handlers only, so it stays small.
	procedures sync.Map
}

// procedureMetrics are one procedure's resolved series.
type procedureMetrics struct {
	codes    *CodeCounters
	duration prometheus.Observer
}

// newMetrics registers a server's metrics in registry, or in a new one
// when it is nil.
func newMetrics(registry *prometheus.Registry) *metrics {
	if registry == nil {
		registry = prometheus.NewRegistry()
	}
	m := &metrics{
		registry: registry,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keel_rpc_server_requests_total",
			Help: "RPCs handled, by procedure and Connect code (ok on success).",
		}, []string{"procedure", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keel_rpc_server_duration_seconds",
			Help:    "Time to handle an RPC, to the end of the stream for streaming ones, by procedure.",
			Buckets: LatencyBuckets,
		}, []string{"procedure"}),
		draining: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keel_server_draining",
			Help: "1 while the server drains before it stops, 0 otherwise.",
		}),
	}
	m.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.requests, m.duration, m.draining,
	)
	return m
}

// handler serves the registry in the Prometheus text or protobuf format,
// as the scraper asks.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.registry, // counts its own errors
	})
}

func (m *metrics) procedure(name string) *procedureMetrics {
	if pm, ok := m.procedures.Load(name); ok {
		return pm.(*procedureMetrics)
	}
	pm, _ := m.procedures.LoadOrStore(name, &procedureMetrics{
		codes:    NewCodeCounters(m.requests, name),
		duration: m.duration.WithLabelValues(name),
	})
	return pm.(*procedureMetrics)
}

func (pm *procedureMetrics) observe(start time.Time, err error) {
	pm.duration.Observe(time.Since(start).Seconds())
	if err == nil {
		pm.codes.Inc(0)
		return
	}
	pm.codes.Inc(connect.CodeOf(err))
}

// WrapUnary implements [connect.Interceptor].
func (m *metrics) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		start := time.Now()
		res, err := next(ctx, req)
		m.procedure(req.Spec().Procedure).observe(start, err)
		return res, err
	}
}

// WrapStreamingClient implements [connect.Interceptor].
func (m *metrics) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements [connect.Interceptor].
func (m *metrics) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		start := time.Now()
		err := next(ctx, conn)
		m.procedure(conn.Spec().Procedure).observe(start, err)
		return err
	}
}
