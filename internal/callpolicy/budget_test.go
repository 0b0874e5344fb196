package callpolicy

import (
	"context"
	"errors"
	"net/http"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/budget"
	"github.com/failsafe-go/failsafe-go/retrypolicy"
)

// elapse moves b's clock forward by d without waiting: the window reads
// time only as the distance from the start of its current slot, so moving
// that start back by d is the same as d passing.
func elapse(b *Budget, d time.Duration) {
	b.mu.Lock()
	b.start = b.start.Add(-d)
	b.mu.Unlock()
}

// record counts n calls in b.
func record(b *Budget, n int) {
	for range n {
		b.RecordExecution()
	}
}

// permits takes retry permits from b until it refuses one, and returns
// how many it granted.
func permits(t *testing.T, b *Budget) int {
	t.Helper()
	for n := 0; n < 100000; n++ {
		if !b.TryAcquirePermit() {
			return n
		}
	}
	t.Fatal("budget never refused a retry")
	return 0
}

func TestBudgetPermits(t *testing.T) {
	// Windows are long so that no slot passes while a case runs.
	for _, tc := range []struct {
		name         string
		ratio        float64
		minPerSecond float64
		window       time.Duration
		calls        int
		want         int
	}{
		{name: "ratio of calls", ratio: 0.2, window: time.Hour, calls: 100, want: 20},
		{name: "no calls, no floor", ratio: 0.2, window: time.Hour, calls: 0, want: 0},
		{name: "under one retry", ratio: 0.2, window: time.Hour, calls: 4, want: 0},
		{name: "exactly one retry", ratio: 0.2, window: time.Hour, calls: 5, want: 1},
		{name: "one per call", ratio: 1, window: time.Hour, calls: 7, want: 7},
		{name: "floor alone", minPerSecond: 0.5, window: 40 * time.Second, calls: 0, want: 20},
		{name: "floor over a shorter window", minPerSecond: 0.5, window: 10 * time.Second, calls: 0, want: 5},
		{name: "floor plus ratio", ratio: 0.1, minPerSecond: 0.1, window: 100 * time.Second, calls: 100, want: 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var exceeded atomic.Int64
			b := NewBudget(tc.ratio, tc.minPerSecond, tc.window, func() { exceeded.Add(1) })
			record(b, tc.calls)
			if got := permits(t, b); got != tc.want {
				t.Fatalf("granted %d retries, want %d", got, tc.want)
			}
			if b.TryAcquirePermit() {
				t.Fatal("a retry was granted after one was refused: refused retries must not be counted")
			}
			var wantRate float64
			if tc.calls > 0 {
				wantRate = float64(tc.want) / float64(tc.calls)
			}
			if got := b.Rate(); got != wantRate {
				t.Errorf("Rate = %v, want %v", got, wantRate)
			}
			if n := exceeded.Load(); n != 0 {
				t.Errorf("exceeded called %d times by TryAcquirePermit; failsafe-go reports refusals through OnBudgetExceeded", n)
			}
		})
	}
}

// TestBudgetUnderRetryPolicy runs the budget where Keel uses it, under a
// failsafe-go retry policy: after 100 calls at ratio 0.2 a call failing
// forever gets 20 retries, the 21st is refused with budget.ErrExceeded
// and reported through OnBudgetExceeded, and the next failing call gets
// no retry at all.
func TestBudgetUnderRetryPolicy(t *testing.T) {
	var exceeded atomic.Int64
	b := NewBudget(0.2, 0, time.Hour, func() { exceeded.Add(1) })
	exec := failsafe.With[any](retrypolicy.NewBuilder[any]().WithMaxRetries(-1).WithBudget(b).Build())
	for range 99 {
		if err := exec.Run(func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	errDown := errors.New("upstream down")
	for _, want := range []struct {
		attempts int
		exceeded int64
	}{
		{attempts: 21, exceeded: 1}, // the 100th call: 20 retries
		{attempts: 1, exceeded: 2},  // the 101st: 20 retries in 101 calls is the budget
	} {
		attempts := 0
		err := exec.Run(func() error { attempts++; return errDown })
		if !errors.Is(err, budget.ErrExceeded) {
			t.Fatalf("error %v, want budget.ErrExceeded", err)
		}
		if attempts != want.attempts {
			t.Errorf("%d attempts, want %d", attempts, want.attempts)
		}
		if n := exceeded.Load(); n != want.exceeded {
			t.Errorf("exceeded called %d times, want %d", n, want.exceeded)
		}
	}
}

// TestBudgetWindowSlides moves the budget's clock by hand: calls and
// retries count while their slot is in the window and are forgotten once
// it leaves.
func TestBudgetWindowSlides(t *testing.T) {
	const window = 100 * time.Second // 10 slots of 10s
	b := NewBudget(0.5, 0, window, nil)

	record(b, 10)
	elapse(b, window/2)
	record(b, 10)
	for range 4 {
		if !b.TryAcquirePermit() {
			t.Fatal("retry refused with 20 calls in the window")
		}
	}
	if got := b.Rate(); got != 0.2 {
		t.Fatalf("Rate = %v with 4 retries in 20 calls", got)
	}

	elapse(b, window/2) // the first 10 calls leave
	if got := b.Rate(); got != 0.4 {
		t.Fatalf("Rate = %v once the first calls left, want 4 retries in 10 calls", got)
	}
	if got := permits(t, b); got != 1 {
		t.Fatalf("granted %d retries with 10 calls and 4 retries in the window, want 1", got)
	}

	elapse(b, window/2) // everything leaves
	if got := b.Rate(); got != 0 {
		t.Fatalf("Rate = %v with an empty window", got)
	}
	if b.TryAcquirePermit() {
		t.Fatal("retry granted with no calls and no floor")
	}

	// After a long idle spell the window starts afresh and keeps counting.
	elapse(b, 1000*window)
	record(b, 10)
	elapse(b, window/10)
	record(b, 10)
	if got := permits(t, b); got != 10 {
		t.Fatalf("granted %d retries with 20 calls after an idle spell, want 10", got)
	}
	elapse(b, window-window/10) // the first 10 calls of the spell leave
	if got := b.Rate(); got != 1 {
		t.Fatalf("Rate = %v, want 10 retries in the 10 calls left", got)
	}
}

// TestBudgetFloorRefillsAsTimePasses uses the real clock with a short
// window: the floor's one retry comes back once the slot it was counted
// in leaves the window, not before.
func TestBudgetFloorRefillsAsTimePasses(t *testing.T) {
	const window = 100 * time.Millisecond // a floor of 10/s allows 1 retry per window
	b := NewBudget(0, 10, window, nil)
	start := time.Now()
	if !b.TryAcquirePermit() {
		t.Fatal("floor retry refused")
	}
	if b.TryAcquirePermit() {
		t.Fatal("second retry granted within one window")
	}
	deadline := time.Now().Add(10 * time.Second)
	for !b.TryAcquirePermit() {
		if time.Now().After(deadline) {
			t.Fatal("the floor retry never came back")
		}
		time.Sleep(time.Millisecond) // polling interval, not a wait for the outcome
	}
	// The slot holding the first retry began at most one slot before it.
	if elapsed := time.Since(start); elapsed < window-window/10 {
		t.Fatalf("retry granted again after %v, before its slot left the %v window", elapsed, window)
	}
}

// deadlineIn is a context whose deadline is always the given time ahead of
// the moment it is asked, so the time left that setTimeout computes is
// exact to far under a millisecond however slowly the test runs.
type deadlineIn time.Duration

func (d deadlineIn) Deadline() (time.Time, bool) { return time.Now().Add(time.Duration(d)), true }
func (deadlineIn) Done() <-chan struct{}         { return nil }
func (deadlineIn) Err() error                    { return nil }
func (deadlineIn) Value(any) any                 { return nil }

func TestSetTimeout(t *testing.T) {
	passed, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	const huge = deadlineIn(1 << 62) // about 146 years
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		header http.Header
		want   http.Header
		ok     bool
	}{
		{name: "grpc", ctx: deadlineIn(5 * time.Second),
			header: http.Header{"Content-Type": {"application/grpc"}},
			want:   http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"5000m"}}, ok: true},
		{name: "grpc with codec", ctx: deadlineIn(1500 * time.Millisecond),
			header: http.Header{"Content-Type": {"application/grpc+proto"}},
			want:   http.Header{"Content-Type": {"application/grpc+proto"}, "Grpc-Timeout": {"1500m"}}, ok: true},
		{name: "grpc-web", ctx: deadlineIn(2 * time.Second),
			header: http.Header{"Content-Type": {"application/grpc-web+proto"}},
			want:   http.Header{"Content-Type": {"application/grpc-web+proto"}, "Grpc-Timeout": {"2000m"}}, ok: true},
		{name: "grpc replaces the caller's timeout", ctx: deadlineIn(time.Second),
			header: http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"1H"}},
			want:   http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"1000m"}}, ok: true},
		{name: "grpc under a millisecond rounds up", ctx: deadlineIn(900 * time.Microsecond),
			header: http.Header{"Content-Type": {"application/grpc"}},
			want:   http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"1m"}}, ok: true},
		{name: "grpc eight digits of milliseconds", ctx: deadlineIn(99999999 * time.Millisecond),
			header: http.Header{"Content-Type": {"application/grpc"}},
			want:   http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"99999999m"}}, ok: true},
		{name: "grpc past eight digits in seconds", ctx: deadlineIn(100000000 * time.Millisecond),
			header: http.Header{"Content-Type": {"application/grpc"}},
			want:   http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"100000S"}}, ok: true},
		{name: "grpc seconds round down", ctx: deadlineIn(100001500 * time.Millisecond),
			header: http.Header{"Content-Type": {"application/grpc"}},
			want:   http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"100001S"}}, ok: true},
		{name: "grpc capped at eight digits of seconds", ctx: huge,
			header: http.Header{"Content-Type": {"application/grpc"}},
			want:   http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"99999999S"}}, ok: true},
		{name: "connect stream", ctx: deadlineIn(5 * time.Second),
			header: http.Header{"Content-Type": {"application/connect+proto"}},
			want:   http.Header{"Content-Type": {"application/connect+proto"}, "Connect-Timeout-Ms": {"5000"}}, ok: true},
		{name: "connect unary rounds up", ctx: deadlineIn(1500 * time.Microsecond),
			header: http.Header{"Content-Type": {"application/json"}},
			want:   http.Header{"Content-Type": {"application/json"}, "Connect-Timeout-Ms": {"2"}}, ok: true},
		{name: "connect replaces the caller's timeout", ctx: deadlineIn(time.Second),
			header: http.Header{"Content-Type": {"application/proto"}, "Connect-Timeout-Ms": {"60000"}},
			want:   http.Header{"Content-Type": {"application/proto"}, "Connect-Timeout-Ms": {"1000"}}, ok: true},
		{name: "connect capped at ten digits", ctx: huge,
			header: http.Header{"Content-Type": {"application/proto"}},
			want:   http.Header{"Content-Type": {"application/proto"}, "Connect-Timeout-Ms": {"9999999999"}}, ok: true},
		{name: "no content type is connect", ctx: deadlineIn(time.Second),
			header: http.Header{},
			want:   http.Header{"Connect-Timeout-Ms": {"1000"}}, ok: true},
		{name: "deadline passed", ctx: passed,
			header: http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"1H"}},
			want:   http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"1H"}}, ok: false},
		{name: "deadline now", ctx: deadlineIn(0),
			header: http.Header{"Content-Type": {"application/json"}},
			want:   http.Header{"Content-Type": {"application/json"}}, ok: false},
		{name: "no deadline", ctx: context.Background(),
			header: http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"1H"}},
			want:   http.Header{"Content-Type": {"application/grpc"}, "Grpc-Timeout": {"1H"}}, ok: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.header.Clone()
			if ok := setTimeout(h, tc.ctx); ok != tc.ok {
				t.Fatalf("setTimeout = %v, want %v", ok, tc.ok)
			}
			if !reflect.DeepEqual(h, tc.want) {
				t.Fatalf("header %v, want %v", h, tc.want)
			}
		})
	}
}
