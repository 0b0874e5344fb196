package saga_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/saga"
)

// failure says how one call to the ledger goes.
type failure int

const (
	succeed    failure = iota
	declined           // permanent: no effect, ever
	lostBefore         // transient, before any effect
	lostAfter          // transient, after the effect: the answer was lost
	hang               // wait for the call's context to end, no effect
)

var (
	errDeclined = errors.New("declined")
	errLost     = errors.New("answer lost")
)

// always fails every call with f.
func always(f failure) func(int) failure { return func(int) failure { return f } }

// first fails calls 1 to n with f, then lets them succeed.
func first(n int, f failure) func(int) failure {
	return func(call int) failure {
		if call <= n {
			return f
		}
		return succeed
	}
}

// ledger stands for the remote services the steps call (inventory,
// payment). Like them it applies a key's effect once and answers a
// repeated key as it did the first time, and a compensation undoes its
// action's effect if there is one and succeeds anyway if not. It also
// writes down each effect per saga and step whatever the key, so that a
// step replayed under another key shows as a second effect, and it
// notices two calls of one step of one saga running at once.
type ledger struct {
	delay time.Duration // how long each call takes

	mu      sync.Mutex
	script  map[string]func(call int) failure // by "do:<step>" or "undo:<step>"; call counts per key from 1
	calls   map[string]int                    // by key
	done    map[string]bool                   // action keys whose effect was applied
	undone  map[string]bool                   // compensation keys that ran to success
	effects map[string][]string               // by saga: "do:<step>" and "undo:<step>", in order
	running map[string]int                    // by "<saga>/<step>": calls under way
	overlap []string                          // "<saga>/<step>" of calls that overlapped
	onCall  func(key string, call int)        // called at each call's start, unlocked
	entered chan string                       // if set, gets each call's key as it starts
}

func newLedger() *ledger {
	return &ledger{
		script:  map[string]func(int) failure{},
		calls:   map[string]int{},
		done:    map[string]bool{},
		undone:  map[string]bool{},
		effects: map[string][]string{},
		running: map[string]int{},
	}
}

// fail sets how the calls of op ("do:<step>" or "undo:<step>") go.
func (l *ledger) fail(op string, f func(int) failure) *ledger {
	l.script[op] = f
	return l
}

// begin counts a call, notes whether it overlaps another of its step and
// returns how it must go.
func (l *ledger) begin(op string, x saga.Exec) failure {
	l.mu.Lock()
	l.calls[x.Key]++
	call := l.calls[x.Key]
	slot := x.SagaID + "/" + x.Step
	l.running[slot]++
	if l.running[slot] > 1 {
		l.overlap = append(l.overlap, slot)
	}
	f := succeed
	if s := l.script[op+":"+x.Step]; s != nil {
		f = s(call)
	}
	onCall, entered := l.onCall, l.entered
	l.mu.Unlock()
	if onCall != nil {
		onCall(x.Key, call)
	}
	if entered != nil {
		entered <- x.Key
	}
	time.Sleep(l.delay)
	return f
}

func (l *ledger) end(x saga.Exec) {
	l.mu.Lock()
	l.running[x.SagaID+"/"+x.Step]--
	l.mu.Unlock()
}

// do is an action: it applies the effect of x.Key once.
func (l *ledger) do(ctx context.Context, x saga.Exec) error {
	f := l.begin("do", x)
	defer l.end(x)
	switch f {
	case declined:
		return saga.Permanent(errDeclined)
	case lostBefore:
		return errLost
	case hang:
		<-ctx.Done()
		return ctx.Err()
	}
	l.mu.Lock()
	if !l.done[x.Key] {
		l.done[x.Key] = true
		l.effects[x.SagaID] = append(l.effects[x.SagaID], "do:"+x.Step)
	}
	l.mu.Unlock()
	if f == lostAfter {
		return errLost
	}
	return nil
}

// undo is a compensation: it undoes the effect of x.ActionKey, if any,
// once per x.Key.
func (l *ledger) undo(ctx context.Context, x saga.Exec) error {
	f := l.begin("undo", x)
	defer l.end(x)
	switch f {
	case declined:
		return saga.Permanent(errDeclined)
	case lostBefore:
		return errLost
	case hang:
		<-ctx.Done()
		return ctx.Err()
	}
	l.mu.Lock()
	if !l.undone[x.Key] {
		l.undone[x.Key] = true
		if l.done[x.ActionKey] {
			l.effects[x.SagaID] = append(l.effects[x.SagaID], "undo:"+x.Step)
		}
	}
	l.mu.Unlock()
	if f == lostAfter {
		return errLost
	}
	return nil
}

// callsOf returns how many calls were made with key.
func (l *ledger) callsOf(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls[key]
}

// check fails t unless saga id's effects are want, in order, and no two
// calls of one step overlapped.
func (l *ledger) check(t *testing.T, id string, want ...string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if got := l.effects[id]; !slices.Equal(got, want) {
		t.Errorf("effects of %s: %q, want %q", id, got, want)
	}
	if len(l.overlap) > 0 {
		t.Errorf("calls of one step ran at once: %q", l.overlap)
	}
}

// order is the state of the test saga, as the order service's would be.
type order struct {
	OrderID  string `json:"order_id"`
	Amount   int    `json:"amount"`
	Reserved bool   `json:"reserved"`
	ChargeID string `json:"charge_id,omitempty"`
	Refunded bool   `json:"refunded"`
}

// Step names of the test saga.
const (
	reserve = "reserve-stock"
	charge  = "charge-payment"
	commit  = "commit-stock"
)

// Effects in a ledger.
var (
	doReserve   = "do:" + reserve
	doCharge    = "do:" + charge
	doCommit    = "do:" + commit
	undoReserve = "undo:" + reserve
	undoCharge  = "undo:" + charge
)

// placeOrder is the order service's saga on l: reserve stock, charge
// payment, commit stock; a charge records its id in the state.
func placeOrder(l *ledger) saga.Definition[order] {
	return saga.Definition[order]{
		Name: "place-order",
		Steps: []saga.Step[order]{
			{
				Name: reserve,
				Action: func(ctx context.Context, x saga.Exec, o *order) error {
					if err := l.do(ctx, x); err != nil {
						return err
					}
					o.Reserved = true
					return nil
				},
				Compensate: func(ctx context.Context, x saga.Exec, o *order) error {
					if err := l.undo(ctx, x); err != nil {
						return err
					}
					o.Reserved = false
					return nil
				},
			},
			{
				Name: charge,
				Action: func(ctx context.Context, x saga.Exec, o *order) error {
					if err := l.do(ctx, x); err != nil {
						return err
					}
					o.ChargeID = "ch-" + x.Key
					return nil
				},
				Compensate: func(ctx context.Context, x saga.Exec, o *order) error {
					if err := l.undo(ctx, x); err != nil {
						return err
					}
					o.Refunded = true
					return nil
				},
			},
			{
				Name:   commit,
				Action: func(ctx context.Context, x saga.Exec, _ *order) error { return l.do(ctx, x) },
			},
		},
	}
}

// completedOrder is the final state of order o's saga id that completed.
func completedOrder(id string, o order) order {
	o.Reserved, o.ChargeID = true, "ch-"+saga.ActionKey(id, charge)
	return o
}

// clock is a store clock that tests move by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// journal writes down the writes an orchestrator reports.
type journal struct {
	mu      sync.Mutex
	entries []string
}

// observe is an [saga.Options.Observer].
func (j *journal) observe(ev saga.Event, rec saga.Record) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, entry(ev, rec))
}

// entry describes a write: "<kind> <step> <status>@<step index>", with
// a "*" while in flight.
func entry(ev saga.Event, rec saga.Record) string {
	s := fmt.Sprintf("%s %s %s@%d", ev.Kind, ev.StepName, rec.Status, rec.Step)
	if rec.InFlight {
		s += "*"
	}
	return strings.Join(strings.Fields(s), " ")
}

func (j *journal) list() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.entries)
}

// leaseTTL is the lease of the tests' orchestrators: long, so that only
// the fake store clock expires leases.
const leaseTTL = 5 * time.Second

// options returns quick options for a test orchestrator named owner.
func options(owner string) saga.Options {
	return saga.Options{
		Owner:                  owner,
		LeaseTTL:               leaseTTL,
		MaxAttempts:            3,
		Backoff:                time.Millisecond,
		MaxBackoff:             2 * time.Millisecond,
		CompensationMaxBackoff: 2 * time.Millisecond,
		PollInterval:           5 * time.Millisecond,
		Logger:                 slog.New(slog.DiscardHandler),
	}
}

// start returns an orchestrator of def on store, closed when t ends.
func start(t *testing.T, store saga.Store, def saga.Definition[order], opts saga.Options) *saga.Orchestrator[order] {
	t.Helper()
	o, err := saga.New(store, def, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = o.Close() })
	return o
}

// runCtx is a context for a test's calls, which must not take long.
func runCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
