package ratelimit

import (
	"testing"
	"time"
)

// TestOneProbeAtATime: while Redis is down, the call that finds
// RetryEvery passed probes it, and holds the next probe off for another
// RetryEvery from now, so the calls made while it waits on Redis are
// decided in process rather than each waiting on Redis too. (Internal:
// which call probes cannot be told from outside but by timing it.)
func TestOneProbeAtATime(t *testing.T) {
	t.Parallel()
	l := New(Options{RetryEvery: time.Hour})
	defer l.Close()
	if !l.mayCall() {
		t.Fatal("Redis up: a call may not go to it")
	}
	l.downUntil.Store(time.Now().Add(-time.Millisecond).UnixNano())
	if !l.mayCall() {
		t.Fatal("RetryEvery passed: the call may not probe Redis")
	}
	if until := time.Unix(0, l.downUntil.Load()); until.Before(time.Now().Add(59 * time.Minute)) {
		t.Fatalf("after a probe, Redis is skipped until %v, want an hour from now", until)
	}
	for i := range 3 {
		if l.mayCall() {
			t.Fatalf("call %d during a probe may go to Redis too", i+1)
		}
	}
}
