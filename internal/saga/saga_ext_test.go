package saga_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/saga"
)

func TestRunCompletes(t *testing.T) {
	l := newLedger()
	store := &saga.MemStore{}
	var j journal
	opts := options("a")
	opts.Observer = j.observe
	o := start(t, store, placeOrder(l), opts)
	ctx := runCtx(t)

	in := order{OrderID: "o-1", Amount: 42}
	out, err := o.Run(ctx, "order-1", in)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := saga.Outcome[order]{ID: "order-1", Status: saga.Completed, State: completedOrder("order-1", in)}
	if out != want {
		t.Errorf("outcome %+v, want %+v", out, want)
	}
	l.check(t, "order-1", doReserve, doCharge, doCommit)
	// Each step is saved in flight before it runs and done after.
	wantJournal := []string{
		"created running@0",
		"step-started reserve-stock running@0*",
		"step-done reserve-stock running@1",
		"step-started charge-payment running@1*",
		"step-done charge-payment running@2",
		"step-started commit-stock running@2*",
		"step-done commit-stock completed@3",
	}
	if got := j.list(); !slices.Equal(got, wantJournal) {
		t.Errorf("writes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantJournal, "\n"))
	}
	rec, err := store.Get(ctx, "order-1")
	if err != nil {
		t.Fatal(err)
	}
	if rec.LeaseOwner != "" || rec.Status != saga.Completed || rec.Definition != "place-order" {
		t.Errorf("stored %+v, want completed with its lease released", rec)
	}

	// Running it again returns the same outcome and calls nothing.
	again, err := o.Run(ctx, "order-1", order{OrderID: "other"})
	if err != nil || again != want {
		t.Errorf("second Run = %+v, %v; want %+v", again, err, want)
	}
	if n := l.callsOf(saga.ActionKey("order-1", reserve)); n != 1 {
		t.Errorf("reserve called %d times, want 1", n)
	}
	if waited, err := o.Wait(ctx, "order-1"); err != nil || waited != want {
		t.Errorf("Wait = %+v, %v; want %+v", waited, err, want)
	}
}

func TestPermanentFailureCompensatesInReverse(t *testing.T) {
	for _, tc := range []struct {
		step    string
		effects []string
	}{
		{reserve, nil},
		{charge, []string{doReserve, undoReserve}},
		{commit, []string{doReserve, doCharge, undoCharge, undoReserve}},
	} {
		t.Run(tc.step, func(t *testing.T) {
			l := newLedger().fail("do:"+tc.step, always(declined))
			var j journal
			opts := options("a")
			opts.Observer = j.observe
			o := start(t, &saga.MemStore{}, placeOrder(l), opts)

			out, err := o.Run(runCtx(t), "order-1", order{OrderID: "o-1"})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if out.Status != saga.Compensated || out.Reason != tc.step+": declined" {
				t.Errorf("outcome %s %q, want compensated %q", out.Status, out.Reason, tc.step+": declined")
			}
			l.check(t, "order-1", tc.effects...)
			if n := l.callsOf(saga.ActionKey("order-1", tc.step)); n != 1 {
				t.Errorf("the declined action was called %d times, want once (no retry)", n)
			}
			if n := l.callsOf(saga.CompensationKey("order-1", tc.step)); n != 0 {
				t.Errorf("the declined step's own compensation was called %d times, want never", n)
			}
			entries := j.list()
			if last := entries[len(entries)-1]; !strings.HasPrefix(last, "step-failed") && !strings.HasPrefix(last, "compensation-done") || !strings.Contains(last, "compensated@-1") {
				t.Errorf("last write %q, want the saga compensated", last)
			}
			if tc.step == reserve && out.State.Reserved {
				t.Errorf("state %+v after failing to reserve", out.State)
			}
			if tc.step == commit && (!out.State.Refunded || out.State.Reserved || out.State.ChargeID == "") {
				t.Errorf("state %+v, want the charge recorded, then refunded and the stock released", out.State)
			}
		})
	}
}

func TestTransientFailuresAreRetried(t *testing.T) {
	l := newLedger().fail("do:"+charge, func(call int) failure {
		return []failure{lostBefore, lostAfter, succeed}[min(call, 3)-1]
	})
	var attempts []int
	var mu sync.Mutex
	def := placeOrder(l)
	action := def.Steps[1].Action
	def.Steps[1].Action = func(ctx context.Context, x saga.Exec, o *order) error {
		mu.Lock()
		attempts = append(attempts, x.Attempt)
		mu.Unlock()
		return action(ctx, x, o)
	}
	var j journal
	opts := options("a")
	opts.Observer = j.observe
	o := start(t, &saga.MemStore{}, def, opts)

	out, err := o.Run(runCtx(t), "order-1", order{})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if out.Status != saga.Completed {
		t.Errorf("outcome %s %q, want completed", out.Status, out.Reason)
	}
	if n := l.callsOf(saga.ActionKey("order-1", charge)); n != 3 {
		t.Errorf("charge called %d times with its key, want 3", n)
	}
	if !slices.Equal(attempts, []int{1, 2, 3}) {
		t.Errorf("attempts %v, want 1, 2, 3", attempts)
	}
	l.check(t, "order-1", doReserve, doCharge, doCommit)
	started := 0
	for _, e := range j.list() {
		if strings.HasPrefix(e, "step-started charge-payment") {
			started++
		}
	}
	if started != 1 {
		t.Errorf("charge saved as started %d times, want once", started)
	}
}

func TestExhaustedStepIsCompensatedToo(t *testing.T) {
	for _, tc := range []struct {
		name    string
		step    string
		fail    failure
		effects []string
	}{
		{"reserve answer lost", reserve, lostAfter, []string{doReserve, undoReserve}},
		{"charge answer lost", charge, lostAfter, []string{doReserve, doCharge, undoCharge, undoReserve}},
		{"charge never reached", charge, lostBefore, []string{doReserve, undoReserve}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLedger().fail("do:"+tc.step, always(tc.fail))
			o := start(t, &saga.MemStore{}, placeOrder(l), options("a"))

			out, err := o.Run(runCtx(t), "order-1", order{})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			reason := tc.step + ": no success after 3 attempts: answer lost"
			if out.Status != saga.Compensated || out.Reason != reason {
				t.Errorf("outcome %s %q, want compensated %q", out.Status, out.Reason, reason)
			}
			if n := l.callsOf(saga.ActionKey("order-1", tc.step)); n != 3 {
				t.Errorf("action called %d times, want 3", n)
			}
			if n := l.callsOf(saga.CompensationKey("order-1", tc.step)); n != 1 {
				t.Errorf("the failed step's own compensation was called %d times, want once", n)
			}
			l.check(t, "order-1", tc.effects...)
		})
	}
}

func TestRetriableStepIsRetriedUntilItSucceeds(t *testing.T) {
	// commit-stock comes after the charge: failing it for an unknown
	// reason must not refund a sale whose stock may be committed. Six
	// lost answers, twice the three attempts an ordinary step gets.
	l := newLedger().fail("do:"+commit, first(6, lostBefore))
	def := placeOrder(l)
	def.Steps[2].Retriable = true
	o := start(t, &saga.MemStore{}, def, options("a"))

	out, err := o.Run(runCtx(t), "order-1", order{})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if out.Status != saga.Completed {
		t.Fatalf("outcome %s %q, want completed", out.Status, out.Reason)
	}
	if n := l.callsOf(saga.ActionKey("order-1", commit)); n != 7 {
		t.Errorf("commit called %d times, want 7", n)
	}
	l.check(t, "order-1", doReserve, doCharge, doCommit)
}

func TestRetriableStepFailingForGoodCompensates(t *testing.T) {
	l := newLedger().fail("do:"+commit, always(declined))
	def := placeOrder(l)
	def.Steps[2].Retriable = true
	o := start(t, &saga.MemStore{}, def, options("a"))

	out, err := o.Run(runCtx(t), "order-1", order{})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if out.Status != saga.Compensated || out.Reason != commit+": declined" {
		t.Errorf("outcome %s %q, want compensated %q", out.Status, out.Reason, commit+": declined")
	}
	l.check(t, "order-1", doReserve, doCharge, undoCharge, undoReserve)
}

func TestCompensationIsRetriedUntilItSucceeds(t *testing.T) {
	// Seven calls, more than the actions' three attempts, a permanent
	// error among them, and the effect applied at the fifth.
	script := []failure{lostBefore, lostBefore, lostBefore, declined, lostAfter, lostAfter, succeed}
	l := newLedger().
		fail("do:"+commit, always(declined)).
		fail("undo:"+charge, func(call int) failure { return script[min(call, len(script))-1] })
	store := &saga.MemStore{}
	var seen []saga.Record
	l.onCall = func(key string, call int) {
		if key == saga.CompensationKey("order-1", charge) && call > 1 {
			rec, err := store.Get(context.Background(), "order-1")
			if err != nil {
				t.Error(err)
			}
			seen = append(seen, rec)
		}
	}
	var j journal
	opts := options("a")
	opts.Observer = j.observe
	o := start(t, store, placeOrder(l), opts)

	out, err := o.Run(runCtx(t), "order-1", order{})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if out.Status != saga.Compensated || out.Reason != commit+": declined" {
		t.Errorf("outcome %s %q, want compensated", out.Status, out.Reason)
	}
	if n := l.callsOf(saga.CompensationKey("order-1", charge)); n != len(script) {
		t.Errorf("refund called %d times, want %d", n, len(script))
	}
	l.check(t, "order-1", doReserve, doCharge, undoCharge, undoReserve)
	for _, rec := range seen {
		if rec.Status != saga.Compensating || rec.Step != 1 || !rec.InFlight {
			t.Errorf("while the refund was retried the saga was stored %s@%d (in flight %v), want compensating@1 in flight", rec.Status, rec.Step, rec.InFlight)
		}
	}
	wantTail := []string{
		"step-failed commit-stock compensating@1",
		"compensation-started charge-payment compensating@1*",
		"compensation-done charge-payment compensating@0",
		"compensation-started reserve-stock compensating@0*",
		"compensation-done reserve-stock compensated@-1",
	}
	if got := j.list(); !slices.Equal(got[len(got)-len(wantTail):], wantTail) {
		t.Errorf("writes:\n%s\nwant them to end with:\n%s", strings.Join(got, "\n"), strings.Join(wantTail, "\n"))
	}
}

func TestSameIDRunsMakeOneSaga(t *testing.T) {
	l := newLedger()
	l.delay = time.Millisecond
	var creates atomic.Int32
	store := &saga.MemStore{Apply: func(rec saga.Record, ev saga.Event) error {
		if ev.Kind == saga.Created {
			creates.Add(1)
		}
		return nil
	}}
	o1 := start(t, store, placeOrder(l), options("a"))
	o2 := start(t, store, placeOrder(l), options("b"))
	ctx := runCtx(t)

	const callers = 20
	outs := make([]saga.Outcome[order], callers)
	errs := make([]error, callers)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range callers {
		o := o1
		if i%2 == 1 {
			o = o2
		}
		wg.Go(func() {
			<-gate
			outs[i], errs[i] = o.Run(ctx, "order-42", order{OrderID: "o-42", Amount: i})
		})
	}
	close(gate)
	wg.Wait()

	for i := range callers {
		if errs[i] != nil {
			t.Fatalf("caller %d: %v", i, errs[i])
		}
		if outs[i] != outs[0] {
			t.Errorf("caller %d got %+v, caller 0 %+v", i, outs[i], outs[0])
		}
	}
	if outs[0].Status != saga.Completed {
		t.Errorf("outcome %s %q, want completed", outs[0].Status, outs[0].Reason)
	}
	if n := creates.Load(); n != 1 {
		t.Errorf("saga created %d times, want once", n)
	}
	for _, step := range []string{reserve, charge, commit} {
		if n := l.callsOf(saga.ActionKey("order-42", step)); n != 1 {
			t.Errorf("%s called %d times, want once", step, n)
		}
	}
	l.check(t, "order-42", doReserve, doCharge, doCommit)
}

func TestWaitUnknownSaga(t *testing.T) {
	o := start(t, &saga.MemStore{}, placeOrder(newLedger()), options("a"))
	if _, err := o.Wait(runCtx(t), "nope"); !errors.Is(err, saga.ErrNotFound) {
		t.Errorf("Wait of an unknown saga: %v, want ErrNotFound", err)
	}
}

func TestRunRefusesAnotherDefinitionsSaga(t *testing.T) {
	store := &saga.MemStore{}
	l := newLedger()
	first := start(t, store, placeOrder(l), options("a"))
	if _, err := first.Run(runCtx(t), "id-1", order{}); err != nil {
		t.Fatal(err)
	}
	def := placeOrder(l)
	def.Name = "refund-order"
	other := start(t, store, def, options("b"))
	if _, err := other.Run(runCtx(t), "id-1", order{}); err == nil || !strings.Contains(err.Error(), `"place-order" saga`) {
		t.Errorf("Run of another definition's saga: %v, want an error naming it", err)
	}
}

func TestNewRejectsBadDefinitionsAndOptions(t *testing.T) {
	act := func(context.Context, saga.Exec, *order) error { return nil }
	for _, tc := range []struct {
		name string
		def  saga.Definition[order]
		opts saga.Options
	}{
		{"no name", saga.Definition[order]{Steps: []saga.Step[order]{{Name: "a", Action: act}}}, saga.Options{}},
		{"no steps", saga.Definition[order]{Name: "d"}, saga.Options{}},
		{"unnamed step", saga.Definition[order]{Name: "d", Steps: []saga.Step[order]{{Action: act}}}, saga.Options{}},
		{"slash in step name", saga.Definition[order]{Name: "d", Steps: []saga.Step[order]{{Name: "a/b", Action: act}}}, saga.Options{}},
		{"same step name twice", saga.Definition[order]{Name: "d", Steps: []saga.Step[order]{{Name: "a", Action: act}, {Name: "a", Action: act}}}, saga.Options{}},
		{"no action", saga.Definition[order]{Name: "d", Steps: []saga.Step[order]{{Name: "a"}}}, saga.Options{}},
		{"negative attempts", placeOrder(newLedger()), saga.Options{MaxAttempts: -1}},
		{"jitter above 1", placeOrder(newLedger()), saga.Options{Jitter: 2}},
		{"backoff above its cap", placeOrder(newLedger()), saga.Options{Backoff: time.Minute}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if o, err := saga.New(&saga.MemStore{}, tc.def, tc.opts); err == nil {
				_ = o.Close()
				t.Error("New accepted it")
			}
		})
	}
	if o, err := saga.New(&saga.MemStore{}, placeOrder(newLedger()), saga.Options{}); err != nil {
		t.Errorf("New with default options: %v", err)
	} else {
		if !strings.Contains(o.Owner(), "-") {
			t.Errorf("default owner %q", o.Owner())
		}
		_ = o.Close()
	}
}

// TestStoreKeepsOwnTablesInStep keeps an order table in step with the
// saga through MemStore.Apply, as the order service does in its ent
// store's transactions, and shows that a failed write of the caller's
// table leaves the saga record unwritten (the driver writes both again).
func TestStoreKeepsOwnTablesInStep(t *testing.T) {
	type orderRow struct {
		status  string
		reason  string
		history []string
	}
	var mu sync.Mutex
	orders := map[string]*orderRow{}
	failOnce := true
	store := &saga.MemStore{Apply: func(rec saga.Record, ev saga.Event) error {
		mu.Lock()
		defer mu.Unlock()
		if ev.Kind == saga.StepDone && ev.StepName == reserve && failOnce {
			failOnce = false
			return errors.New("order table unavailable")
		}
		row := orders[rec.ID]
		if ev.Kind == saga.Created {
			row = &orderRow{}
			orders[rec.ID] = row
		}
		status := row.status
		switch rec.Status {
		case saga.Running:
			status = "PENDING"
		case saga.Compensating:
			status = "CANCELLING"
		case saga.Completed:
			status = "CONFIRMED"
		case saga.Compensated:
			status, row.reason = "CANCELLED", rec.Reason
		}
		if status != row.status {
			row.status = status
			row.history = append(row.history, status)
		}
		return nil
	}}
	l := newLedger().fail("do:"+charge, always(declined))
	def := placeOrder(l)
	var reserveSaves []int64
	o := start(t, store, def, func() saga.Options {
		opts := options("a")
		opts.Observer = func(ev saga.Event, rec saga.Record) {
			if ev.Kind == saga.StepDone && ev.StepName == reserve {
				reserveSaves = append(reserveSaves, rec.Version)
			}
		}
		return opts
	}())
	out, err := o.Run(runCtx(t), "order-1", order{})
	if err != nil {
		t.Fatal(err)
	}
	if out.Status != saga.Compensated {
		t.Fatalf("outcome %s", out.Status)
	}
	mu.Lock()
	defer mu.Unlock()
	row := orders["order-1"]
	if row.status != "CANCELLED" || row.reason != charge+": declined" || !slices.Equal(row.history, []string{"PENDING", "CANCELLING", "CANCELLED"}) {
		t.Errorf("order row %+v, want CANCELLED with the reason after PENDING, CANCELLING", *row)
	}
	// Versions: created 1, reserve started 2, reserve done 3, once the
	// refused write was written again.
	if failOnce || !slices.Equal(reserveSaves, []int64{3}) {
		t.Errorf("reserve's success saved as versions %v, want once, as version 3", reserveSaves)
	}
	l.check(t, "order-1", doReserve, undoReserve)
}
