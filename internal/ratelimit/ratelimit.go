// Package ratelimit limits how often one caller may do something: n
// events per period, with bursts of up to a given size, per key (a user,
// an address) and per named limit.
//
// Every limiter here runs GCRA, the generic cell rate algorithm: a token
// bucket kept as one number per key, the theoretical arrival time (TAT) of
// the next event were events spaced evenly. An event at time now is
// allowed when TAT - burst*interval <= now, and then moves the TAT on by
// one interval; a key whose TAT has passed holds no state worth keeping.
//
//   - [Local] keeps the TATs in process memory, in a bounded map: a flood
//     of distinct keys evicts the oldest state, never grows memory past
//     the bound.
//   - [Redis] keeps them in Redis, updated by one Lua script on the
//     server's clock, so every process sharing the server shares the
//     limit.
//   - [Limiter] uses Redis while it answers and falls back to a [Local]
//     while it does not (fail open to per-process limits, never refuse
//     every call), saying so once per outage.
package ratelimit

import (
	"errors"
	"fmt"
	"time"
)

// Limit is a rate: Rate events per Per, in bursts of up to Burst at once.
type Limit struct {
	// Rate is how many events Per allows on average; at least 1.
	Rate int
	// Per is the period Rate is counted over; at least 1µs.
	Per time.Duration
	// Burst is how many events may come at once after a quiet spell;
	// at least 1.
	Burst int
}

// Validate reports a limit that cannot be enforced.
func (l Limit) Validate() error {
	switch {
	case l.Rate < 1:
		return fmt.Errorf("rate %d: want at least 1", l.Rate)
	case l.Per < time.Microsecond:
		return fmt.Errorf("per %s: want at least 1µs", l.Per)
	case l.Burst < 1:
		return fmt.Errorf("burst %d: want at least 1", l.Burst)
	case l.Per/time.Duration(l.Rate) < time.Microsecond:
		return errors.New("rate/per: more than one event per microsecond")
	}
	return nil
}

// interval is the even spacing of events at this rate.
func (l Limit) interval() time.Duration { return l.Per / time.Duration(l.Rate) }

// Result is the decision on one event.
type Result struct {
	// Allowed is true when the event is within the limit.
	Allowed bool
	// RetryAfter, for an event refused, is how long until one would be
	// allowed; 0 for an event allowed.
	RetryAfter time.Duration
}

// gcra decides an event at now for a key whose TAT is tat (zero: no
// state), under l. It returns the decision and the new TAT (unchanged
// when refused).
func gcra(tat, now int64, l Limit) (Result, int64) {
	interval := int64(l.interval())
	if tat < now {
		tat = now
	}
	next := tat + interval
	allowAt := next - interval*int64(l.Burst)
	if allowAt > now {
		return Result{RetryAfter: time.Duration(allowAt - now)}, tat
	}
	return Result{Allowed: true}, next
}
