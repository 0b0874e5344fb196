package chaos

import (
	"reflect"
	"testing"
	"time"
)

// The schedule is the seed's: the same seed, the same faults at the same
// times; every kind comes once before any repeats; it stays within its
// window and its bound.
func TestPlanIsSeededAndBounded(t *testing.T) {
	a := plan(1, 9*time.Second, 80*time.Second, 1000, 2)
	b := plan(1, 9*time.Second, 80*time.Second, 1000, 2)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("two plans of seed 1 differ")
	}
	if c := plan(2, 9*time.Second, 80*time.Second, 1000, 2); reflect.DeepEqual(a, c) {
		t.Fatal("seeds 1 and 2 plan the same drill")
	}
	seen := map[string]bool{}
	for i, f := range a {
		if f.At < 9*time.Second || f.At+f.Hold > 80*time.Second {
			t.Errorf("fault %d (%s) at %v for %v: outside the window", i, f.Kind, f.At, f.Hold)
		}
		if i > 0 && f.At < a[i-1].At+a[i-1].Hold {
			t.Errorf("fault %d overlaps the one before", i)
		}
		if i < len(faultKinds) && seen[f.Kind] {
			t.Errorf("fault %d repeats %s before every kind came once", i, f.Kind)
		}
		seen[f.Kind] = true
	}
	if len(a) < len(faultKinds) {
		t.Errorf("a 90s drill plans %d faults, fewer than the %d kinds", len(a), len(faultKinds))
	}
	if got := plan(1, 9*time.Second, 80*time.Second, 3, 2); len(got) != 3 {
		t.Errorf("max 3 faults: planned %d", len(got))
	}
}

// An order cancelled is an answer; a registration answered
// already_exists on a retry is one too, but not on a first attempt.
func TestAnswered(t *testing.T) {
	for _, c := range []struct {
		call call
		want bool
	}{
		{call{Kind: kindOrder, Code: "ok"}, true},
		{call{Kind: kindOrder, Code: "failed_precondition"}, true},
		{call{Kind: kindProduct, Code: "failed_precondition"}, false},
		{call{Kind: kindRegister, Code: "already_exists", Attempt: 2}, true},
		{call{Kind: kindRegister, Code: "already_exists", Attempt: 1}, false},
		{call{Kind: kindLogin, Code: "unavailable"}, false},
	} {
		if got := answered(c.call); got != c.want {
			t.Errorf("answered(%+v) = %v, want %v", c.call, got, c.want)
		}
	}
}
