package callpolicy

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/failsafe-go/failsafe-go/circuitbreaker"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/h1pool"
)

// forcePick is how long an instance may go unpicked before it is picked
// regardless of its score, so that its averages are refreshed (a slow
// instance that recovered is noticed).
const forcePick = time.Second

// minWarm is the share of its full weight a new instance starts with.
const minWarm = 0.1

// ErrAllOpen is wrapped by the error of a call whose upstream has no
// instance to send it to although discovery named some. With every
// breaker open a call is still sent to one of them (see
// [balancer.pick]), so this is rare.
var ErrAllOpen = errors.New("every instance is failing (circuit breakers open)")

// errNoOther is wrapped when a retry finds no instance left that the call
// has not tried.
var errNoOther = errors.New("no other instance to try")

// endpoint is one instance of an upstream as the balancer sees it.
type endpoint struct {
	addr    string
	service string
	pool    *h1pool.Pool
	added   time.Time

	inflight atomic.Int64
	lastPick atomic.Int64  // unix nanoseconds
	lag      atomic.Uint64 // float64 bits: moving average of latency relative to its method's, 1 = as usual
	success  atomic.Uint64 // float64 bits: moving average of success, 0 to 1

	mu         sync.Mutex   // serializes updates of lag and success
	last       int64        // unix nanoseconds of the last update
	lastSample atomic.Int64 // the same, for readers without mu

	breaker atomic.Pointer[breaker]
	// meta is the discovery metadata of the instance at addr, as the
	// resolver last described it.
	meta atomic.Pointer[map[string]string]

	picks prometheus.Counter
	state prometheus.Gauge
}

// breaker is an endpoint's circuit breaker and the settings it was built
// from.
type breaker struct {
	cb       circuitbreaker.CircuitBreaker[any]
	settings config.Breaker
}

func (e *endpoint) load(v *atomic.Uint64) float64 { return math.Float64frombits(v.Load()) }

// cost is the endpoint's score for power of two choices: lower is better.
// Its latency average fades while it is not sampled (Finagle's peak
// EWMA does the same), so an instance left aside after one slow answer
// is tried again in time.
func (e *endpoint) cost(now time.Time, slowStart, decay time.Duration) float64 {
	lag := e.load(&e.lag)
	if idle := now.UnixNano() - e.lastSample.Load(); idle > 0 {
		lag *= math.Exp(-float64(idle) / float64(decay))
	}
	c := (lag + 0.001) * float64(e.inflight.Load()+1) / max(e.load(&e.success), 0.01)
	if age := now.Sub(e.added); slowStart > 0 && age < slowStart {
		c /= max(minWarm, float64(age)/float64(slowStart))
	}
	return c
}

// minSampleWeight is the least weight a new sample gets in the moving
// averages: with calls microseconds apart, a purely time-based weight
// (go-zero's) barely moves, and the first sample would stand for seconds.
const minSampleWeight = 0.1

// observe folds an attempt's latency, relative to its method's (rel),
// and outcome into the endpoint's moving averages, weighting older values
// down by decay. Latency is a peak EWMA (Finagle's, Linkerd's): an
// attempt slower than the average raises it at once, faster ones bring it
// down gradually, so an instance that turns slow stops taking calls
// before it has taken many.
func (e *endpoint) observe(rel float64, ok bool, decay time.Duration) {
	s := 0.0
	if ok {
		s = 1
	}
	now := time.Now().UnixNano()
	e.mu.Lock()
	defer e.mu.Unlock()
	w := min(math.Exp(-float64(max(now-e.last, 0))/float64(decay)), 1-minSampleWeight)
	e.last = now
	lag, success := e.load(&e.lag), e.load(&e.success)
	if lag == 0 || rel > lag {
		lag = rel
	} else {
		lag = lag*w + rel*(1-w)
	}
	e.lag.Store(math.Float64bits(lag))
	e.success.Store(math.Float64bits(success*w + s*(1-w)))
	e.lastSample.Store(now)
}

// allows reports whether the endpoint's breaker may let an attempt
// through now, without taking a permit.
func (e *endpoint) allows() bool {
	b := e.breaker.Load()
	switch b.cb.State() {
	case circuitbreaker.ClosedState, circuitbreaker.HalfOpenState:
		return true
	default:
		return b.cb.RemainingDelay() == 0
	}
}

// balancer spreads the calls of one upstream service over its instances.
// It is safe for concurrent use.
type balancer struct {
	service  string
	resolver discovery.Resolver
	metrics  *metrics

	settings atomic.Pointer[config.Calls]
	snap     atomic.Pointer[snapshot]

	// panics counts calls sent while every breaker was open.
	panics prometheus.Counter

	mu     sync.Mutex
	byAddr map[string]*endpoint

	// methods holds, by method, the moving average of its attempts'
	// latency across the upstream's instances (*methodLag): what an
	// instance's latency is measured against, so that a method slow by
	// nature (hashing a password) does not make the instance that served
	// it look slow for the cheap calls that follow.
	methods sync.Map
	nMethod atomic.Int64
}

// maxMethods bounds the methods an upstream keeps averages of; the
// methods past it are measured against themselves (relative latency 1).
const maxMethods = 4096

// methodWeight is the weight of one attempt in its method's average.
const methodWeight = 0.05

// methodLag is a method's moving average latency, float64 bits of ns.
type methodLag struct{ v atomic.Uint64 }

// relative returns rtt relative to the moving average of method's
// attempts, and folds rtt into that average.
func (b *balancer) relative(method string, rtt time.Duration) float64 {
	m, ok := b.methods.Load(method)
	if !ok {
		if b.nMethod.Load() >= maxMethods {
			return 1
		}
		var loaded bool
		if m, loaded = b.methods.LoadOrStore(method, &methodLag{}); !loaded {
			b.nMethod.Add(1)
		}
	}
	ml := m.(*methodLag)
	x := float64(max(rtt, time.Microsecond))
	for {
		old := ml.v.Load()
		avg := math.Float64frombits(old)
		next := x
		if avg > 0 {
			next = avg + (x-avg)*methodWeight
		}
		if ml.v.CompareAndSwap(old, math.Float64bits(next)) {
			return x / next
		}
	}
}

// snapshot is the endpoints of one resolver answer.
type snapshot struct {
	src       []discovery.Instance
	endpoints []*endpoint
}

func newBalancer(service string, resolver discovery.Resolver, settings *config.Calls, m *metrics) *balancer {
	b := &balancer{service: service, resolver: resolver, metrics: m, byAddr: map[string]*endpoint{}, panics: m.panics.WithLabelValues(service)}
	b.settings.Store(settings)
	return b
}

// endpoints returns the endpoints of the instances the resolver knows
// now, reusing them (and their averages, breakers and connections) across
// answers.
func (b *balancer) endpoints() ([]*endpoint, error) {
	instances, err := b.resolver.Instances(b.service)
	if err != nil {
		return nil, err
	}
	if s := b.snap.Load(); s != nil && sameList(s.src, instances) {
		return s.endpoints, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.snap.Load(); s != nil && sameList(s.src, instances) {
		return s.endpoints, nil
	}
	settings := b.settings.Load()
	now := time.Now()
	var lagSum float64
	var lagN int
	for _, e := range b.byAddr {
		if lag := e.load(&e.lag); lag > 0 {
			lagSum += lag
			lagN++
		}
	}
	eps := make([]*endpoint, 0, len(instances))
	seen := make(map[string]bool, len(instances))
	for _, inst := range instances {
		if seen[inst.Addr] {
			continue
		}
		seen[inst.Addr] = true
		e, ok := b.byAddr[inst.Addr]
		if !ok {
			e = b.newEndpoint(inst.Addr, settings, now)
			if lagN > 0 {
				// Start from the others' average, not from zero, so a new
				// instance does not look fastest and get flooded.
				e.lag.Store(math.Float64bits(lagSum / float64(lagN)))
			}
			b.byAddr[inst.Addr] = e
		}
		meta := inst.Meta
		e.meta.Store(&meta)
		eps = append(eps, e)
	}
	for addr, e := range b.byAddr {
		if !seen[addr] {
			delete(b.byAddr, addr)
			e.pool.Close()
			b.metrics.forget(b.service, addr)
		}
	}
	b.snap.Store(&snapshot{src: instances, endpoints: eps})
	return eps, nil
}

// sameList reports whether two resolver answers are the same slice, as
// resolvers return the one they hold until it changes.
func sameList(a, b []discovery.Instance) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

func (b *balancer) newEndpoint(addr string, s *config.Calls, now time.Time) *endpoint {
	e := &endpoint{
		addr:    addr,
		service: b.service,
		pool: h1pool.New(addr, h1pool.Options{
			MaxIdle:               s.Pool.MaxIdle,
			IdleTimeout:           s.Pool.IdleTimeout,
			ResponseHeaderTimeout: s.Pool.ResponseHeaderTimeout,
		}),
		added: now,
		last:  now.UnixNano(),
		picks: b.metrics.picks.WithLabelValues(b.service, addr),
		state: b.metrics.breakerState.WithLabelValues(b.service, addr),
	}
	e.success.Store(math.Float64bits(1))
	e.lastPick.Store(now.UnixNano())
	e.lastSample.Store(now.UnixNano())
	e.breaker.Store(newBreaker(s.Breaker, e.state))
	return e
}

// newBreaker builds a circuit breaker from s that reports its state to
// gauge (0 closed, 1 half-open, 2 open).
func newBreaker(s config.Breaker, gauge prometheus.Gauge) *breaker {
	gauge.Set(0)
	cb := circuitbreaker.NewBuilder[any]().
		WithFailureThresholdRatio(uint(s.Failures), uint(s.Window)).
		WithDelay(s.OpenFor).
		WithSuccessThreshold(uint(s.Probes)).
		OnStateChanged(func(ev circuitbreaker.StateChangedEvent) {
			switch ev.NewState {
			case circuitbreaker.ClosedState:
				gauge.Set(0)
			case circuitbreaker.HalfOpenState:
				gauge.Set(1)
			case circuitbreaker.OpenState:
				gauge.Set(2)
			}
		}).
		Build()
	return &breaker{cb: cb, settings: s}
}

// setSettings applies new settings: pools keep their connections, and
// breakers are rebuilt only when their own settings changed.
func (b *balancer) setSettings(s *config.Calls) {
	b.settings.Store(s)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.byAddr {
		if e.breaker.Load().settings != s.Breaker {
			e.breaker.Store(newBreaker(s.Breaker, e.state))
		}
	}
}

// pick chooses the endpoint of the next attempt among those not in
// tried, by power of two choices, and takes a permit from its breaker.
// With a preference, the endpoints it prefers are chosen from first, and
// the others only when none of those can take the attempt.
func (b *balancer) pick(tried []*endpoint, pref *Preference) (*endpoint, error) {
	eps, err := b.endpoints()
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", b.service, err)
	}
	settings := b.settings.Load()
	now := time.Now()
	var refused []*endpoint // breakers that refused a permit in this pick
	if pref != nil {
		var first, second [16]*endpoint
		preferred, others := first[:0], second[:0]
		for _, e := range eps {
			if pref.matches(e) {
				preferred = append(preferred, e)
			} else {
				others = append(others, e)
			}
		}
		if e := pickAmong(preferred, tried, &refused, now, settings.Balancer); e != nil {
			return e, nil
		}
		eps = others
	}
	if e := pickAmong(eps, tried, &refused, now, settings.Balancer); e != nil {
		return e, nil
	}
	if len(tried) > 0 {
		return nil, fmt.Errorf("%s: %w", b.service, errNoOther)
	}
	// Every instance's breaker is open. Refusing every call would turn
	// "all instances look bad" into an outage without a try: panic, as
	// Envoy does below its healthy-panic threshold, and send the call to
	// one of them anyway, the one whose breaker opened longest ago.
	if e := panicPick(eps); e != nil {
		e.lastPick.Store(now.UnixNano())
		e.picks.Inc()
		b.panics.Inc()
		return e, nil
	}
	return nil, fmt.Errorf("%s: %w", b.service, ErrAllOpen)
}

// panicPick returns the endpoint a call goes to when every breaker is
// open: the one picked least recently, so that in panic the calls go
// round all of them; nil when eps is empty.
func panicPick(eps []*endpoint) *endpoint {
	var pick *endpoint
	for _, e := range eps {
		if pick == nil || e.lastPick.Load() < pick.lastPick.Load() {
			pick = e
		}
	}
	return pick
}

// pickAmong chooses among eps as [balancer.pick] does, adding the
// endpoints whose breaker refused a permit to refused; nil when none
// takes the attempt.
func pickAmong(eps, tried []*endpoint, refused *[]*endpoint, now time.Time, s config.Balancer) *endpoint {
	for {
		e := choose(eps, tried, *refused, now, s)
		if e == nil {
			return nil
		}
		if e.breaker.Load().cb.TryAcquirePermit() {
			e.lastPick.Store(now.UnixNano())
			e.picks.Inc()
			return e
		}
		*refused = append(*refused, e)
	}
}

// hasUntried reports whether an instance the call has not tried may take
// an attempt now.
func (b *balancer) hasUntried(tried []*endpoint) bool {
	s := b.snap.Load()
	if s == nil {
		return false
	}
	for _, e := range s.endpoints {
		if eligible(e, tried, nil) {
			return true
		}
	}
	return false
}

// eligible reports whether e may be chosen: not tried or refused in this
// call, and its breaker lets attempts through.
func eligible(e *endpoint, tried, refused []*endpoint) bool {
	for _, t := range tried {
		if t == e {
			return false
		}
	}
	for _, r := range refused {
		if r == e {
			return false
		}
	}
	return e.allows()
}

// choose runs power of two choices over the eligible endpoints: two drawn
// at random, the cheaper wins, unless one has gone unpicked for
// [forcePick]. It returns nil when none is eligible.
func choose(eps, tried, refused []*endpoint, now time.Time, s config.Balancer) *endpoint {
	if len(eps) > 2 && len(tried)+len(refused) == 0 {
		// The common case: draw from all, and keep the draw if both may
		// take calls.
		a, c := drawTwo(eps)
		if a.allows() && c.allows() {
			return better(a, c, now, s)
		}
	}
	var buf [8]*endpoint
	cands := buf[:0]
	for _, e := range eps {
		if eligible(e, tried, refused) {
			cands = append(cands, e)
		}
	}
	switch len(cands) {
	case 0:
		return nil
	case 1:
		return cands[0]
	}
	a, c := drawTwo(cands)
	return better(a, c, now, s)
}

// drawTwo draws two distinct endpoints of eps (at least two) at random.
func drawTwo(eps []*endpoint) (*endpoint, *endpoint) {
	i := rand.IntN(len(eps))
	j := rand.IntN(len(eps) - 1)
	if j >= i {
		j++
	}
	return eps[i], eps[j]
}

// better returns whichever of a and c should take the next attempt.
func better(a, c *endpoint, now time.Time, s config.Balancer) *endpoint {
	stale := now.Add(-forcePick).UnixNano()
	if a.lastPick.Load() < stale {
		return a
	}
	if c.lastPick.Load() < stale {
		return c
	}
	if c.cost(now, s.SlowStart, s.Decay) < a.cost(now, s.SlowStart, s.Decay) {
		return c
	}
	return a
}

// verdict is what an attempt says of the instance that took it.
type verdict uint8

const (
	// verdictAnswered: the instance answered, with success or with an error of
	// its own (a failing dependency's unavailable, say): it is alive.
	verdictAnswered verdict = iota
	// verdictRefused: the instance answered but declined the call
	// (unavailable or resource_exhausted): it lowers the instance's
	// success average only.
	verdictRefused
	// verdictSick: the instance could not be reached, reset the call or gave
	// no answer before the attempt's deadline: evidence against the
	// instance itself, for its breaker.
	verdictSick
	// verdictCanceled: the caller went away or another hedge won; it says
	// nothing of the instance.
	verdictCanceled
)

// record feeds an attempt of method to e, one of its endpoints. Only
// attempts that say the instance itself is sick count against its
// breaker: an instance that answers, even with unavailable because one
// of its own dependencies is down, is alive, and taking it out would
// fail its other methods too. Refused attempts lower its success
// average, so the balancer prefers its peers. Canceled attempts release
// the breaker's permit as a success and leave the averages alone.
func (b *balancer) record(e *endpoint, method string, rtt time.Duration, v verdict, decay time.Duration) {
	cb := e.breaker.Load().cb
	if v == verdictSick {
		cb.RecordFailure()
	} else {
		cb.RecordSuccess()
	}
	if v != verdictCanceled {
		e.observe(b.relative(method, rtt), v == verdictAnswered, decay)
	}
}

// close releases the balancer's connections.
func (b *balancer) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.byAddr {
		e.pool.Close()
	}
}
