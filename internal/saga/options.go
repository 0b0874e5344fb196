package saga

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/google/uuid"
)

// Options tune an [Orchestrator]. The zero value of each field means its
// default.
type Options struct {
	// Owner identifies the orchestrator in leases. It must be unique
	// among the orchestrators sharing a store, and differ from one run of
	// a process to the next, or a restarted process could write under
	// its dead predecessor's lease. Default: "<hostname>-<random uuid>".
	Owner string
	// LeaseTTL is how long a lease lasts unless renewed; a driver renews
	// it every third of that, and stops when no renewal has succeeded for
	// three quarters of it. A crashed process's sagas are resumed after
	// it. Default: 30s.
	LeaseTTL time.Duration
	// MaxAttempts is how many times an action is tried before its
	// transient failures count as a failure with unknown outcome.
	// Default: 5.
	MaxAttempts int
	// StepTimeout bounds the time spent retrying one action, attempts
	// and backoff included, per driver; past it the action counts as
	// failed with unknown outcome. Default: none (MaxAttempts alone).
	StepTimeout time.Duration
	// AttemptTimeout bounds each call of an action or compensation (its
	// context's deadline). Default: none (the callee's own deadlines).
	AttemptTimeout time.Duration
	// Backoff is the delay before the first retry of an action or a
	// compensation; it doubles with every retry, with jitter.
	// Default: 100ms.
	Backoff time.Duration
	// MaxBackoff caps the delay between retries of an action.
	// Default: 5s.
	MaxBackoff time.Duration
	// CompensationMaxBackoff caps the delay between retries of a
	// compensation, which are retried until they succeed. Default: 1m.
	CompensationMaxBackoff time.Duration
	// Jitter is the share of each retry delay that is randomised, up or
	// down. Default: 0.25.
	Jitter float64
	// PollInterval is how often a caller waiting for a saga that another
	// orchestrator drives reads it from the store. Default: 500ms.
	PollInterval time.Duration
	// IsPermanent reports whether an action's error is permanent, in
	// addition to the errors marked with [Permanent] (e.g. a Connect
	// code the service knows to be final). Default: none.
	IsPermanent func(error) bool
	// Observer, if set, is called after each write of a saga's record,
	// with what it recorded and the record as stored, on the driver's
	// goroutine: keep it quick. It can miss a write if the process dies;
	// what must follow the saga exactly belongs in the [Store].
	Observer func(Event, Record)
	// Boundary, if set, is called at every boundary a driver passes. An
	// error stops the driver there as if the process had died: no more
	// writes, and the lease is kept until it expires. For crash tests;
	// see [KillAt]. Default: none.
	Boundary func(Boundary) error
	// Logger receives retries, store errors and stopped drivers.
	// Default: slog.Default().
	Logger *slog.Logger
}

// withDefaults returns o with its defaults filled in, or why o is
// invalid.
func (o Options) withDefaults() (Options, error) {
	if o.Owner == "" {
		host, _ := os.Hostname()
		o.Owner = host + "-" + uuid.NewString()
	}
	set := func(d *time.Duration, def time.Duration) {
		if *d == 0 {
			*d = def
		}
	}
	set(&o.LeaseTTL, 30*time.Second)
	set(&o.Backoff, 100*time.Millisecond)
	set(&o.MaxBackoff, 5*time.Second)
	set(&o.CompensationMaxBackoff, time.Minute)
	set(&o.PollInterval, 500*time.Millisecond)
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 5
	}
	if o.Jitter == 0 {
		o.Jitter = 0.25
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.LeaseTTL < 3*time.Millisecond:
		return o, fmt.Errorf("saga: lease TTL %s is too short", o.LeaseTTL)
	case o.MaxAttempts < 1:
		return o, fmt.Errorf("saga: max attempts %d must be at least 1", o.MaxAttempts)
	case o.Backoff < 0 || o.MaxBackoff < o.Backoff || o.CompensationMaxBackoff < o.Backoff:
		return o, fmt.Errorf("saga: backoff %s must be at least 0 and at most the max backoffs (%s, %s)", o.Backoff, o.MaxBackoff, o.CompensationMaxBackoff)
	case o.Jitter < 0 || o.Jitter > 1:
		return o, fmt.Errorf("saga: jitter %g must be between 0 and 1", o.Jitter)
	case o.StepTimeout < 0 || o.AttemptTimeout < 0 || o.PollInterval < 0:
		return o, fmt.Errorf("saga: timeouts and intervals must not be negative")
	}
	return o, nil
}
