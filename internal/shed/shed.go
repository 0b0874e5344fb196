// Package shed refuses work a process cannot take, at once and with a
// retry hint, instead of letting it queue until it times out.
//
// A [Limiter] is adaptive load shedding for everything a server answers:
// a concurrency limit (failsafe-go's adaptivelimiter) that follows
// latency, so that when the server saturates the calls beyond the limit
// get resource_exhausted in the caller's protocol. Calls marked low
// priority are shed first. A [Bulkhead] bounds one kind of expensive work
// (hashing a password, say) inside a handler.
//
// Both answer a refusal with [connect.CodeResourceExhausted], a
// Retry-After header (seconds) and a google.rpc.RetryInfo detail, which
// Keel's call policy reads as "safe to try elsewhere, later".
package shed

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/failsafe-go/failsafe-go/adaptivelimiter"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/keelplatform/keel/internal/config"
)

// PriorityHeader marks a call's priority. A call with the value "low"
// (background work) is shed before any other; any other value, or none,
// is normal priority. Keel's peer client sends it on the calls a
// low-priority call makes, so the mark follows the work downstream.
const PriorityHeader = "Keel-Priority"

// Low is the value of [PriorityHeader] for low-priority calls.
const Low = "low"

type priorityKey struct{}

// IsLow reports whether ctx belongs to a call marked low priority.
func IsLow(ctx context.Context) bool {
	v, _ := ctx.Value(priorityKey{}).(bool)
	return v
}

// WithLow marks the calls made with the returned context as low priority.
func WithLow(ctx context.Context) context.Context {
	return context.WithValue(ctx, priorityKey{}, true)
}

// Refusal returns the error a shed call gets: resource_exhausted naming
// what is saturated, with retryAfter as the retry hint (a Retry-After
// header in whole seconds, at least 1, and a RetryInfo detail).
func Refusal(what string, retryAfter time.Duration) *connect.Error {
	err := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%s is at capacity; retry after %s", what, retryAfter))
	if detail, derr := connect.NewErrorDetail(&errdetails.RetryInfo{RetryDelay: durationpb.New(retryAfter)}); derr == nil {
		err.AddDetail(detail)
	}
	secs := int64((retryAfter + time.Second - 1) / time.Second)
	err.Meta().Set("Retry-After", strconv.FormatInt(max(secs, 1), 10))
	return err
}

// Limiter sheds the calls a server answers beyond an adaptive concurrency
// limit. Its settings can change while it runs ([Limiter.Set]). It is safe
// for concurrent use. Create it with [NewLimiter].
type Limiter struct {
	current    atomic.Pointer[limit] // nil while shedding is off
	errors     *connect.ErrorWriter
	streams    map[string]bool // procedures that stream, which are not shed
	shedNormal prometheus.Counter
	shedLow    prometheus.Counter
}

// limit is the limiter of one version of the settings.
type limit struct {
	limiter    adaptivelimiter.AdaptiveLimiter[any]
	settings   config.Shedding
	lowShare   float64
	retryAfter time.Duration
	// lowMu makes a low-priority call's check of the share and its taking
	// of a permit one step among low-priority calls.
	lowMu sync.Mutex
}

// acquire takes a permit for a call if the limit has room; for a
// low-priority call only while the calls in flight are below the
// low-priority share of the limit. Low-priority calls check the share and
// take their permit one at a time, so that no two of them both see the
// last room of the share and take it twice.
func (c *limit) acquire(low bool) (adaptivelimiter.Permit, bool) {
	if !low {
		return c.limiter.TryAcquirePermit()
	}
	c.lowMu.Lock()
	defer c.lowMu.Unlock()
	if float64(c.limiter.Inflight()) >= c.lowShare*float64(c.limiter.Limit()) {
		return nil, false
	}
	return c.limiter.TryAcquirePermit()
}

// NewLimiter returns a limiter configured by s, with its metrics
// (keel_server_shed_total{priority}, keel_server_concurrency_limit,
// keel_server_in_flight) registered in reg.
func NewLimiter(s config.Shedding, reg prometheus.Registerer) (*Limiter, error) {
	shed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keel_server_shed_total",
		Help: "Calls refused with resource_exhausted because the server was at its concurrency limit, by priority (normal or low).",
	}, []string{"priority"})
	l := &Limiter{
		errors:     connect.NewErrorWriter(),
		streams:    streamingProcedures(),
		shedNormal: shed.WithLabelValues("normal"),
		shedLow:    shed.WithLabelValues(Low),
	}
	l.Set(s)
	gauge := func(f func(adaptivelimiter.AdaptiveLimiter[any]) int) func() float64 {
		return func() float64 {
			if c := l.current.Load(); c != nil {
				return float64(f(c.limiter))
			}
			return 0
		}
	}
	limitGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keel_server_concurrency_limit",
		Help: "The adaptive concurrency limit of shed calls now in effect (0 while shedding is off).",
	}, gauge(func(a adaptivelimiter.AdaptiveLimiter[any]) int { return a.Limit() }))
	inflight := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keel_server_in_flight",
		Help: "Calls being answered now that count against the concurrency limit.",
	}, gauge(func(a adaptivelimiter.AdaptiveLimiter[any]) int { return a.Inflight() }))
	for _, c := range []prometheus.Collector{shed, limitGauge, inflight} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("shed: register metrics: %w", err)
		}
	}
	return l, nil
}

// Set applies new settings to the calls that arrive from now on: a new
// limit starting from s.InitialLimit, or no shedding when s is disabled.
// Unchanged settings keep the limit learnt so far.
func (l *Limiter) Set(s config.Shedding) {
	if c := l.current.Load(); c != nil && c.settings == s {
		return
	}
	if !s.Enabled {
		l.current.Store(nil)
		return
	}
	l.current.Store(&limit{
		limiter: adaptivelimiter.NewBuilder[any]().
			WithLimits(uint(s.MinLimit), uint(s.MaxLimit), uint(s.InitialLimit)).
			Build(),
		settings:   s,
		lowShare:   s.LowPriorityShare,
		retryAfter: s.RetryAfter,
	})
}

// streamingProcedures lists the procedures of every registered contract
// that stream: a stream lives as long as its peers want, so its duration
// says nothing of saturation, and it is not shed.
func streamingProcedures() map[string]bool {
	streams := map[string]bool{}
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				md := sd.Methods().Get(j)
				if md.IsStreamingClient() || md.IsStreamingServer() {
					streams["/"+string(sd.FullName())+"/"+string(md.Name())] = true
				}
			}
		}
		return true
	})
	return streams
}

// exempt reports whether a path is never shed: gRPC health and
// reflection, and the operators' endpoints.
func exempt(path string) bool {
	return strings.HasPrefix(path, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(path, "/grpc.reflection.") ||
		path == "/metrics" || strings.HasPrefix(path, "/debug/")
}

// Middleware sheds the calls next would answer beyond the limit. Calls
// with [PriorityHeader] "low" are refused once the calls in flight reach
// the low-priority share of the limit, and their context is marked
// ([IsLow]) so the calls they make are low priority too.
func (l *Limiter) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := l.current.Load()
		if c == nil || exempt(r.URL.Path) || l.streams[r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		low := false
		if v := r.Header[PriorityHeader]; len(v) > 0 && strings.EqualFold(v[0], Low) {
			low = true
			r = r.WithContext(WithLow(r.Context()))
		}
		permit, ok := c.acquire(low)
		if !ok {
			if low {
				l.refuse(w, r, l.shedLow, c.retryAfter)
			} else {
				l.refuse(w, r, l.shedNormal, c.retryAfter)
			}
			return
		}
		defer permit.Record()
		next.ServeHTTP(w, r)
	})
}

func (l *Limiter) refuse(w http.ResponseWriter, r *http.Request, counter prometheus.Counter, retryAfter time.Duration) {
	counter.Inc()
	_ = l.errors.Write(w, r, Refusal("server", retryAfter))
}

// Limit is the concurrency limit in effect, 0 while shedding is off.
func (l *Limiter) Limit() int {
	if c := l.current.Load(); c != nil {
		return c.limiter.Limit()
	}
	return 0
}

// Bulkhead bounds how many of one kind of expensive work run at once; the
// excess waits its turn at most a short time, then is refused. Its bounds
// can change while it runs ([Bulkhead.Set]), and the work running then
// counts against the new ones. It is safe for concurrent use. Create it
// with [NewBulkhead].
type Bulkhead struct {
	name       string
	retryAfter time.Duration
	refused    prometheus.Counter

	mu          sync.Mutex
	concurrency int           // how much work may run at once
	maxWait     time.Duration // how long the excess may wait for room
	running     int           // the work running, whatever bounds it started under
	waiting     list.List     // of chan struct{}, closed when its work may run; first come, first served
}

// NewBulkhead returns a bulkhead named name (it names the work in
// refusals and in the keel_bulkhead_refused_total{bulkhead} metric,
// registered in reg unless reg is nil) that runs up to concurrency at
// once and lets the excess wait up to maxWait.
func NewBulkhead(name string, concurrency int, maxWait, retryAfter time.Duration, reg prometheus.Registerer) (*Bulkhead, error) {
	b := &Bulkhead{name: name, retryAfter: retryAfter}
	if err := b.Set(concurrency, maxWait); err != nil {
		return nil, err
	}
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "keel_bulkhead_refused_total",
		Help: "Work refused because its bulkhead was full past the wait allowed, by bulkhead.",
	}, []string{"bulkhead"})
	if reg != nil {
		if err := reg.Register(refused); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, fmt.Errorf("shed: register metrics: %w", err)
			}
			refused = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	b.refused = refused.WithLabelValues(name)
	return b, nil
}

// Set changes the bounds. The work already running counts against the
// new concurrency: after a cut, no more work starts until what runs is
// within it; after a rise, the work waiting starts at once as far as the
// new room goes. The new wait applies to the work that arrives from now
// on.
func (b *Bulkhead) Set(concurrency int, maxWait time.Duration) error {
	if concurrency < 1 {
		return fmt.Errorf("shed: bulkhead %s: concurrency %d must be at least 1", b.name, concurrency)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.concurrency, b.maxWait = concurrency, maxWait
	b.admit()
	return nil
}

// admit starts the work waiting, in turn, while there is room. b.mu is
// held.
func (b *Bulkhead) admit() {
	for b.running < b.concurrency && b.waiting.Len() > 0 {
		close(b.waiting.Remove(b.waiting.Front()).(chan struct{}))
		b.running++
	}
}

// release ends one work's turn and gives its room to the next waiting.
func (b *Bulkhead) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.running--
	b.admit()
}

// Do runs fn once the bulkhead has room, or returns the [Refusal] when
// none frees up within the wait allowed, or the context's error.
func (b *Bulkhead) Do(ctx context.Context, fn func() error) error {
	if err := b.acquire(ctx); err != nil {
		return err
	}
	defer b.release()
	return fn()
}

// acquire waits for room for one work, in turn: at most the wait allowed,
// and no longer than ctx lasts.
func (b *Bulkhead) acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return b.abandoned(err)
	}
	b.mu.Lock()
	if b.running < b.concurrency && b.waiting.Len() == 0 {
		b.running++
		b.mu.Unlock()
		return nil
	}
	maxWait := b.maxWait
	if maxWait <= 0 {
		b.mu.Unlock()
		return b.refuse()
	}
	turn := make(chan struct{})
	place := b.waiting.PushBack(turn)
	b.mu.Unlock()

	timer := time.NewTimer(maxWait)
	defer timer.Stop()
	var ctxErr error
	select {
	case <-turn:
		return nil
	case <-timer.C:
	case <-ctx.Done():
		ctxErr = ctx.Err()
	}
	b.mu.Lock()
	select {
	case <-turn:
		// Its turn came as the wait ended: the room is taken, and given
		// back when the caller has gone.
		b.mu.Unlock()
		if ctxErr == nil {
			return nil
		}
		b.release()
	default:
		b.waiting.Remove(place)
		b.mu.Unlock()
	}
	if ctxErr != nil {
		return b.abandoned(ctxErr)
	}
	return b.refuse()
}

// refuse counts a refusal and returns it.
func (b *Bulkhead) refuse() error {
	b.refused.Inc()
	return Refusal(b.name, b.retryAfter)
}

// abandoned is the error of work whose caller went away (err, the
// context's) before it had room.
func (b *Bulkhead) abandoned(err error) error {
	code := connect.CodeCanceled
	if errors.Is(err, context.DeadlineExceeded) {
		code = connect.CodeDeadlineExceeded
	}
	return connect.NewError(code, fmt.Errorf("waiting for %s: %w", b.name, err))
}
