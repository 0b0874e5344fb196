package saga

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Definition is a kind of saga: a name, stored with each saga so that an
// orchestrator resumes only its own, and the steps run in order. Steps
// may be added at the end of a definition while sagas of it are under
// way; renaming, removing or reordering steps changes the keys and
// indexes of those sagas and is not supported.
type Definition[S any] struct {
	// Name names the definition in the store, e.g. "place-order".
	Name string
	// Steps are run in order; at least one.
	Steps []Step[S]
}

// Step is one step of a [Definition].
type Step[S any] struct {
	// Name names the step in keys, records and reasons, e.g.
	// "charge-payment". Unique within the definition, without "/".
	Name string
	// Action does the step's work. It gets a copy of the saga's state,
	// kept if it returns nil. An error wrapped with [Permanent] means the
	// action had no effect and never will; any other error is retried.
	Action func(ctx context.Context, x Exec, state *S) error
	// Compensate undoes the step's work: it runs after a later step
	// failed for good, or after this step's own action kept failing (its
	// effect unknown). It must tolerate having nothing to undo. It is
	// retried until it succeeds. Nil when the step leaves nothing to
	// undo.
	Compensate func(ctx context.Context, x Exec, state *S) error
	// Retriable marks a step after the saga's pivot, the step past which
	// the saga should complete (in place-order, committing stock once the
	// charge is taken): a transient failure of its action is retried
	// until it succeeds, with the capped backoff of compensations, and
	// never counts as a failure with unknown outcome, which would undo a
	// step that may well have happened. A permanent failure (the
	// reservation expired) still compensates the steps before it.
	Retriable bool
}

// Exec describes one call of an action or a compensation.
type Exec struct {
	// SagaID is the id of the saga.
	SagaID string
	// Step is the step's name.
	Step string
	// Key is the call's idempotency key: [ActionKey] for an action,
	// [CompensationKey] for a compensation. Every attempt of the call,
	// in any process, has the same key.
	Key string
	// ActionKey is the key of the step's action, for a compensation to
	// name the effect it undoes.
	ActionKey string
	// Attempt counts the attempts of the call by this driver, from 1. It
	// starts again from 1 when another driver resumes the saga.
	Attempt int
}

// ActionKey returns the idempotency key of the action of step in saga
// sagaID: "<sagaID>/<step>".
func ActionKey(sagaID, step string) string { return sagaID + "/" + step }

// CompensationKey returns the idempotency key of the compensation of
// step in saga sagaID: "<sagaID>/<step>/compensate".
func CompensationKey(sagaID, step string) string { return sagaID + "/" + step + "/compensate" }

// validate reports what is wrong with d, if anything.
func (d Definition[S]) validate() error {
	if d.Name == "" {
		return errors.New("saga: definition has no name")
	}
	if len(d.Steps) == 0 {
		return fmt.Errorf("saga: definition %s has no steps", d.Name)
	}
	seen := make(map[string]bool, len(d.Steps))
	for i, s := range d.Steps {
		switch {
		case s.Name == "":
			return fmt.Errorf("saga: definition %s: step %d has no name", d.Name, i)
		case strings.Contains(s.Name, "/"):
			return fmt.Errorf("saga: definition %s: step name %q contains '/'", d.Name, s.Name)
		case seen[s.Name]:
			return fmt.Errorf("saga: definition %s: step name %q is used twice", d.Name, s.Name)
		case s.Action == nil:
			return fmt.Errorf("saga: definition %s: step %s has no action", d.Name, s.Name)
		}
		seen[s.Name] = true
	}
	return nil
}

// compensationAtOrBefore returns the index of the last step at or before
// i that has a compensation, or -1 if none has.
func (d Definition[S]) compensationAtOrBefore(i int) int {
	for ; i >= 0; i-- {
		if d.Steps[i].Compensate != nil {
			return i
		}
	}
	return -1
}
