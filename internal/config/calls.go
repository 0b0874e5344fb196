package config

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Calls is how a process calls its peers (the edge: every service it
// routes to): deadlines, retries and their budget, per-instance circuit
// breakers, the throttle of a failing upstream, load balancing, hedging
// and the connection pools. Every key is dynamic: a change applies to the
// next call (breakers and budgets start afresh). The package
// internal/callpolicy turns it into policies.
type Calls struct {
	// Timeout is the deadline of a call whose caller set none, from 1ms
	// to 10m. Default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// Timeouts overrides Timeout for calls to one upstream service, by its
	// logical name: calls/timeouts/<service>. Default none.
	Timeouts map[string]time.Duration `yaml:"timeouts"`
	// AttemptTimeout bounds each attempt within the call's deadline, so a
	// stuck instance is given up on while there is time to try another;
	// 0 means the call's deadline alone. Default 0.
	AttemptTimeout time.Duration `yaml:"attempt_timeout"`
	// Retry is when and how often a failed attempt is sent again.
	Retry Retry `yaml:"retry"`
	// Breaker takes a failing instance out of rotation and probes it back.
	Breaker Breaker `yaml:"breaker"`
	// Throttle sheds calls locally to a method of an upstream whose calls
	// mostly fail.
	Throttle Throttle `yaml:"throttle"`
	// Balancer picks an instance for each attempt.
	Balancer Balancer `yaml:"balancer"`
	// Hedge sends a second attempt to another instance when the first has
	// not answered after a delay, for side-effect-free methods only, by
	// the method's full protobuf name:
	// calls/hedge/shop.user.v1.UserService.GetUser: 20ms. Default none
	// (hedging off).
	Hedge map[string]time.Duration `yaml:"hedge"`
	// Pool is the upstream connection pools.
	Pool Pool `yaml:"pool"`
}

// Retry says when a failed attempt is sent again: only on unavailable (and
// resource_exhausted when the server gave a retry hint), only for calls
// that are idempotent by contract or never reached a server, always to
// another instance, within the call's deadline and the retry budget.
type Retry struct {
	// MaxAttempts is the most attempts of one call, first included, 1 to
	// 10; 1 turns retries off. Default 3.
	MaxAttempts int `yaml:"max_attempts"`
	// Backoff is the delay before the first retry, doubling for each
	// further one, from 0 to 10s. Default 5ms.
	Backoff time.Duration `yaml:"backoff"`
	// MaxBackoff caps the delay between retries, at least Backoff.
	// Default 200ms.
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// Jitter varies each delay randomly by up to this fraction of it, 0 to
	// 1. Default 0.5.
	Jitter float64 `yaml:"jitter"`
	// BudgetRatio caps retries to an upstream at this fraction of its
	// calls over BudgetWindow, 0 to 1, so retries cannot multiply an
	// outage. Default 0.2.
	BudgetRatio float64 `yaml:"budget_ratio"`
	// BudgetMinPerSecond is a floor of retries always allowed per second,
	// so an upstream with little traffic can still be retried, 0 to 1000.
	// Default 5.
	BudgetMinPerSecond float64 `yaml:"budget_min_per_second"`
	// BudgetWindow is the window the budget counts over, 1s to 5m.
	// Default 10s.
	BudgetWindow time.Duration `yaml:"budget_window"`
}

// Breaker is the circuit breaker of each upstream instance: an instance
// whose attempts get no answer (unreachable, reset, timed out) is taken
// out of rotation, then probed back in. Answers, errors included, say the
// instance is alive and never open it. With every instance's breaker open
// calls are sent anyway (panic routing).
type Breaker struct {
	// Failures out of the last Window attempts open the breaker, 1 to
	// Window. Default 5.
	Failures int `yaml:"failures"`
	// Window is how many recent attempts Failures counts over, 1 to 1000.
	// Default 10.
	Window int `yaml:"window"`
	// OpenFor is how long an open breaker keeps its instance out before
	// probing it, 10ms to 10m. Default 5s.
	OpenFor time.Duration `yaml:"open_for"`
	// Probes is how many probe attempts must succeed in a row to close the
	// breaker again, 1 to 100. Default 3.
	Probes int `yaml:"probes"`
}

// Throttle is the client-side throttle of each method of an upstream (the
// adaptive throttling of Google's SRE book): when calls to it fail more than
// FailureRate over Window, calls are rejected locally with a probability
// that grows with the failures, up to MaxRejectionRate, so a failing
// upstream is not buried under calls.
type Throttle struct {
	// FailureRate is the failure rate above which calls are throttled, 0
	// to 1; 0.5 matches the SRE book's K=2. Default 0.5.
	FailureRate float64 `yaml:"failure_rate"`
	// MinCalls is how many calls in Window must be seen before any is
	// throttled, 1 to 100000. Default 20.
	MinCalls int `yaml:"min_calls"`
	// Window is the period the failure rate is measured over, 1s to 10m.
	// Default 30s.
	Window time.Duration `yaml:"window"`
	// MaxRejectionRate caps the share of calls rejected locally, 0 to 1.
	// Default 0.9.
	MaxRejectionRate float64 `yaml:"max_rejection_rate"`
}

// Balancer picks the instance of each attempt: power of two choices,
// scored by outstanding calls weighted by a moving average of latency.
type Balancer struct {
	// Decay is the time constant of the latency and success averages,
	// 100ms to 10m. Default 10s.
	Decay time.Duration `yaml:"decay"`
	// SlowStart is how long a new instance takes to reach its full share
	// of calls, 0 (off) to 10m. Default 10s.
	SlowStart time.Duration `yaml:"slow_start"`
}

// Pool is how upstream connections are kept.
type Pool struct {
	// MaxIdle is how many idle HTTP/1.1 connections are kept per instance,
	// 1 to 10000. Default 256.
	MaxIdle int `yaml:"max_idle"`
	// IdleTimeout closes a connection idle this long; keep it below the
	// upstream's own idle timeout (Keel servers: 120s), 1s to 1h.
	// Default 90s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// ResponseHeaderTimeout bounds the wait for an answer's headers once
	// the request is sent, within the call's deadline; 0 means the
	// deadline alone, up to 10m. Default 0.
	ResponseHeaderTimeout time.Duration `yaml:"response_header_timeout"`
}

// DefaultCalls returns the documented defaults of [Calls].
func DefaultCalls() Calls {
	return Calls{
		Timeout: 10 * time.Second,
		Retry: Retry{
			MaxAttempts:        3,
			Backoff:            5 * time.Millisecond,
			MaxBackoff:         200 * time.Millisecond,
			Jitter:             0.5,
			BudgetRatio:        0.2,
			BudgetMinPerSecond: 5,
			BudgetWindow:       10 * time.Second,
		},
		Breaker:  Breaker{Failures: 5, Window: 10, OpenFor: 5 * time.Second, Probes: 3},
		Throttle: Throttle{FailureRate: 0.5, MinCalls: 20, Window: 30 * time.Second, MaxRejectionRate: 0.9},
		Balancer: Balancer{Decay: 10 * time.Second, SlowStart: 10 * time.Second},
		Pool:     Pool{MaxIdle: 256, IdleTimeout: 90 * time.Second},
	}
}

// TimeoutFor returns the default deadline of calls to service.
func (c Calls) TimeoutFor(service string) time.Duration {
	if d, ok := c.Timeouts[service]; ok {
		return d
	}
	return c.Timeout
}

// validate reports every setting of c out of range, with keys under
// prefix (e.g. "calls").
func (c Calls) validate(prefix string) []error {
	v := rangeCheck{prefix: prefix}
	v.duration("timeout", c.Timeout, time.Millisecond, 10*time.Minute)
	for name, d := range c.Timeouts {
		v.duration("timeouts/"+name, d, time.Millisecond, 10*time.Minute)
	}
	v.duration("attempt_timeout", c.AttemptTimeout, 0, 10*time.Minute)
	r := c.Retry
	v.integer("retry/max_attempts", r.MaxAttempts, 1, 10)
	v.duration("retry/backoff", r.Backoff, 0, 10*time.Second)
	v.duration("retry/max_backoff", r.MaxBackoff, max(r.Backoff, 0), time.Minute)
	v.fraction("retry/jitter", r.Jitter)
	v.fraction("retry/budget_ratio", r.BudgetRatio)
	v.float("retry/budget_min_per_second", r.BudgetMinPerSecond, 0, 1000)
	v.duration("retry/budget_window", r.BudgetWindow, time.Second, 5*time.Minute)
	b := c.Breaker
	v.integer("breaker/window", b.Window, 1, 1000)
	v.integer("breaker/failures", b.Failures, 1, max(b.Window, 1))
	v.duration("breaker/open_for", b.OpenFor, 10*time.Millisecond, 10*time.Minute)
	v.integer("breaker/probes", b.Probes, 1, 100)
	t := c.Throttle
	v.fraction("throttle/failure_rate", t.FailureRate)
	v.integer("throttle/min_calls", t.MinCalls, 1, 100000)
	v.duration("throttle/window", t.Window, time.Second, 10*time.Minute)
	v.fraction("throttle/max_rejection_rate", t.MaxRejectionRate)
	v.duration("balancer/decay", c.Balancer.Decay, 100*time.Millisecond, 10*time.Minute)
	v.duration("balancer/slow_start", c.Balancer.SlowStart, 0, 10*time.Minute)
	for method, d := range c.Hedge {
		if strings.Count(method, ".") < 2 {
			v.errs = append(v.errs, &KeyError{Key: prefix + "/hedge/" + method, Err: errors.New("want a method's full name, e.g. shop.user.v1.UserService.GetUser")})
		}
		v.duration("hedge/"+method, d, time.Millisecond, time.Minute)
	}
	v.integer("pool/max_idle", c.Pool.MaxIdle, 1, 10000)
	v.duration("pool/idle_timeout", c.Pool.IdleTimeout, time.Second, time.Hour)
	v.duration("pool/response_header_timeout", c.Pool.ResponseHeaderTimeout, 0, 10*time.Minute)
	return v.errs
}

// rangeCheck collects KeyErrors for values out of range, keys under a
// prefix.
type rangeCheck struct {
	prefix string
	errs   []error
}

func (v *rangeCheck) bad(key string, format string, args ...any) {
	v.errs = append(v.errs, &KeyError{Key: v.prefix + "/" + key, Err: fmt.Errorf(format, args...)})
}

func (v *rangeCheck) duration(key string, d, lo, hi time.Duration) {
	if d < lo || d > hi {
		v.bad(key, "%s is out of range [%s, %s]", d, lo, hi)
	}
}

func (v *rangeCheck) integer(key string, n, lo, hi int) {
	if n < lo || n > hi {
		v.bad(key, "%d is out of range [%d, %d]", n, lo, hi)
	}
}

func (v *rangeCheck) float(key string, f, lo, hi float64) {
	if !(f >= lo && f <= hi) { // also refuses NaN
		v.bad(key, "%g is out of range [%g, %g]", f, lo, hi)
	}
}

func (v *rangeCheck) fraction(key string, f float64) { v.float(key, f, 0, 1) }
