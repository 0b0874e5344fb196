package callpolicy

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the call policy's Prometheus series.
type metrics struct {
	picks        *prometheus.CounterVec
	breakerState *prometheus.GaugeVec
	retries      *prometheus.CounterVec
	exhausted    *prometheus.CounterVec
	hedges       *prometheus.CounterVec
	throttled    *prometheus.CounterVec
	panics       *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		picks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keel_client_picks_total",
			Help: "Attempts the balancer sent to each upstream instance, by logical service and instance address.",
		}, []string{"service", "instance"}),
		breakerState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "keel_client_breaker_state",
			Help: "Circuit breaker of each upstream instance: 0 closed (taking calls), 1 half-open (probing), 2 open (out of rotation).",
		}, []string{"service", "instance"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keel_client_retries_total",
			Help: "Attempts sent again after a failed one, by logical service.",
		}, []string{"service"}),
		exhausted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keel_client_retry_budget_exhausted_total",
			Help: "Retries and hedges not sent because the upstream's budget was spent, by logical service.",
		}, []string{"service"}),
		hedges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keel_client_hedges_total",
			Help: "Hedged attempts sent because the first was slow, by logical service.",
		}, []string{"service"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keel_client_throttled_total",
			Help: "Calls rejected locally because their method at the upstream was failing (client-side throttling), by logical service.",
		}, []string{"service"}),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keel_client_panic_picks_total",
			Help: "Attempts sent to an instance although every instance's breaker was open (panic routing), by logical service.",
		}, []string{"service"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.picks, m.breakerState, m.retries, m.exhausted, m.hedges, m.throttled, m.panics} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("callpolicy: metrics already registered: one transport per registry: %w", err)
			}
			return nil, fmt.Errorf("callpolicy: register metrics: %w", err)
		}
	}
	return m, nil
}

// forget drops the series of an instance that left discovery.
func (m *metrics) forget(service, addr string) {
	m.picks.DeleteLabelValues(service, addr)
	m.breakerState.DeleteLabelValues(service, addr)
}
