package callpolicy

import (
	"sync"
	"time"

	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/budget"
)

// budgetSlots is how many slots a [Budget]'s window is counted in.
const budgetSlots = 10

// Budget caps the retries (or hedges) sent to one upstream at a share of
// its calls over a sliding window, plus a small floor per second: with
// every instance failing, the attempts an upstream sees stay within
// (1 + ratio) times the calls, however many attempts each call may make.
// This is the retry budget of Finagle and gRPC (retry throttling).
//
// failsafe-go's own budget caps the share of retries among the executions
// in flight at one moment, which does not bound their number when
// attempts fail fast and backoff keeps calls waiting between them. Budget
// plugs into the same place: [retrypolicy.Builder.WithBudget] and
// [hedgepolicy.Builder.WithBudget]. It is safe for concurrent use.
type Budget struct {
	ratio    float64
	floor    float64 // retries always allowed per window
	slot     time.Duration
	exceeded func()

	mu      sync.Mutex
	slots   [budgetSlots]struct{ calls, retries float64 }
	current int
	start   time.Time // of the current slot
	calls   float64   // sums over all slots
	retries float64
}

var _ budget.Budget = (*Budget)(nil)

// NewBudget returns a budget allowing retries up to ratio of the calls
// over window, and at least minPerSecond retries per second. exceeded, if
// not nil, is called for every retry refused.
func NewBudget(ratio, minPerSecond float64, window time.Duration, exceeded func()) *Budget {
	return &Budget{
		ratio:    ratio,
		floor:    minPerSecond * window.Seconds(),
		slot:     window / budgetSlots,
		exceeded: exceeded,
		start:    time.Now(),
	}
}

// advance moves the window to now, forgetting slots that fell out of it.
// b.mu must be held.
func (b *Budget) advance(now time.Time) {
	elapsed := now.Sub(b.start)
	if elapsed < b.slot {
		return
	}
	steps := int(elapsed / b.slot)
	if steps > budgetSlots {
		steps = budgetSlots
	}
	for range steps {
		b.current = (b.current + 1) % budgetSlots
		s := &b.slots[b.current]
		b.calls -= s.calls
		b.retries -= s.retries
		s.calls, s.retries = 0, 0
	}
	b.start = b.start.Add(time.Duration(int(elapsed/b.slot)) * b.slot)
}

// Rate is the share of retries among calls in the window.
func (b *Budget) Rate() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(time.Now())
	if b.calls == 0 {
		return 0
	}
	return b.retries / b.calls
}

// RecordExecution counts a call; failsafe-go's retry and hedge policies
// call it once per call.
func (b *Budget) RecordExecution() {
	b.mu.Lock()
	b.advance(time.Now())
	b.slots[b.current].calls++
	b.calls++
	b.mu.Unlock()
}

// ReleaseExecution is called when a call ends; the window forgets it by
// time, not by its end.
func (b *Budget) ReleaseExecution() {}

// TryAcquirePermit reports whether one more retry fits the budget, and
// counts it when it does.
func (b *Budget) TryAcquirePermit() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(time.Now())
	if b.retries+1 > b.ratio*b.calls+b.floor {
		return false
	}
	b.slots[b.current].retries++
	b.retries++
	return true
}

// ReleasePermit is called when a retry ends; see [Budget.ReleaseExecution].
func (b *Budget) ReleasePermit() {}

// OnBudgetExceeded is called by failsafe-go when a retry was refused.
func (b *Budget) OnBudgetExceeded(budget.ExecutionType, failsafe.ExecutionInfo) {
	if b.exceeded != nil {
		b.exceeded()
	}
}
