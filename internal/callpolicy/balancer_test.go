package callpolicy

// Internal tests of the balancer's arithmetic: the scores and moving
// averages it keeps cannot be read from outside but as shares of calls,
// which would take thousands of calls to tell one formula from another.

import (
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
)

// near fails t unless got is want to a relative tolerance of tol.
func near(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if math.IsNaN(got) || math.Abs(got-want) > tol*math.Abs(want) {
		t.Fatalf("%s = %v, want %v", what, got, want)
	}
}

// testBalancer returns a balancer of service "user" over resolver (nil:
// one that knows nothing), under the default settings.
func testBalancer(t *testing.T, resolver discovery.Resolver) *balancer {
	t.Helper()
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	settings := config.DefaultCalls()
	b := newBalancer("user", resolver, &settings, m)
	t.Cleanup(b.close)
	return b
}

// testEndpoint returns an endpoint of b at addr, added at added.
func testEndpoint(t *testing.T, b *balancer, addr string, added time.Time) *endpoint {
	t.Helper()
	e := b.newEndpoint(addr, b.settings.Load(), added)
	t.Cleanup(e.pool.Close)
	return e
}

func setFloat(v interface{ Store(uint64) }, f float64) { v.Store(math.Float64bits(f)) }

func TestCostWeighsLatencyLoadSuccessAndWarmth(t *testing.T) {
	b := testBalancer(t, nil)
	now := time.Unix(1_700_000_000, 0)
	const decay, slowStart = 10 * time.Second, 10 * time.Second
	for _, tc := range []struct {
		name     string
		lag      float64
		idle     time.Duration // since the last sample
		inflight int64
		success  float64
		age      time.Duration
		want     float64
	}{
		{name: "idle instance", lag: 2, success: 1, age: time.Hour, want: 2.001},
		{name: "calls in flight", lag: 2, inflight: 3, success: 1, age: time.Hour, want: 2.001 * 4},
		{name: "failing half the time", lag: 2, success: 0.5, age: time.Hour, want: 2.001 / 0.5},
		{name: "success floor", lag: 2, success: 0.001, age: time.Hour, want: 2.001 / 0.01},
		{name: "latency fades unsampled", lag: 2, idle: decay, success: 1, age: time.Hour, want: 2/math.E + 0.001},
		{name: "latency fades twice as far", lag: 2, idle: 2 * decay, success: 1, age: time.Hour, want: 2/(math.E*math.E) + 0.001},
		{name: "a quarter warm", lag: 2, success: 1, age: slowStart / 4, want: 2.001 * 4},
		{name: "just added", lag: 2, success: 1, age: 0, want: 2.001 / minWarm},
		{name: "everything", lag: 3, idle: decay, inflight: 1, success: 0.25, age: slowStart / 2, want: (3/math.E + 0.001) * 2 / 0.25 / 0.5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := testEndpoint(t, b, "a", now.Add(-tc.age))
			setFloat(&e.lag, tc.lag)
			setFloat(&e.success, tc.success)
			e.inflight.Store(tc.inflight)
			e.lastSample.Store(now.Add(-tc.idle).UnixNano())
			near(t, "cost", e.cost(now, slowStart, decay), tc.want, 1e-12)
			if tc.age < slowStart {
				// Without slow start, no warming in.
				near(t, "cost without slow start", e.cost(now, 0, decay), tc.want*max(minWarm, float64(tc.age)/float64(slowStart)), 1e-12)
			}
		})
	}
}

func TestObserveIsAPeakEWMA(t *testing.T) {
	b := testBalancer(t, nil)
	e := testEndpoint(t, b, "a", time.Now())
	const decay = 100 * time.Hour
	// sinceLast makes the last update d ago, as seen by observe a moment
	// later: on the scale of the decay, the moment does not count.
	sinceLast := func(d time.Duration) { e.last = time.Now().Add(-d).UnixNano() }
	state := func() (lag, success float64) { return e.load(&e.lag), e.load(&e.success) }
	w := 1 / math.E // the weight of the past after one decay

	// The first sample is taken as it is.
	sinceLast(decay)
	before := time.Now()
	e.observe(3, false, decay)
	lag, success := state()
	near(t, "lag after the first sample", lag, 3, 1e-9)
	near(t, "success after a failure", success, w, 1e-4)
	if e.lastSample.Load() < before.UnixNano() || e.last != e.lastSample.Load() {
		t.Fatalf("last sample at %d, want the time of observe (after %d)", e.lastSample.Load(), before.UnixNano())
	}

	// A slower sample raises the latency at once.
	sinceLast(decay)
	e.observe(5, true, decay)
	lag, success2 := state()
	near(t, "lag after a slower sample", lag, 5, 1e-9)
	near(t, "success after a success", success2, success*w+(1-w), 1e-4)

	// A faster one brings it down by its weight.
	sinceLast(decay)
	e.observe(1, true, decay)
	lag, _ = state()
	near(t, "lag after a faster sample", lag, 5*w+1*(1-w), 1e-4)

	// Samples close together weigh at least minSampleWeight.
	setFloat(&e.lag, 2)
	setFloat(&e.success, 1)
	e.last = math.MaxInt64 // no time since the last update
	e.observe(1, false, decay)
	lag, success = state()
	near(t, "lag after a sample at once", lag, 2*(1-minSampleWeight)+minSampleWeight, 1e-12)
	near(t, "success after a failure at once", success, 1-minSampleWeight, 1e-12)

	// After a long silence the past weighs nothing.
	e.last = 0
	e.observe(0.5, true, decay)
	lag, success = state()
	near(t, "lag after a silence", lag, 0.5, 1e-12)
	near(t, "success after a silence", success, 1, 1e-12)
}

func TestRelativeLatencyIsPerMethod(t *testing.T) {
	b := testBalancer(t, nil)
	ms := float64(time.Millisecond)
	near(t, "first attempt", b.relative("m", time.Millisecond), 1, 1e-12)
	// The average moves by methodWeight of the difference.
	near(t, "slower attempt", b.relative("m", 2*time.Millisecond), 2*ms/(ms+ms*methodWeight), 1e-12)
	avg := ms + ms*methodWeight
	next := avg + (float64(time.Microsecond)-avg)*methodWeight // rtt counts as at least 1µs
	near(t, "instant attempt", b.relative("m", 0), float64(time.Microsecond)/next, 1e-12)
	// Another method has its own average.
	near(t, "other method", b.relative("n", 7*time.Millisecond), 1, 1e-12)
	near(t, "other method again", b.relative("n", 7*time.Millisecond), 1, 1e-12)

	// Up to maxMethods methods are averaged; the ones past it are their
	// own measure.
	for i := int(b.nMethod.Load()); i < maxMethods-1; i++ {
		b.relative(string(rune(0x10000+i)), time.Millisecond)
	}
	b.relative("last", time.Millisecond)
	near(t, "the last method averaged", b.relative("last", 2*time.Millisecond), 2*ms/avg, 1e-12)
	b.relative("past", time.Millisecond)
	near(t, "a method past the bound", b.relative("past", 2*time.Millisecond), 1, 1e-12)
	if n := b.nMethod.Load(); n != maxMethods {
		t.Fatalf("%d methods averaged, want %d", n, maxMethods)
	}
}

// listResolver answers with the slice it holds, as resolvers do.
type listResolver struct{ list []discovery.Instance }

func (r *listResolver) Instances(string) ([]discovery.Instance, error) { return r.list, nil }

func TestEndpointsFollowTheResolver(t *testing.T) {
	r := &listResolver{list: []discovery.Instance{{Addr: "a"}, {Addr: "b"}, {Addr: "c"}}}
	b := testBalancer(t, r)
	eps, err := b.endpoints()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range eps {
		if lag := e.load(&e.lag); lag != 0 {
			t.Fatalf("first instances start with latency %v, want 0 (nothing to average)", lag)
		}
	}
	// The same answer: the same endpoints, in the same slice.
	again, _ := b.endpoints()
	if &again[0] != &eps[0] {
		t.Fatal("the same resolver answer built the endpoints anew")
	}
	// A new instance starts from the average of its peers' latencies,
	// those with one.
	setFloat(&eps[0].lag, 1)
	setFloat(&eps[1].lag, 3)
	r.list = []discovery.Instance{{Addr: "a"}, {Addr: "b"}, {Addr: "c"}, {Addr: "d"}}
	more, _ := b.endpoints()
	if len(more) != 4 || more[0] != eps[0] || more[1] != eps[1] || more[2] != eps[2] {
		t.Fatal("instances already known were not kept")
	}
	near(t, "latency of the new instance", more[3].load(&more[3].lag), 2, 1e-12)
	// An answer as long as the last, naming another instance.
	r.list = []discovery.Instance{{Addr: "a"}, {Addr: "b"}, {Addr: "c"}, {Addr: "e"}}
	changed, _ := b.endpoints()
	if changed[3].addr != "e" {
		t.Fatalf("a changed answer of the same length kept %s", changed[3].addr)
	}
	if _, ok := b.byAddr["d"]; ok {
		t.Fatal("the instance that left is still known")
	}
}

func TestBreakerGatesTheEndpoint(t *testing.T) {
	b := testBalancer(t, nil)
	e := testEndpoint(t, b, "a", time.Now())
	state := prometheus.NewGauge(prometheus.GaugeOpts{Name: "state"})
	gauge := func() float64 {
		var m dto.Metric
		if err := state.Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetGauge().GetValue()
	}
	for _, tc := range []struct {
		openFor time.Duration
		allows  bool
	}{
		{openFor: time.Hour, allows: false},
		{openFor: time.Nanosecond, allows: true}, // its delay is over: a probe may go
	} {
		e.breaker.Store(newBreaker(config.Breaker{Failures: 1, Window: 1, OpenFor: tc.openFor, Probes: 1}, state))
		if !e.allows() || gauge() != 0 {
			t.Fatalf("a new breaker: allows %v, state %v; want closed", e.allows(), gauge())
		}
		e.breaker.Load().cb.Open()
		if gauge() != 2 {
			t.Fatalf("state %v with the breaker open, want 2", gauge())
		}
		if got := e.allows(); got != tc.allows {
			t.Fatalf("open for %v: allows %v, want %v", tc.openFor, got, tc.allows)
		}
	}
}

func TestPanicPickGoesRoundTheInstances(t *testing.T) {
	b := testBalancer(t, nil)
	now := time.Now()
	var eps []*endpoint
	for i, ago := range []time.Duration{time.Second, 3 * time.Second, 2 * time.Second} {
		e := testEndpoint(t, b, string(rune('a'+i)), now)
		e.lastPick.Store(now.Add(-ago).UnixNano())
		eps = append(eps, e)
	}
	if got := panicPick(eps); got != eps[1] {
		t.Fatalf("panic pick %s, want b, picked least recently", got.addr)
	}
	if panicPick(nil) != nil {
		t.Fatal("panic pick among no endpoints")
	}
}

func TestChooseNeverTakesATriedOrRefusedInstance(t *testing.T) {
	b := testBalancer(t, nil)
	now := time.Now()
	s := config.DefaultCalls().Balancer
	var eps []*endpoint
	for i := range 3 {
		eps = append(eps, testEndpoint(t, b, string(rune('a'+i)), now.Add(-time.Hour)))
	}
	for range 200 {
		if got := choose(eps, eps[:1], nil, now, s); got == eps[0] {
			t.Fatal("chose the instance already tried")
		}
		if got := choose(eps, eps[:1], eps[1:2], now, s); got != eps[2] {
			t.Fatalf("chose %s with a tried and b refused, want c", got.addr)
		}
		if got := choose(eps, nil, eps[:2], now, s); got != eps[2] {
			t.Fatalf("chose %s with a and b refused, want c", got.addr)
		}
	}
	if got := choose(eps, eps, nil, now, s); got != nil {
		t.Fatalf("chose %s with every instance tried", got.addr)
	}
	// An open breaker keeps its instance out, in the common case too.
	eps[0].breaker.Load().cb.Open()
	for range 200 {
		if got := choose(eps, nil, nil, now, s); got == eps[0] {
			t.Fatal("chose the instance whose breaker is open")
		}
	}
}

func TestDrawTwoDrawsEveryPairOfDistinctEndpoints(t *testing.T) {
	b := testBalancer(t, nil)
	var eps []*endpoint
	for i := range 3 {
		eps = append(eps, testEndpoint(t, b, string(rune('a'+i)), time.Now()))
	}
	for _, n := range []int{2, 3} {
		seen := map[[2]string]bool{}
		for range 500 {
			a, c := drawTwo(eps[:n])
			if a == c {
				t.Fatalf("drew %s twice", a.addr)
			}
			seen[[2]string{a.addr, c.addr}] = true
		}
		if len(seen) != n*(n-1) {
			t.Fatalf("drew %d ordered pairs of %d endpoints, want all %d", len(seen), n, n*(n-1))
		}
	}
}

func TestBetterIsCheaperUnlessOneWentUnpicked(t *testing.T) {
	b := testBalancer(t, nil)
	now := time.Now()
	s := config.Balancer{Decay: 10 * time.Second} // no slow start
	cheap, dear := testEndpoint(t, b, "cheap", now), testEndpoint(t, b, "dear", now)
	setFloat(&cheap.lag, 1)
	setFloat(&dear.lag, 2)
	for _, e := range []*endpoint{cheap, dear} {
		e.lastSample.Store(now.UnixNano())
		e.lastPick.Store(now.Add(-forcePick / 2).UnixNano())
	}
	if better(cheap, dear, now, s) != cheap || better(dear, cheap, now, s) != cheap {
		t.Fatal("the dearer instance won")
	}
	// Unpicked for exactly forcePick: still chosen by cost.
	for _, e := range []*endpoint{cheap, dear} {
		e.lastPick.Store(now.Add(-forcePick).UnixNano())
	}
	if better(cheap, dear, now, s) != cheap || better(dear, cheap, now, s) != cheap {
		t.Fatal("an instance unpicked for exactly forcePick was forced in")
	}
	cheap.lastPick.Store(now.UnixNano())
	// Unpicked for longer than forcePick: picked whatever its cost.
	dear.lastPick.Store(now.Add(-forcePick - time.Millisecond).UnixNano())
	if better(cheap, dear, now, s) != dear || better(dear, cheap, now, s) != dear {
		t.Fatal("the instance unpicked for longer than forcePick was not picked")
	}
	cheap.lastPick.Store(now.Add(-2 * forcePick).UnixNano())
	if better(dear, cheap, now, s) != dear {
		t.Fatal("of two unpicked instances, the first drawn was not picked")
	}
}

func TestRecordFeedsOnlySicknessToTheBreaker(t *testing.T) {
	b := testBalancer(t, nil)
	const decay = time.Hour
	fresh := func() *endpoint {
		e := testEndpoint(t, b, "a", time.Now())
		e.breaker.Store(newBreaker(config.Breaker{Failures: 1, Window: 1, OpenFor: time.Hour, Probes: 1}, e.state))
		e.last = 0 // a first sample weighs fully
		return e
	}
	for _, tc := range []struct {
		v       verdict
		open    bool
		success float64
		sampled bool
	}{
		{v: verdictAnswered, success: 1, sampled: true},
		{v: verdictRefused, success: 0, sampled: true},
		{v: verdictSick, open: true, success: 0, sampled: true},
		{v: verdictCanceled, success: 1},
	} {
		e := fresh()
		b.record(e, "/m", time.Millisecond, tc.v, decay)
		if open := !e.allows(); open != tc.open {
			t.Errorf("verdict %d: breaker open %v, want %v", tc.v, open, tc.open)
		}
		if got := e.load(&e.success); got != tc.success {
			t.Errorf("verdict %d: success %v, want %v", tc.v, got, tc.success)
		}
		if sampled := e.load(&e.lag) != 0; sampled != tc.sampled {
			t.Errorf("verdict %d: latency sampled %v, want %v", tc.v, sampled, tc.sampled)
		}
	}
}

func TestSetSettingsRebuildsOnlyChangedBreakers(t *testing.T) {
	r := &listResolver{list: []discovery.Instance{{Addr: "a"}}}
	b := testBalancer(t, r)
	eps, _ := b.endpoints()
	e := eps[0]
	e.breaker.Load().cb.Open()
	old := e.breaker.Load()

	s := config.DefaultCalls()
	s.Retry.MaxAttempts = 1
	b.setSettings(&s)
	if e.breaker.Load() != old || e.allows() {
		t.Fatal("a breaker was rebuilt, closing it, when only retries changed")
	}
	s.Breaker.OpenFor = time.Minute
	b.setSettings(&s)
	if e.breaker.Load() == old || !e.allows() || e.breaker.Load().settings != s.Breaker {
		t.Fatal("a breaker kept its old settings")
	}
}
