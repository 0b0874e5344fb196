package config

import "time"

// Shedding is a process's adaptive load shedding: a concurrency limit on
// the calls it serves that follows latency, so that when it saturates the
// excess is refused at once (resource_exhausted with a retry hint) instead
// of queueing until it times out. Health, reflection and the operators'
// endpoints are never shed. Dynamic: a change starts a new limit from
// InitialLimit.
type Shedding struct {
	// Enabled turns shedding on. Default true.
	Enabled bool `yaml:"enabled"`
	// MinLimit is the lowest the concurrency limit goes, 1 to MaxLimit.
	// Default 4.
	MinLimit int `yaml:"min_limit"`
	// MaxLimit is the highest the concurrency limit goes, 1 to 100000.
	// Default 1000.
	MaxLimit int `yaml:"max_limit"`
	// InitialLimit is where the limit starts, MinLimit to MaxLimit.
	// Default 100.
	InitialLimit int `yaml:"initial_limit"`
	// LowPriorityShare is the share of the limit that calls marked low
	// priority (Keel-Priority: low) may use, 0 to 1: they are shed first.
	// Default 0.5.
	LowPriorityShare float64 `yaml:"low_priority_share"`
	// RetryAfter is the retry hint sent with a refusal, 1ms to 1m.
	// Default 1s.
	RetryAfter time.Duration `yaml:"retry_after"`
}

// DefaultShedding returns the documented defaults of [Shedding].
func DefaultShedding() Shedding {
	return Shedding{Enabled: true, MinLimit: 4, MaxLimit: 1000, InitialLimit: 100, LowPriorityShare: 0.5, RetryAfter: time.Second}
}

// validate reports every setting of s out of range, with keys under
// prefix (e.g. "shedding").
func (s Shedding) validate(prefix string) []error {
	v := rangeCheck{prefix: prefix}
	v.integer("max_limit", s.MaxLimit, 1, 100000)
	v.integer("min_limit", s.MinLimit, 1, max(s.MaxLimit, 1))
	v.integer("initial_limit", s.InitialLimit, s.MinLimit, max(s.MaxLimit, s.MinLimit))
	v.fraction("low_priority_share", s.LowPriorityShare)
	v.duration("retry_after", s.RetryAfter, time.Millisecond, time.Minute)
	return v.errs
}
