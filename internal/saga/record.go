package saga

import "time"

// Status is where a saga stands.
type Status string

// The statuses of a saga. Running and Compensating are unfinished;
// Completed and Compensated are final.
const (
	// Running: the actions are being run; Record.Step is the step in
	// flight or next.
	Running Status = "running"
	// Compensating: an action failed for good; Record.Step is the step
	// whose compensation is in flight or next, counting down.
	Compensating Status = "compensating"
	// Completed: every action succeeded.
	Completed Status = "completed"
	// Compensated: an action failed for good and every compensation
	// needed has run; Record.Reason says why.
	Compensated Status = "compensated"
)

// Finished reports whether s is final (Completed or Compensated).
func (s Status) Finished() bool { return s == Completed || s == Compensated }

// Record is a saga as the [Store] holds it: one row of the table the
// package documentation shows.
type Record struct {
	// ID identifies the saga; the caller chooses it (the order service
	// uses the PlaceOrder idempotency key).
	ID string
	// Definition is the [Definition.Name] of the saga's definition.
	Definition string
	// State is the saga's state, encoded as JSON.
	State []byte
	// Status is where the saga stands.
	Status Status
	// Step is the index of a step in the definition. While Running, the
	// steps before it are done and it is the one in flight (InFlight) or
	// next; Completed sagas have it past the last step. While
	// Compensating, it is the step whose compensation is in flight
	// (InFlight) or next; the compensations after it are done.
	// Compensated sagas have it at -1.
	Step int
	// InFlight says that the action (Running) or compensation
	// (Compensating) of Step may have been called and its success is not
	// recorded: a driver that resumes the saga calls it again, with the
	// same key.
	InFlight bool
	// Reason says why the saga is compensating or compensated:
	// "<step>: <error>" for a permanent failure, "<step>: no success
	// after N attempts: <last error>" for an action that kept failing.
	Reason string
	// LeaseOwner is the owner that holds the lease, "" for none.
	LeaseOwner string
	// LeaseExpiry is when the lease expires, by the store's clock.
	LeaseExpiry time.Time
	// Version counts the writes of the record's content and the leases
	// taken on it; every conditional write compares it.
	Version int64
	// CreatedAt is when the saga was created, by the store's clock.
	CreatedAt time.Time
	// UpdatedAt is when the record was last written, by the store's
	// clock.
	UpdatedAt time.Time
}

// EventKind names what a write of a saga's record records.
type EventKind string

// The kinds of [Event], one for each write an orchestrator makes.
const (
	// Created: the saga was created, Running at step 0 (Store.Create).
	Created EventKind = "created"
	// StepStarted: the step's action is about to be called.
	StepStarted EventKind = "step-started"
	// StepDone: the step's action succeeded. After the last step the
	// record is Completed.
	StepDone EventKind = "step-done"
	// StepFailed: the step's action failed for good; the record is
	// Compensating, or Compensated when nothing needs undoing, with the
	// reason.
	StepFailed EventKind = "step-failed"
	// CompensationStarted: the step's compensation is about to be
	// called.
	CompensationStarted EventKind = "compensation-started"
	// CompensationDone: the step's compensation succeeded. After the
	// last one the record is Compensated.
	CompensationDone EventKind = "compensation-done"
)

// Event says what a write of a saga's record records; the [Store] gets it
// with the record, to keep the caller's own tables in step in the same
// transaction, and so does [Options.Observer].
type Event struct {
	// Kind is what happened.
	Kind EventKind
	// Step is the index of the step concerned, -1 for Created.
	Step int
	// StepName is that step's name, "" for Created.
	StepName string
}
