package saga_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/saga"
)

// errCrash is what the tests' boundary hooks return to play a crash.
var errCrash = errors.New("crash")

// TestCrashAtEveryBoundary stops a driver at each boundary in turn, as a
// process killed there would stop, and checks that a new orchestrator on
// the same store brings the saga to the same end as an uninterrupted
// run, with every effect applied exactly once.
func TestCrashAtEveryBoundary(t *testing.T) {
	b := func(p saga.Point, step string) string { return saga.Boundary{Point: p, StepName: step}.String() }
	done := func(step string) []string {
		return []string{b(saga.BeforeAction, step), b(saga.AfterAction, step), b(saga.ActionSaved, step)}
	}
	failed := func(step string) []string {
		return []string{b(saga.BeforeAction, step), b(saga.ActionFailed, step), b(saga.FailureSaved, step)}
	}
	undone := func(step string) []string {
		return []string{b(saga.BeforeCompensation, step), b(saga.AfterCompensation, step), b(saga.CompensationSaved, step)}
	}
	path := func(steps ...[]string) []string { return slices.Concat(append([][]string{{"created"}}, steps...)...) }
	for _, sc := range []struct {
		name       string
		fail       map[string]func(int) failure
		status     saga.Status
		reason     string
		effects    []string
		boundaries []string
	}{
		{"completes", nil, saga.Completed, "", []string{doReserve, doCharge, doCommit},
			path(done(reserve), done(charge), done(commit))},
		{"charge declined", map[string]func(int) failure{"do:" + charge: always(declined)},
			saga.Compensated, charge + ": declined", []string{doReserve, undoReserve},
			path(done(reserve), failed(charge), undone(reserve))},
		{"commit declined", map[string]func(int) failure{"do:" + commit: always(declined)},
			saga.Compensated, commit + ": declined", []string{doReserve, doCharge, undoCharge, undoReserve},
			path(done(reserve), done(charge), failed(commit), undone(charge), undone(reserve))},
		{"charge answer lost", map[string]func(int) failure{"do:" + charge: always(lostAfter)},
			saga.Compensated, charge + ": no success after 3 attempts: answer lost", []string{doReserve, doCharge, undoCharge, undoReserve},
			path(done(reserve), failed(charge), undone(charge), undone(reserve))},
	} {
		newLedgerFor := func() *ledger {
			l := newLedger()
			for op, f := range sc.fail {
				l.fail(op, f)
			}
			return l
		}
		in := order{OrderID: "o-7", Amount: 7}

		// An uninterrupted run names the boundaries and the outcome.
		var boundaries []string
		opts := options("reference")
		opts.Boundary = func(b saga.Boundary) error {
			if b.SagaID != "order-7" {
				t.Errorf("boundary of saga %q", b.SagaID)
			}
			boundaries = append(boundaries, b.String())
			return nil
		}
		l := newLedgerFor()
		want, err := start(t, &saga.MemStore{}, placeOrder(l), opts).Run(runCtx(t), "order-7", in)
		if err != nil {
			t.Fatalf("%s: Run: %v", sc.name, err)
		}
		if want.Status != sc.status || want.Reason != sc.reason {
			t.Fatalf("%s: outcome %s %q, want %s %q", sc.name, want.Status, want.Reason, sc.status, sc.reason)
		}
		l.check(t, "order-7", sc.effects...)
		// Every boundary of the path, in order, each once.
		if !slices.Equal(boundaries, sc.boundaries) {
			t.Errorf("%s: boundaries %q, want %q", sc.name, boundaries, sc.boundaries)
		}

		for at, boundary := range boundaries {
			t.Run(sc.name+"/"+boundary, func(t *testing.T) {
				clk := newClock()
				store := &saga.MemStore{Now: clk.Now}
				l := newLedgerFor()
				def := placeOrder(l)
				crashing := options("crashing")
				passed := 0
				crashing.Boundary = func(b saga.Boundary) error {
					if passed++; passed > at {
						return errCrash
					}
					return nil
				}
				o1 := start(t, store, def, crashing)
				if _, err := o1.Run(runCtx(t), "order-7", in); !errors.Is(err, errCrash) || !errors.Is(err, saga.ErrStopped) {
					t.Fatalf("Run of the crashing driver: %v, want it stopped by the crash", err)
				}
				_ = o1.Close()
				if rec, err := store.Get(context.Background(), "order-7"); err != nil || rec.LeaseOwner != "crashing" {
					t.Fatalf("after the crash the lease is %q (%v), want still the crashed owner's", rec.LeaseOwner, err)
				}

				clk.Advance(leaseTTL + time.Second)
				o2 := start(t, store, def, options("recovering"))
				took, err := o2.Resume(runCtx(t))
				if err != nil {
					t.Fatalf("Resume: %v", err)
				}
				if rec, _ := store.Get(context.Background(), "order-7"); !rec.Status.Finished() && !slices.Equal(took, []string{"order-7"}) {
					t.Fatalf("Resume took %q, want the unfinished saga whose lease expired", took)
				}
				got, err := o2.Wait(runCtx(t), "order-7")
				if err != nil {
					t.Fatalf("Wait: %v", err)
				}
				if got != want {
					t.Errorf("resumed outcome %+v, want %+v", got, want)
				}
				l.check(t, "order-7", sc.effects...)
			})
		}
	}
}

func TestCloseStopsAndReleases(t *testing.T) {
	l := newLedger().fail("do:"+charge, first(1, hang))
	l.entered = make(chan string, 16)
	store := &saga.MemStore{}
	def := placeOrder(l)
	o1 := start(t, store, def, options("a"))
	done := make(chan error, 1)
	go func() {
		_, err := o1.Run(runCtx(t), "order-1", order{})
		done <- err
	}()
	for key := <-l.entered; key != saga.ActionKey("order-1", charge); key = <-l.entered {
	}
	if err := o1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, saga.ErrStopped) || !errors.Is(err, saga.ErrClosed) {
		t.Errorf("Run when closed: %v, want stopped and closed", err)
	}
	rec, err := store.Get(context.Background(), "order-1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.LeaseOwner != "" || rec.Status != saga.Running || rec.Step != 1 || !rec.InFlight {
		t.Errorf("stored %s@%d (in flight %v, lease %q), want running@1 in flight, lease released", rec.Status, rec.Step, rec.InFlight, rec.LeaseOwner)
	}
	if _, err := o1.Run(runCtx(t), "order-2", order{}); !errors.Is(err, saga.ErrClosed) {
		t.Errorf("Run after Close: %v, want ErrClosed", err)
	}

	o2 := start(t, store, def, options("b"))
	took, err := o2.Resume(runCtx(t))
	if err != nil || !slices.Equal(took, []string{"order-1"}) {
		t.Fatalf("Resume = %q, %v; want order-1 at once (its lease was released)", took, err)
	}
	out, err := o2.Wait(runCtx(t), "order-1")
	if err != nil || out.Status != saga.Completed {
		t.Fatalf("Wait = %+v, %v; want completed", out, err)
	}
	if n := l.callsOf(saga.ActionKey("order-1", charge)); n != 2 {
		t.Errorf("charge called %d times, want twice (canceled, then replayed)", n)
	}
	l.check(t, "order-1", doReserve, doCharge, doCommit)
}

// crashAtCreate returns an orchestrator whose drivers die as soon as they
// created their saga, to leave unfinished sagas in a store.
func crashAtCreate(t *testing.T, store saga.Store, def saga.Definition[order], ids ...string) {
	t.Helper()
	opts := options("crashed")
	opts.Boundary = func(b saga.Boundary) error {
		if b.Point == saga.PointCreated {
			return errCrash
		}
		return nil
	}
	o := start(t, store, def, opts)
	for _, id := range ids {
		if _, err := o.Run(runCtx(t), id, order{OrderID: id}); !errors.Is(err, errCrash) {
			t.Fatalf("Run: %v, want the crash", err)
		}
	}
	_ = o.Close()
}

func TestConcurrentResumeNeverOverlaps(t *testing.T) {
	clk := newClock()
	store := &saga.MemStore{Now: clk.Now}
	l := newLedger()
	l.delay = 2 * time.Millisecond
	def := placeOrder(l)
	var ids []string
	for i := range 20 {
		ids = append(ids, fmt.Sprintf("order-%02d", i))
	}
	crashAtCreate(t, store, def, ids...)
	clk.Advance(leaseTTL + time.Second)

	o1 := start(t, store, def, options("one"))
	o2 := start(t, store, def, options("two"))
	var took [2][]string
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i, o := range []*saga.Orchestrator[order]{o1, o2} {
		wg.Go(func() {
			<-gate
			var err error
			if took[i], err = o.Resume(runCtx(t)); err != nil {
				t.Errorf("Resume: %v", err)
			}
		})
	}
	close(gate)
	wg.Wait()
	all := slices.Concat(took[0], took[1])
	slices.Sort(all)
	if !slices.Equal(all, ids) {
		t.Errorf("the orchestrators took %q and %q; want every saga taken by exactly one", took[0], took[1])
	}
	for _, id := range ids {
		out, err := o1.Wait(runCtx(t), id)
		if err != nil || out.Status != saga.Completed {
			t.Fatalf("Wait(%s) = %s, %v; want completed", id, out.Status, err)
		}
		for _, step := range []string{reserve, charge, commit} {
			if n := l.callsOf(saga.ActionKey(id, step)); n != 1 {
				t.Errorf("%s of %s called %d times, want once", step, id, n)
			}
		}
		l.check(t, id, doReserve, doCharge, doCommit)
	}
	t.Logf("one took %d sagas, two took %d", len(took[0]), len(took[1]))
}

func TestLeaseTakeoverAfterExpiry(t *testing.T) {
	clk := newClock()
	store := &saga.MemStore{Now: clk.Now}
	l := newLedger()
	def := placeOrder(l)
	opts := options("crashed")
	opts.Boundary = func(b saga.Boundary) error {
		if b.String() == "before-action:charge-payment" {
			return errCrash
		}
		return nil
	}
	o1 := start(t, store, def, opts)
	if _, err := o1.Run(runCtx(t), "order-1", order{}); !errors.Is(err, errCrash) {
		t.Fatalf("Run: %v, want the crash", err)
	}
	_ = o1.Close()
	before, _ := store.Get(context.Background(), "order-1")

	o2 := start(t, store, def, options("heir"))
	clk.Advance(leaseTTL - time.Millisecond)
	if took, err := o2.Resume(runCtx(t)); err != nil || len(took) != 0 {
		t.Fatalf("Resume before expiry took %q (%v), want nothing", took, err)
	}
	// A waiter of its own: when its Wait gives up, the flight that polls
	// for it may still be under way, and would race o2's Resume below
	// for the lease; closing the waiter ends it.
	waiter := start(t, store, def, options("waiter"))
	short, cancel := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer cancel()
	if _, err := waiter.Wait(short, "order-1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait before expiry: %v, want it still waiting", err)
	}
	_ = waiter.Close()

	clk.Advance(time.Millisecond)
	took, err := o2.Resume(runCtx(t))
	if err != nil || !slices.Equal(took, []string{"order-1"}) {
		t.Fatalf("Resume after expiry = %q, %v; want order-1", took, err)
	}
	out, err := o2.Wait(runCtx(t), "order-1")
	if err != nil || out.Status != saga.Completed {
		t.Fatalf("Wait = %+v, %v; want completed", out, err)
	}
	after, _ := store.Get(context.Background(), "order-1")
	if after.Version <= before.Version || after.LeaseOwner != "" {
		t.Errorf("after the takeover the record is version %d (was %d), lease %q", after.Version, before.Version, after.LeaseOwner)
	}
	l.check(t, "order-1", doReserve, doCharge, doCommit)
}

// flakyStore is a store whose lease renewals can be made to fail, as
// when the database is out of reach.
type flakyStore struct {
	*saga.MemStore
	renewFails atomic.Bool
}

func (s *flakyStore) Renew(ctx context.Context, id, owner string, ttl time.Duration) error {
	if s.renewFails.Load() {
		return errors.New("database unreachable")
	}
	return s.MemStore.Renew(ctx, id, owner, ttl)
}

func TestLostLeaseStopsDriver(t *testing.T) {
	for _, tc := range []struct {
		name string
		ttl  time.Duration
		lose func(t *testing.T, clk *clock, store *flakyStore)
		why  string // in the driver's error
	}{
		// The store saw the lease expire and another owner took it: the
		// next renewal (within a third of the TTL, well before the local
		// guard would stop the driver) is refused.
		{"taken over", 3 * time.Second, func(t *testing.T, clk *clock, store *flakyStore) {
			clk.Advance(time.Minute)
			if _, err := store.Acquire(context.Background(), "order-1", "intruder", time.Hour); err != nil {
				t.Fatal(err)
			}
		}, "memstore: renew order-1"},
		// The store cannot be reached: the driver stops on its own before
		// the lease can have expired.
		{"not renewed", 300 * time.Millisecond, func(t *testing.T, clk *clock, store *flakyStore) {
			store.renewFails.Store(true)
		}, "not renewed within"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			store := &flakyStore{MemStore: &saga.MemStore{Now: clk.Now}}
			l := newLedger().fail("do:"+charge, always(hang))
			l.entered = make(chan string, 16)
			var j journal
			opts := options("a")
			opts.LeaseTTL = tc.ttl
			opts.Observer = j.observe
			o := start(t, store, placeOrder(l), opts)
			done := make(chan error, 1)
			go func() {
				_, err := o.Run(runCtx(t), "order-1", order{})
				done <- err
			}()
			for key := <-l.entered; key != saga.ActionKey("order-1", charge); key = <-l.entered {
			}
			writes := len(j.list())
			tc.lose(t, clk, store)
			lost, _ := store.Get(context.Background(), "order-1")
			select {
			case err := <-done:
				if !errors.Is(err, saga.ErrStopped) || !errors.Is(err, saga.ErrLeaseLost) || !strings.Contains(err.Error(), tc.why) {
					t.Errorf("Run: %v, want stopped by a lost lease (%s)", err, tc.why)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("the driver went on after losing its lease")
			}
			if n := len(j.list()); n != writes {
				t.Errorf("the driver wrote %d times after losing its lease", n-writes)
			}
			rec, _ := store.Get(context.Background(), "order-1")
			if rec.Version != lost.Version || rec.LeaseOwner != lost.LeaseOwner {
				t.Errorf("record changed after the lease was lost: %+v, was %+v", rec, lost)
			}
		})
	}
}

// TestRecoverFindsOrphans checks that sagas left by a process
// that died are found by Recover without anyone asking for them.
func TestRecoverFindsOrphans(t *testing.T) {
	clk := newClock()
	store := &saga.MemStore{Now: clk.Now}
	l := newLedger()
	def := placeOrder(l)
	crashAtCreate(t, store, def, "order-1", "order-2")
	clk.Advance(leaseTTL + time.Second)
	var finished atomic.Int32
	opts := options("b")
	opts.Observer = func(_ saga.Event, rec saga.Record) {
		if rec.Status.Finished() {
			finished.Add(1)
		}
	}
	o := start(t, store, def, opts)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go o.Recover(ctx, 10*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for finished.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := finished.Load(); n != 2 {
		t.Fatalf("%d sagas finished, want 2", n)
	}
	for _, id := range []string{"order-1", "order-2"} {
		l.check(t, id, doReserve, doCharge, doCommit)
	}
	if recs, _ := store.Unfinished(context.Background(), def.Name); len(recs) != 0 {
		t.Errorf("%d sagas unfinished", len(recs))
	}
}
