package boot

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keelplatform/keel/internal/config"
)

// ConfigStatusPath is where a process that can mount HTTP handlers serves
// its configuration status as JSON (see [ConfigStatus]).
const ConfigStatusPath = "/debug/config/status"

// AdminProcess is a [Process] that mounts operators' endpoints, as
// server.Server and edge.Edge do: boot mounts [ConfigStatusPath] there.
type AdminProcess interface {
	HandleAdmin(pattern string, h http.Handler)
}

// ConfigStatus is the JSON document served at [ConfigStatusPath]. It tells
// what the configuration watcher did, never the configuration's values:
// a rejection is described by the keys it names only, since its message
// may quote the rejected value.
type ConfigStatus struct {
	// Version is the KV version in effect (0 without a KV source).
	Version uint64 `json:"version"`
	// Applied is when the configuration in effect last changed.
	Applied time.Time `json:"applied"`
	// Rejected counts KV versions rejected since start.
	Rejected uint64 `json:"rejected"`
	// LastRejection describes the last rejected version; null if none was.
	LastRejection *Rejection `json:"last_rejection"`
	// PendingRestart lists the static keys changed in KV that take effect
	// on the next start.
	PendingRestart []string `json:"pending_restart"`
	// SourceError is why the KV source cannot be read; null while it can.
	SourceError *string `json:"source_error"`
}

// Rejection describes a rejected configuration version.
type Rejection struct {
	// At is when the version was rejected.
	At time.Time `json:"at"`
	// Keys are the keys the rejection names, e.g. ["log_level"].
	Keys []string `json:"keys"`
}

// NewConfigStatus describes st as served at [ConfigStatusPath].
func NewConfigStatus(st config.Status) ConfigStatus {
	out := ConfigStatus{
		Version:        st.Version,
		Applied:        st.Applied,
		Rejected:       st.Rejected,
		PendingRestart: st.PendingRestart,
	}
	if out.PendingRestart == nil {
		out.PendingRestart = []string{}
	}
	if st.LastRejection != nil {
		keys := config.ErrorKeys(st.LastRejection)
		if keys == nil {
			keys = []string{}
		}
		out.LastRejection = &Rejection{At: st.LastRejected, Keys: keys}
	}
	if st.SourceErr != nil {
		msg := st.SourceErr.Error()
		out.SourceError = &msg
	}
	return out
}

// configStatusHandler serves the watcher's status as JSON.
func configStatusHandler(status func() config.Status) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(NewConfigStatus(status()))
	})
}

// configCollector exports a watcher's status as metrics, reading it once
// per scrape so that the metrics of one scrape agree.
type configCollector struct {
	status    func() config.Status
	hasSource bool

	version, rejections, lastRejection, pendingRestart, sourceUp *prometheus.Desc
}

func newConfigCollector(status func() config.Status, hasSource bool) *configCollector {
	return &configCollector{
		status:    status,
		hasSource: hasSource,
		version: prometheus.NewDesc("keel_config_version",
			"KV version of the configuration in effect (0 without a KV source).", nil, nil),
		rejections: prometheus.NewDesc("keel_config_rejections_total",
			"KV versions rejected because they did not decode or validate.", nil, nil),
		lastRejection: prometheus.NewDesc("keel_config_last_rejection_timestamp_seconds",
			"Unix time of the last rejected KV version; 0 if none was.", nil, nil),
		pendingRestart: prometheus.NewDesc("keel_config_pending_restart",
			"Static keys changed in KV that take effect on the next start.", nil, nil),
		sourceUp: prometheus.NewDesc("keel_config_source_up",
			"1 while the KV source can be read, 0 while it fails; absent without a KV source.", nil, nil),
	}
}

// Describe implements [prometheus.Collector].
func (c *configCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.version
	ch <- c.rejections
	ch <- c.lastRejection
	ch <- c.pendingRestart
	if c.hasSource {
		ch <- c.sourceUp
	}
}

// Collect implements [prometheus.Collector].
func (c *configCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	var rejectedAt float64
	if !st.LastRejected.IsZero() {
		rejectedAt = float64(st.LastRejected.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(c.version, prometheus.GaugeValue, float64(st.Version))
	ch <- prometheus.MustNewConstMetric(c.rejections, prometheus.CounterValue, float64(st.Rejected))
	ch <- prometheus.MustNewConstMetric(c.lastRejection, prometheus.GaugeValue, rejectedAt)
	ch <- prometheus.MustNewConstMetric(c.pendingRestart, prometheus.GaugeValue, float64(len(st.PendingRestart)))
	if c.hasSource {
		up := 1.0
		if st.SourceErr != nil {
			up = 0
		}
		ch <- prometheus.MustNewConstMetric(c.sourceUp, prometheus.GaugeValue, up)
	}
}
