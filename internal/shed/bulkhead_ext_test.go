package shed_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keelplatform/keel/internal/shed"
)

// hashes is work run in a bulkhead, as the user service runs argon2
// hashes, each until the test lets it end; it counts the work running
// and the most at once.
type hashes struct {
	b             *shed.Bulkhead
	running, peak atomic.Int64
}

// start runs one work in the bulkhead in the background. It returns a
// function that lets the work end, and the channel Do's answer comes on.
func (h *hashes) start(ctx context.Context) (end func(), done <-chan error) {
	end, _, done = h.startSeen(ctx)
	return end, done
}

// startSeen is start that also returns a channel closed once the work
// runs.
func (h *hashes) startSeen(ctx context.Context) (end func(), runs <-chan struct{}, done <-chan error) {
	release := make(chan struct{})
	running := make(chan struct{})
	out := make(chan error, 1)
	go func() {
		out <- h.b.Do(ctx, func() error {
			raise(&h.peak, h.running.Add(1))
			defer h.running.Add(-1)
			close(running)
			<-release
			return nil
		})
	}()
	return func() { close(release) }, running, out
}

// awaitRun waits until the work whose channel is ch runs, or fails t after
// 15s.
func awaitRun(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(15 * time.Second):
		t.Fatalf("timed out waiting until %s runs", what)
	}
}

// answer waits for Do's answer on ch, or fails t after 15s.
func answer(t *testing.T, what string, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(15 * time.Second):
		t.Fatalf("timed out waiting for the answer to %s", what)
		return nil
	}
}

// queued starts a work that finds no room, and returns once it waits for
// room: once the bulkhead waits on its context (a work that runs never
// does).
func (h *hashes) queued(t *testing.T) (end func(), runs <-chan struct{}, done <-chan error, cancel func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watchedContext{Context: ctx, waited: make(chan struct{})}
	end, runs, done = h.startSeen(w)
	select {
	case <-w.waited:
	case err := <-done:
		t.Fatalf("a work that should wait for room: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("timed out waiting until a work waits for room")
	}
	return end, runs, done, cancel
}

// watchedContext tells, by closing waited, when something first waits on
// it.
type watchedContext struct {
	context.Context
	once   sync.Once
	waited chan struct{}
}

func (c *watchedContext) Done() <-chan struct{} {
	c.once.Do(func() { close(c.waited) })
	return c.Context.Done()
}

// run runs one work that ends at once, and returns Do's answer.
func (h *hashes) run(ctx context.Context) error {
	return h.b.Do(ctx, func() error {
		raise(&h.peak, h.running.Add(1))
		h.running.Add(-1)
		return nil
	})
}

// hold starts n works that run until the test ends them, and waits
// until they run.
func (h *hashes) hold(t *testing.T, n int) (end []func(), done []<-chan error) {
	t.Helper()
	for range n {
		e, d := h.start(context.Background())
		end, done = append(end, e), append(done, d)
	}
	waitFor(t, "the works run", func() bool { return h.running.Load() == int64(n) })
	return end, done
}

func newHashes(t *testing.T, concurrency int, maxWait time.Duration) *hashes {
	t.Helper()
	b, err := shed.NewBulkhead("password hashing", concurrency, maxWait, 2*time.Second, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	return &hashes{b: b}
}

// wantRefused fails t unless err is the bulkhead's refusal, with its
// retry hint.
func wantRefused(t *testing.T, what string, err error) {
	t.Helper()
	var cerr *connect.Error
	if !errors.As(err, &cerr) || cerr.Code() != connect.CodeResourceExhausted {
		t.Fatalf("%s: %v, want resource_exhausted", what, err)
	}
	if !strings.Contains(cerr.Message(), "password hashing is at capacity") || cerr.Meta().Get("Retry-After") != "2" || !hasRetryInfo(cerr) {
		t.Fatalf("%s: refusal %q, meta %v: want it to name the work, with a retry hint", what, cerr.Message(), cerr.Meta())
	}
}

// TestBulkheadCountsRunningWorkAcrossSettingsChanges: the work running
// when the bounds change counts against the new ones, so that a reload
// never lets more run at once than the bounds in effect allow.
func TestBulkheadCountsRunningWorkAcrossSettingsChanges(t *testing.T) {
	t.Parallel()
	const wait = 20 * time.Millisecond

	t.Run("same concurrency, another wait", func(t *testing.T) {
		t.Parallel()
		h := newHashes(t, 2, wait)
		end, done := h.hold(t, 2)
		if err := h.b.Set(2, 2*wait); err != nil {
			t.Fatal(err)
		}
		wantRefused(t, "a third work with 2 of 2 running", h.run(context.Background()))
		for i := range end {
			end[i]()
			if err := answer(t, "a work let end", done[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.run(context.Background()); err != nil {
			t.Fatalf("a work with none running: %v", err)
		}
		if peak := h.peak.Load(); peak != 2 {
			t.Fatalf("%d works ran at once, want 2", peak)
		}
	})

	t.Run("same settings", func(t *testing.T) {
		t.Parallel()
		h := newHashes(t, 2, wait)
		end, _ := h.hold(t, 2)
		if err := h.b.Set(2, wait); err != nil {
			t.Fatal(err)
		}
		wantRefused(t, "a third work with 2 of 2 running", h.run(context.Background()))
		for _, e := range end {
			e()
		}
		if peak := h.peak.Load(); peak != 2 {
			t.Fatalf("%d works ran at once, want 2", peak)
		}
	})

	t.Run("more concurrency", func(t *testing.T) {
		t.Parallel()
		h := newHashes(t, 2, wait)
		end, _ := h.hold(t, 2)
		if err := h.b.Set(3, wait); err != nil {
			t.Fatal(err)
		}
		third, _ := h.start(context.Background())
		waitFor(t, "a third work runs", func() bool { return h.running.Load() == 3 })
		wantRefused(t, "a fourth work with 3 of 3 running", h.run(context.Background()))
		for _, e := range append(end, third) {
			e()
		}
		if peak := h.peak.Load(); peak != 3 {
			t.Fatalf("%d works ran at once, want 3", peak)
		}
	})

	t.Run("less concurrency", func(t *testing.T) {
		t.Parallel()
		h := newHashes(t, 2, 0)
		end, done := h.hold(t, 2)
		if err := h.b.Set(1, 0); err != nil {
			t.Fatal(err)
		}
		wantRefused(t, "a work with 2 running and room for 1", h.run(context.Background()))
		end[0]()
		if err := answer(t, "a work let end", done[0]); err != nil {
			t.Fatal(err)
		}
		wantRefused(t, "a work with 1 running and room for 1", h.run(context.Background()))
		end[1]()
		if err := answer(t, "a work let end", done[1]); err != nil {
			t.Fatal(err)
		}
		if err := h.run(context.Background()); err != nil {
			t.Fatalf("a work with none running and room for 1: %v", err)
		}
	})

	t.Run("a rise lets the waiting work in", func(t *testing.T) {
		t.Parallel()
		h := newHashes(t, 1, time.Hour)
		end, _ := h.hold(t, 1)
		waiting, runs, done, _ := h.queued(t)
		if err := h.b.Set(2, time.Hour); err != nil {
			t.Fatal(err)
		}
		awaitRun(t, "the waiting work", runs)
		end[0]()
		waiting()
		if err := answer(t, "the work let in", done); err != nil {
			t.Fatal(err)
		}
	})
}

// TestBulkheadWaitsForRoomThenRefuses: the excess waits up to the wait
// allowed for room: it runs if room frees up in time, in the order it
// came, and is refused with a retry hint, counted in
// keel_bulkhead_refused_total, if not.
func TestBulkheadWaitsForRoomThenRefuses(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	b, err := shed.NewBulkhead("password hashing", 1, time.Hour, 2*time.Second, reg)
	if err != nil {
		t.Fatal(err)
	}
	h := &hashes{b: b}
	end, done := h.hold(t, 1)
	// The work waiting gets the room the running one frees.
	next, nextRuns, nextDone, _ := h.queued(t)
	end[0]()
	if err := answer(t, "a work let end", done[0]); err != nil {
		t.Fatal(err)
	}
	awaitRun(t, "the waiting work", nextRuns)

	// Now with a short wait: refused once it is over, and counted.
	if err := b.Set(1, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	wantRefused(t, "a work while the room stays taken", h.run(context.Background()))
	if took := time.Since(began); took < 10*time.Millisecond {
		t.Errorf("refused after %v, before the 10ms it may wait", took)
	}
	// Without a wait: refused at once, without waiting on the caller's
	// context at all.
	if err := b.Set(1, 0); err != nil {
		t.Fatal(err)
	}
	ctx := &watchedContext{Context: context.Background(), waited: make(chan struct{})}
	wantRefused(t, "a work allowed no wait", h.run(ctx))
	select {
	case <-ctx.waited:
		t.Error("a work allowed no wait waited for room")
	default:
	}
	if got := refusals(t, reg, "password hashing"); got != 2 {
		t.Errorf("keel_bulkhead_refused_total = %v, want 2", got)
	}
	next()
	if err := answer(t, "the work let in", nextDone); err != nil {
		t.Fatal(err)
	}
	if peak := h.peak.Load(); peak != 1 {
		t.Fatalf("%d works ran at once, want 1", peak)
	}
}

// refusals is keel_bulkhead_refused_total of the bulkhead named name in
// reg.
func refusals(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "keel_bulkhead_refused_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "bulkhead" && l.GetValue() == name {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no keel_bulkhead_refused_total{bulkhead=%q}", name)
	return 0
}

// TestBulkheadHandsRoomToTheWaitingInTurn: room that frees up, or that
// a rise makes, goes to the work waiting in the order it came, one work
// per room; a caller that leaves gives up its place.
func TestBulkheadHandsRoomToTheWaitingInTurn(t *testing.T) {
	t.Parallel()
	h := newHashes(t, 1, time.Hour)
	end, done := h.hold(t, 1)
	endB, runsB, doneB, _ := h.queued(t)
	endC, runsC, doneC, _ := h.queued(t)
	_, runsD, doneD, leaveD := h.queued(t)
	endE, runsE, doneE, _ := h.queued(t)

	end[0]() // room for one: the first waiting
	awaitRun(t, "the first waiting work", runsB)
	if err := answer(t, "a work let end", done[0]); err != nil {
		t.Fatal(err)
	}
	if err := h.b.Set(2, time.Hour); err != nil { // room for one more: the next
		t.Fatal(err)
	}
	awaitRun(t, "the second waiting work", runsC)
	// D waits still: when its caller leaves, it gets its context's error
	// (had it been let in, it would run instead, whatever its context).
	leaveD()
	select {
	case err := <-doneD:
		if connect.CodeOf(err) != connect.CodeCanceled {
			t.Fatalf("the third waiting work, its caller gone: %v, want canceled", err)
		}
	case <-runsD:
		t.Fatal("the third waiting work runs with the room for 2 taken")
	case <-time.After(15 * time.Second):
		t.Fatal("timed out waiting for the third waiting work, its caller gone")
	}
	endB() // room for one: the next still waiting
	awaitRun(t, "the fourth waiting work", runsE)
	for _, e := range []func(){endC, endE} {
		e()
	}
	for _, d := range []<-chan error{doneB, doneC, doneE} {
		if err := answer(t, "a work let end", d); err != nil {
			t.Fatal(err)
		}
	}
	if peak := h.peak.Load(); peak != 2 {
		t.Fatalf("%d works ran at once, want 2", peak)
	}
}

// TestBulkheadWaitEndsWithTheCaller: a caller gone before the work has
// room gets its context's error in Connect's terms, and the work does not
// run; the room it waited for stays for others.
func TestBulkheadWaitEndsWithTheCaller(t *testing.T) {
	t.Parallel()
	h := newHashes(t, 1, time.Hour)

	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.run(canceled); connect.CodeOf(err) != connect.CodeCanceled || !errors.Is(err, context.Canceled) {
		t.Fatalf("a canceled caller with room: %v, want canceled", err)
	}

	end, done := h.hold(t, 1)
	_, _, waiting, cancel := h.queued(t)
	cancel()
	if err := answer(t, "a caller canceled while waiting", waiting); connect.CodeOf(err) != connect.CodeCanceled || !strings.Contains(err.Error(), "waiting for password hashing") {
		t.Fatalf("a caller canceled while waiting: %v, want canceled naming the work", err)
	}
	ctx, cancelDeadline := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancelDeadline()
	if err := h.run(ctx); connect.CodeOf(err) != connect.CodeDeadlineExceeded || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a caller whose deadline passes while waiting: %v, want deadline_exceeded", err)
	}
	end[0]()
	if err := answer(t, "a work let end", done[0]); err != nil {
		t.Fatal(err)
	}
	// The callers that left hold no room and wait for none: the next work
	// runs at once.
	if err := h.b.Set(1, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.run(context.Background()); err != nil {
		t.Fatalf("a work after the callers that left: %v", err)
	}
	if peak := h.peak.Load(); peak != 1 {
		t.Fatalf("%d works ran at once, want 1", peak)
	}
}

// TestBulkheadBounds: a bulkhead runs at least one work at a time; Do
// returns the work's own error; bulkheads on one registry share the
// metric, by name; a bulkhead needs no registry, and says so when its
// metric's name is taken.
func TestBulkheadBounds(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	if _, err := shed.NewBulkhead("none", 0, 0, time.Second, reg); err == nil || !strings.Contains(err.Error(), "concurrency 0 must be at least 1") {
		t.Fatalf("a bulkhead of 0: %v", err)
	}
	b, err := shed.NewBulkhead("one", 1, 0, time.Second, reg)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Set(0, 0); err == nil || !strings.Contains(err.Error(), "bulkhead one: concurrency 0 must be at least 1") {
		t.Fatalf("Set(0): %v", err)
	}
	failed := errors.New("hash failed")
	if err := b.Do(context.Background(), func() error { return failed }); !errors.Is(err, failed) {
		t.Fatalf("Do returned %v, want the work's error", err)
	}
	other, err := shed.NewBulkhead("other", 1, 0, time.Second, reg)
	if err != nil {
		t.Fatalf("a second bulkhead on the registry: %v", err)
	}
	release := make(chan struct{})
	go func() { _ = other.Do(context.Background(), func() error { <-release; return nil }) }()
	waitFor(t, "the other bulkhead is full", func() bool {
		return other.Do(context.Background(), func() error { return nil }) != nil
	})
	close(release)
	if got := refusals(t, reg, "other"); got < 1 {
		t.Errorf("keel_bulkhead_refused_total{bulkhead=\"other\"} = %v, want its refusals", got)
	}
	if got := refusals(t, reg, "one"); got != 0 {
		t.Errorf("keel_bulkhead_refused_total{bulkhead=\"one\"} = %v, want 0", got)
	}
	if _, err := shed.NewBulkhead("unregistered", 1, 0, time.Second, nil); err != nil {
		t.Fatalf("a bulkhead without a registry: %v", err)
	}
	clash := prometheus.NewRegistry()
	clash.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "keel_bulkhead_refused_total", Help: "something else"}))
	if _, err := shed.NewBulkhead("clash", 1, 0, time.Second, clash); err == nil || !strings.Contains(err.Error(), "register metrics") {
		t.Fatalf("a bulkhead on a registry holding another metric of its metric's name: %v", err)
	}
}
