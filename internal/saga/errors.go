package saga

import "errors"

// ErrNotFound is returned by [Store.Get] and by [Orchestrator.Wait] for
// a saga id that does not exist.
var ErrNotFound = errors.New("saga not found")

// ErrNotAcquired is returned by [Store.Acquire] when the lease was not
// taken: another owner holds it and it has not expired, the saga is
// finished, or there is no such saga.
var ErrNotAcquired = errors.New("saga lease not acquired")

// ErrLeaseLost is returned by [Store.Renew] and [Store.Save] when the
// caller no longer holds a live lease on the saga, or (Save) the record
// changed since the caller read it. The caller must stop driving the
// saga. Errors of a driver that stopped for this reason wrap it too.
var ErrLeaseLost = errors.New("saga lease lost")

// ErrStopped is wrapped by the error of a driver that stopped before the
// saga's end: its orchestrator was closed ([ErrClosed]), it lost the
// lease ([ErrLeaseLost]), or a boundary hook stopped it (the hook's
// error). The saga is unfinished; whoever next holds its lease carries
// it on.
var ErrStopped = errors.New("saga driver stopped")

// ErrClosed is returned by the methods of an [Orchestrator] that was
// closed, and wrapped by the errors of the drivers closing it stopped.
var ErrClosed = errors.New("saga orchestrator closed")

// permanentError marks an error as permanent; see [Permanent].
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as a permanent failure: returned by an action, it
// means the action had no effect and trying again cannot help (a
// declined card, an unknown item), so the saga compensates the steps
// before it at once, without retrying and without compensating this
// step. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or an error it wraps, was marked with
// [Permanent].
func IsPermanent(err error) bool {
	_, ok := errors.AsType[*permanentError](err)
	return ok
}
