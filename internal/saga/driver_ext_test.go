package saga_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/saga"
)

// hookedStore is a MemStore whose methods can be made to fail, as a
// database's do, by hooks that run before the MemStore's: a hook's error
// is the method's.
type hookedStore struct {
	*saga.MemStore
	get        func()
	save       func(rec saga.Record, ev saga.Event) error
	renew      func() error
	unfinished func() error
	release    func(ctx context.Context) error

	unfinishedCalls atomic.Int64
}

func (s *hookedStore) Get(ctx context.Context, id string) (saga.Record, error) {
	if s.get != nil {
		s.get()
	}
	return s.MemStore.Get(ctx, id)
}

func (s *hookedStore) Save(ctx context.Context, rec saga.Record, ev saga.Event) (saga.Record, error) {
	if s.save != nil {
		if err := s.save(rec, ev); err != nil {
			return saga.Record{}, err
		}
	}
	return s.MemStore.Save(ctx, rec, ev)
}

func (s *hookedStore) Renew(ctx context.Context, id, owner string, ttl time.Duration) error {
	if s.renew != nil {
		if err := s.renew(); err != nil {
			return err
		}
	}
	return s.MemStore.Renew(ctx, id, owner, ttl)
}

func (s *hookedStore) Unfinished(ctx context.Context, definition string) ([]saga.Record, error) {
	s.unfinishedCalls.Add(1)
	if s.unfinished != nil {
		if err := s.unfinished(); err != nil {
			return nil, err
		}
	}
	return s.MemStore.Unfinished(ctx, definition)
}

func (s *hookedStore) Release(ctx context.Context, id, owner string) error {
	if s.release != nil {
		if err := s.release(ctx); err != nil {
			return err
		}
	}
	return s.MemStore.Release(ctx, id, owner)
}

// logBuffer is a log destination safe for concurrent writers.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// logger returns a logger writing to b.
func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// waitFor waits until cond holds, failing t if it does not within 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
	}
}

// TestRefusedWriteStopsBeforeTheCall: when the store refuses the write
// that says a step's action (or compensation) is in flight, the driver
// stops there: it passes no further boundary and calls nothing, since
// nothing records that the call may have happened.
func TestRefusedWriteStopsBeforeTheCall(t *testing.T) {
	for _, tc := range []struct {
		name    string
		refuse  saga.EventKind
		fail    map[string]func(int) failure
		passed  []string
		effects []string
	}{
		{"action", saga.StepStarted, nil, []string{"created"}, nil},
		{"compensation", saga.CompensationStarted, map[string]func(int) failure{"do:" + charge: always(declined)},
			[]string{"created", "before-action:reserve-stock", "after-action:reserve-stock", "action-saved:reserve-stock",
				"before-action:charge-payment", "action-failed:charge-payment", "failure-saved:charge-payment"},
			[]string{doReserve}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLedger()
			for op, f := range tc.fail {
				l.fail(op, f)
			}
			store := &hookedStore{MemStore: &saga.MemStore{}, save: func(rec saga.Record, ev saga.Event) error {
				if ev.Kind == tc.refuse {
					return fmt.Errorf("version %d is stale: %w", rec.Version, saga.ErrLeaseLost)
				}
				return nil
			}}
			var passed []string
			opts := options("a")
			opts.Boundary = func(b saga.Boundary) error {
				passed = append(passed, b.String())
				return nil
			}
			o := start(t, store, placeOrder(l), opts)
			_, err := o.Run(runCtx(t), "order-1", order{})
			if !errors.Is(err, saga.ErrStopped) || !errors.Is(err, saga.ErrLeaseLost) {
				t.Fatalf("Run: %v, want it stopped by the refused write", err)
			}
			if !slices.Equal(passed, tc.passed) {
				t.Errorf("boundaries passed %q, want %q", passed, tc.passed)
			}
			l.check(t, "order-1", tc.effects...)
			if n := l.callsOf(saga.CompensationKey("order-1", reserve)); n != 0 {
				t.Errorf("the compensation was called %d times, want never", n)
			}
		})
	}
}

// TestResumeDoesNotRestartTheStepInFlight: a driver that resumes a saga
// whose action or compensation is recorded in flight calls it again
// without writing that it started (it is already written).
func TestResumeDoesNotRestartTheStepInFlight(t *testing.T) {
	for _, tc := range []struct {
		at     string
		fail   map[string]func(int) failure
		writes []string
	}{
		{"before-action:charge-payment", nil, []string{
			"step-done charge-payment running@2",
			"step-started commit-stock running@2*",
			"step-done commit-stock completed@3",
		}},
		{"before-compensation:reserve-stock", map[string]func(int) failure{"do:" + charge: always(declined)}, []string{
			"compensation-done reserve-stock compensated@-1",
		}},
		{"before-compensation:charge-payment", map[string]func(int) failure{"do:" + commit: always(declined)}, []string{
			"compensation-done charge-payment compensating@0",
			"compensation-started reserve-stock compensating@0*",
			"compensation-done reserve-stock compensated@-1",
		}},
	} {
		t.Run(tc.at, func(t *testing.T) {
			clk := newClock()
			store := &saga.MemStore{Now: clk.Now}
			l := newLedger()
			for op, f := range tc.fail {
				l.fail(op, f)
			}
			def := placeOrder(l)
			crashing := options("crashing")
			crashing.Boundary = func(b saga.Boundary) error {
				if b.String() == tc.at {
					return errCrash
				}
				return nil
			}
			o1 := start(t, store, def, crashing)
			if _, err := o1.Run(runCtx(t), "order-1", order{}); !errors.Is(err, errCrash) {
				t.Fatalf("Run: %v, want the crash", err)
			}
			_ = o1.Close()

			clk.Advance(leaseTTL + time.Second)
			var j journal
			opts := options("recovering")
			opts.Observer = j.observe
			o2 := start(t, store, def, opts)
			if _, err := o2.Wait(runCtx(t), "order-1"); err != nil {
				t.Fatal(err)
			}
			if got := j.list(); !slices.Equal(got, tc.writes) {
				t.Errorf("writes of the resuming driver:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.writes, "\n"))
			}
		})
	}
}

// TestRecordPastTheStepsIsAFault: a record whose step is past the
// definition's steps (or before them) stops its driver with an error
// naming it, whatever its status, instead of running a step that does
// not exist.
func TestRecordPastTheStepsIsAFault(t *testing.T) {
	for _, tc := range []struct {
		status saga.Status
		step   int
		want   string
	}{
		{saga.Running, 3, "running at step 3 but definition place-order has 3 steps"},
		{saga.Running, -1, "running at step -1"},
		{saga.Compensating, 3, "compensating step 3 but definition place-order has 3 steps"},
	} {
		t.Run(fmt.Sprintf("%s@%d", tc.status, tc.step), func(t *testing.T) {
			store := &saga.MemStore{}
			l := newLedger()
			if _, _, err := store.Create(context.Background(), saga.Record{
				ID: "order-1", Definition: "place-order", State: []byte(`{}`), Status: tc.status, Step: tc.step,
			}, time.Minute); err != nil {
				t.Fatal(err)
			}
			o := start(t, store, placeOrder(l), options("a"))
			if _, err := o.Wait(runCtx(t), "order-1"); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Wait: %v, want an error saying %q", err, tc.want)
			}
			l.check(t, "order-1")
		})
	}
}

// TestExhaustedStepWithoutCompensation: a step without a compensation
// whose action keeps failing (its effect unknown) has nothing of its own
// to undo: the compensations of the steps before it run, in reverse.
func TestExhaustedStepWithoutCompensation(t *testing.T) {
	l := newLedger().fail("do:"+commit, always(lostBefore))
	o := start(t, &saga.MemStore{}, placeOrder(l), options("a"))
	out, err := o.Run(runCtx(t), "order-1", order{})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if reason := commit + ": no success after 3 attempts: answer lost"; out.Status != saga.Compensated || out.Reason != reason {
		t.Errorf("outcome %s %q, want compensated %q", out.Status, out.Reason, reason)
	}
	l.check(t, "order-1", doReserve, doCharge, undoCharge, undoReserve)
}

// TestStepTimeoutBoundsTheRetries: an action that keeps failing is given
// up once StepTimeout has gone by, long before its attempts run out.
func TestStepTimeoutBoundsTheRetries(t *testing.T) {
	const maxAttempts = 1000
	l := newLedger().fail("do:"+charge, always(lostBefore))
	opts := options("a")
	opts.MaxAttempts = maxAttempts
	opts.StepTimeout = 50 * time.Millisecond
	o := start(t, &saga.MemStore{}, placeOrder(l), opts)
	out, err := o.Run(runCtx(t), "order-1", order{})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	n := l.callsOf(saga.ActionKey("order-1", charge))
	if reason := fmt.Sprintf("%s: no success after %d attempts: answer lost", charge, n); out.Status != saga.Compensated || out.Reason != reason {
		t.Errorf("outcome %s %q, want compensated %q", out.Status, out.Reason, reason)
	}
	if n < 2 || n >= maxAttempts {
		t.Errorf("the action was tried %d times, want retries cut short by the step timeout", n)
	}
	l.check(t, "order-1", doReserve, undoReserve)
}

// TestStoreWritesAreRetriedWithBackoff: a write the store fails (not a
// lost lease) is retried after a delay that doubles each time.
func TestStoreWritesAreRetriedWithBackoff(t *testing.T) {
	const backoff = 20 * time.Millisecond
	var failures atomic.Int32
	store := &hookedStore{MemStore: &saga.MemStore{}, save: func(_ saga.Record, ev saga.Event) error {
		if ev.Kind == saga.StepDone && failures.Add(1) <= 3 {
			return errors.New("database unreachable")
		}
		return nil
	}}
	l := newLedger()
	opts := options("a")
	opts.Backoff, opts.MaxBackoff, opts.CompensationMaxBackoff = backoff, time.Second, time.Second
	opts.Jitter = 0.01
	o := start(t, store, placeOrder(l), opts)
	began := time.Now()
	out, err := o.Run(runCtx(t), "order-1", order{})
	if err != nil || out.Status != saga.Completed {
		t.Fatalf("Run = %+v, %v; want completed", out, err)
	}
	// 20ms, 40ms, 80ms, less the jitter.
	if took, least := time.Since(began), time.Duration(float64(7*backoff)*0.99); took < least {
		t.Errorf("three failed writes retried within %v, want backoffs of at least %v in all", took, least)
	}
	l.check(t, "order-1", doReserve, doCharge, doCommit)
}

// TestDriverStopsBeforeItsLeaseCanExpire: a driver that cannot renew its
// lease stops on its own within the lease's TTL, by its own clock, so
// that it never drives on under a lease that may have expired and been
// taken by another owner.
func TestDriverStopsBeforeItsLeaseCanExpire(t *testing.T) {
	const ttl = time.Second
	store := &hookedStore{MemStore: &saga.MemStore{}, renew: func() error { return errors.New("database unreachable") }}
	l := newLedger().fail("do:"+reserve, always(hang))
	opts := options("a")
	opts.LeaseTTL = ttl
	o := start(t, store, placeOrder(l), opts)
	began := time.Now() // before the lease is taken
	_, err := o.Run(runCtx(t), "order-1", order{})
	took := time.Since(began)
	if !errors.Is(err, saga.ErrLeaseLost) || !strings.Contains(err.Error(), "not renewed within") {
		t.Fatalf("Run: %v, want it stopped for want of renewals", err)
	}
	if took >= ttl {
		t.Errorf("the driver stopped %v after taking its lease, want before the %v TTL", took, ttl)
	}
}

// TestCreatedEventHasNoStep: the write that creates a saga records no
// step, for the store's own tables and for the observer alike.
func TestCreatedEventHasNoStep(t *testing.T) {
	var applied, observed []saga.Event
	var mu sync.Mutex
	store := &saga.MemStore{Apply: func(_ saga.Record, ev saga.Event) error {
		mu.Lock()
		defer mu.Unlock()
		applied = append(applied, ev)
		return nil
	}}
	opts := options("a")
	opts.Observer = func(ev saga.Event, _ saga.Record) {
		mu.Lock()
		defer mu.Unlock()
		observed = append(observed, ev)
	}
	o := start(t, store, placeOrder(newLedger()), opts)
	if _, err := o.Run(runCtx(t), "order-1", order{}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := saga.Event{Kind: saga.Created, Step: -1}
	if len(applied) == 0 || applied[0] != want || len(observed) == 0 || observed[0] != want {
		t.Fatalf("first writes applied %+v, observed %+v; want %+v", applied, observed, want)
	}
}

// TestNewFillsInTheDefaults: the zero Options are valid, each default
// filled in, and every orchestrator gets an owner of its own.
func TestNewFillsInTheDefaults(t *testing.T) {
	l := newLedger()
	a, err := saga.New(&saga.MemStore{}, placeOrder(l), saga.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("New with the zero options: %v", err)
	}
	defer a.Close()
	b, err := saga.New(&saga.MemStore{}, placeOrder(l), saga.Options{})
	if err != nil {
		t.Fatalf("New with the zero options: %v", err)
	}
	defer b.Close()
	if a.Owner() == "" || a.Owner() == b.Owner() {
		t.Errorf("owners %q and %q, want two of their own", a.Owner(), b.Owner())
	}
	if out, err := a.Run(runCtx(t), "order-1", order{}); err != nil || out.Status != saga.Completed {
		t.Errorf("Run with the defaults = %+v, %v", out, err)
	}
}

// TestDefaultBackoffAndPollInterval: with the zero Options, a failed
// action is retried after about 100ms, and a caller waiting for a saga
// driven by another orchestrator reads the store every 500ms.
func TestDefaultBackoffAndPollInterval(t *testing.T) {
	t.Run("backoff", func(t *testing.T) {
		l := newLedger().fail("do:"+reserve, first(1, lostBefore))
		o := start(t, &saga.MemStore{}, placeOrder(l), saga.Options{Logger: slog.New(slog.DiscardHandler)})
		began := time.Now()
		if out, err := o.Run(runCtx(t), "order-1", order{}); err != nil || out.Status != saga.Completed {
			t.Fatalf("Run = %+v, %v", out, err)
		}
		// 100ms, less the default jitter of a quarter.
		if took := time.Since(began); took < 75*time.Millisecond {
			t.Errorf("one retry took %v, want the default backoff of 100ms", took)
		}
	})
	t.Run("poll interval", func(t *testing.T) {
		var mu sync.Mutex
		var reads []time.Time
		store := &hookedStore{MemStore: &saga.MemStore{}}
		store.get = func() {
			mu.Lock()
			reads = append(reads, time.Now())
			mu.Unlock()
		}
		l := newLedger().fail("do:"+reserve, first(1, hang))
		l.entered = make(chan string, 16)
		def := placeOrder(l)
		driver := start(t, store, def, options("driver"))
		ctx, cancel := context.WithCancel(runCtx(t))
		defer cancel()
		go func() { _, _ = driver.Run(ctx, "order-1", order{}) }()
		<-l.entered
		waiter := start(t, store, def, saga.Options{Logger: slog.New(slog.DiscardHandler)})
		wctx, wcancel := context.WithCancel(runCtx(t))
		defer wcancel()
		go func() { _, _ = waiter.Wait(wctx, "order-1") }()
		var gap time.Duration
		waitFor(t, "the waiter read the saga twice", func() bool {
			mu.Lock()
			defer mu.Unlock()
			if len(reads) < 2 {
				return false
			}
			gap = reads[1].Sub(reads[0])
			return true
		})
		if gap < 450*time.Millisecond {
			t.Errorf("the waiter read the store again after %v, want the default poll interval of 500ms", gap)
		}
	})
}

// TestRecoverResumesEveryInterval: Recover looks for orphans every
// interval it is given; with none, every lease TTL.
func TestRecoverResumesEveryInterval(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ttl      time.Duration
		interval time.Duration
	}{
		{"interval", leaseTTL, 10 * time.Millisecond}, // far shorter than the TTL
		{"lease TTL", 200 * time.Millisecond, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			store := &hookedStore{MemStore: &saga.MemStore{Now: clk.Now}}
			l := newLedger()
			def := placeOrder(l)
			var finished atomic.Int32
			opts := options("b")
			opts.LeaseTTL = tc.ttl
			opts.Observer = func(_ saga.Event, rec saga.Record) {
				if rec.Status.Finished() {
					finished.Add(1)
				}
			}
			o := start(t, store, def, opts)
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			go o.Recover(ctx, tc.interval)
			waitFor(t, "the first look for orphans", func() bool { return store.unfinishedCalls.Load() >= 1 })

			// An orphan appears after that first look.
			crashAtCreate(t, store.MemStore, def, "order-1")
			clk.Advance(time.Hour)
			began := time.Now()
			waitFor(t, "the orphan finished", func() bool { return finished.Load() == 1 })
			took, calls := time.Since(began), store.unfinishedCalls.Load()
			l.check(t, "order-1", doReserve, doCharge, doCommit)
			period := tc.interval
			if period <= 0 {
				period = tc.ttl
			}
			if took > 2*period+time.Second/2 {
				t.Errorf("the orphan was found %v after it appeared, want within about %v", took, period)
			}
			// One look per period, not more.
			if most := 3 + int64(2*took/period); calls > most {
				t.Errorf("%d looks for orphans in %v, want at most %d (one every %v)", calls, took, most, period)
			}
		})
	}
}

// TestRecoverLogsFailures: Recover logs a failed look for orphans and
// goes on looking.
func TestRecoverLogsFailures(t *testing.T) {
	var logs logBuffer
	store := &hookedStore{MemStore: &saga.MemStore{}, unfinished: func() error { return errors.New("database unreachable") }}
	opts := options("a")
	opts.Logger = logs.logger()
	o := start(t, store, placeOrder(newLedger()), opts)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go o.Recover(ctx, 5*time.Millisecond)
	waitFor(t, "the failure logged twice", func() bool {
		return strings.Count(logs.String(), "resuming unfinished sagas failed") >= 2
	})
	if !strings.Contains(logs.String(), "database unreachable") {
		t.Errorf("logs %q do not say why", logs.String())
	}
}

// TestLeaseRelease: a finished saga's lease is released through the
// store even though the driver's own context has ended, and a release
// that fails is logged (the lease then expires).
func TestLeaseRelease(t *testing.T) {
	t.Run("released", func(t *testing.T) {
		var logs logBuffer
		// Like a database, the store gives up when its caller's context
		// ends.
		store := &hookedStore{MemStore: &saga.MemStore{}, release: func(ctx context.Context) error { return ctx.Err() }}
		opts := options("a")
		opts.Logger = logs.logger()
		o := start(t, store, placeOrder(newLedger()), opts)
		if _, err := o.Run(runCtx(t), "order-1", order{}); err != nil {
			t.Fatal(err)
		}
		if rec, err := store.Get(context.Background(), "order-1"); err != nil || rec.LeaseOwner != "" {
			t.Errorf("lease %q (%v) after the end, want released", rec.LeaseOwner, err)
		}
		if strings.Contains(logs.String(), "release lease failed") {
			t.Errorf("a release that worked was logged as failed: %s", logs.String())
		}
	})
	t.Run("failed", func(t *testing.T) {
		var logs logBuffer
		store := &hookedStore{MemStore: &saga.MemStore{}, release: func(context.Context) error { return errors.New("database unreachable") }}
		opts := options("a")
		opts.Logger = logs.logger()
		o := start(t, store, placeOrder(newLedger()), opts)
		if _, err := o.Run(runCtx(t), "order-1", order{}); err != nil {
			t.Fatal(err)
		}
		if rec, _ := store.Get(context.Background(), "order-1"); rec.LeaseOwner != "a" {
			t.Errorf("lease %q, want still held (to expire)", rec.LeaseOwner)
		}
		if !strings.Contains(logs.String(), "release lease failed") {
			t.Errorf("the failed release was not logged: %s", logs.String())
		}
	})
}
