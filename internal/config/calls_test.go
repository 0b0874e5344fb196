package config_test

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/config"
)

// TestCallAndSheddingSettingsAreValidated: every knob of the call policy
// and of load shedding refuses a value out of range, naming its key, so a
// bad change is rejected whole.
func TestCallAndSheddingSettingsAreValidated(t *testing.T) {
	if err := config.DefaultProcess().Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	for _, tc := range []struct {
		key    string
		change func(*config.Process)
	}{
		{"calls/timeout", func(p *config.Process) { p.Calls.Timeout = 0 }},
		{"calls/timeouts/user", func(p *config.Process) { p.Calls.Timeouts = map[string]time.Duration{"user": -time.Second} }},
		{"calls/attempt_timeout", func(p *config.Process) { p.Calls.AttemptTimeout = -time.Millisecond }},
		{"calls/retry/max_attempts", func(p *config.Process) { p.Calls.Retry.MaxAttempts = 0 }},
		{"calls/retry/max_attempts", func(p *config.Process) { p.Calls.Retry.MaxAttempts = 11 }},
		{"calls/retry/max_backoff", func(p *config.Process) { p.Calls.Retry.MaxBackoff = p.Calls.Retry.Backoff - 1 }},
		{"calls/retry/jitter", func(p *config.Process) { p.Calls.Retry.Jitter = 1.5 }},
		{"calls/retry/budget_ratio", func(p *config.Process) { p.Calls.Retry.BudgetRatio = math.NaN() }},
		{"calls/retry/budget_min_per_second", func(p *config.Process) { p.Calls.Retry.BudgetMinPerSecond = -1 }},
		{"calls/retry/budget_window", func(p *config.Process) { p.Calls.Retry.BudgetWindow = time.Millisecond }},
		{"calls/breaker/failures", func(p *config.Process) { p.Calls.Breaker.Failures = p.Calls.Breaker.Window + 1 }},
		{"calls/breaker/window", func(p *config.Process) { p.Calls.Breaker.Window = 0 }},
		{"calls/breaker/open_for", func(p *config.Process) { p.Calls.Breaker.OpenFor = 0 }},
		{"calls/breaker/probes", func(p *config.Process) { p.Calls.Breaker.Probes = 0 }},
		{"calls/throttle/failure_rate", func(p *config.Process) { p.Calls.Throttle.FailureRate = -0.1 }},
		{"calls/throttle/min_calls", func(p *config.Process) { p.Calls.Throttle.MinCalls = 0 }},
		{"calls/throttle/window", func(p *config.Process) { p.Calls.Throttle.Window = 0 }},
		{"calls/throttle/max_rejection_rate", func(p *config.Process) { p.Calls.Throttle.MaxRejectionRate = 2 }},
		{"calls/balancer/decay", func(p *config.Process) { p.Calls.Balancer.Decay = 0 }},
		{"calls/balancer/slow_start", func(p *config.Process) { p.Calls.Balancer.SlowStart = -time.Second }},
		{"calls/hedge/GetUser", func(p *config.Process) { p.Calls.Hedge = map[string]time.Duration{"GetUser": time.Millisecond} }},
		{"calls/hedge/shop.user.v1.UserService.GetUser", func(p *config.Process) {
			p.Calls.Hedge = map[string]time.Duration{"shop.user.v1.UserService.GetUser": 0}
		}},
		{"calls/pool/max_idle", func(p *config.Process) { p.Calls.Pool.MaxIdle = 0 }},
		{"calls/pool/idle_timeout", func(p *config.Process) { p.Calls.Pool.IdleTimeout = 0 }},
		{"shedding/max_limit", func(p *config.Process) { p.Shedding.MaxLimit = 0 }},
		{"shedding/min_limit", func(p *config.Process) { p.Shedding.MinLimit = p.Shedding.MaxLimit + 1 }},
		{"shedding/initial_limit", func(p *config.Process) { p.Shedding.InitialLimit = p.Shedding.MinLimit - 1 }},
		{"shedding/low_priority_share", func(p *config.Process) { p.Shedding.LowPriorityShare = 1.1 }},
		{"shedding/retry_after", func(p *config.Process) { p.Shedding.RetryAfter = 0 }},
	} {
		p := config.DefaultProcess()
		tc.change(&p)
		err := p.Validate()
		if !slices.Contains(config.ErrorKeys(err), tc.key) {
			t.Errorf("%s: error %v does not name the key", tc.key, err)
		}
	}
}
