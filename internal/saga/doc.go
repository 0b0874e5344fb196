// Package saga runs sagas: work spread over several services that must
// either all happen or be undone, without a distributed transaction.
//
// A [Definition] is a name and a list of steps. Each [Step] has an action
// and, when it leaves something to undo, a compensation. An
// [Orchestrator] runs the actions in order; when one fails for good it
// runs the compensations of the steps already done, in reverse order, and
// the saga ends [Compensated] with the reason. When every action
// succeeds the saga ends [Completed]. Place-order in the order service is
// one such saga: reserve stock, charge payment, commit stock; a declined
// charge refunds nothing (nothing was charged) and releases the stock.
//
// # State
//
// A saga carries a state of a type S chosen by its definition, a struct
// that encoding/json can encode. Actions and compensations get a pointer
// to a copy of it and may record results in it (the charge id, say); the
// copy is kept, and persisted, only when the call succeeds. A failed
// attempt's changes are dropped, so every attempt starts from the state
// the previous step left.
//
// # Idempotency keys
//
// Every call carries an idempotency key derived from the saga id and the
// step, the same on every attempt, in every process, after any crash:
//
//   - an action's key is "<saga-id>/<step-name>" ([ActionKey]);
//   - a compensation's key is "<saga-id>/<step-name>/compensate"
//     ([CompensationKey]).
//
// The services a step calls must apply a key's effect at most once and
// answer a repeated key as they answered the first call. That is what
// makes replaying a step safe, and the orchestrator does replay: a step
// that was in flight when its process died runs again, with the same key.
// A compensation also gets its action's key ([Exec.ActionKey]), so it can
// name the effect to undo even when the action's answer was lost. Step
// names may not contain "/", so a key names one step of one saga.
//
// # Failures, retries and compensation
//
// An action that returns an error wrapped with [Permanent] (or one that
// [Options.IsPermanent] accepts) failed for good: it is known to have had
// no effect, and the compensations of the steps before it run. Any other
// error is transient: the action is tried again, with exponential
// backoff and jitter (failsafe-go's retrypolicy), up to
// [Options.MaxAttempts] attempts and [Options.StepTimeout]. An action
// that is still failing then has an unknown outcome (its effect may have
// happened, its answer lost), so its own compensation runs too, before
// those of the steps before it. Compensations must therefore tolerate
// "nothing to undo" (and should fence the key, so that a late action
// with that key does nothing).
//
// Compensations are never abandoned: every error, [Permanent] ones
// included, is retried with exponential backoff capped at
// [Options.CompensationMaxBackoff], for as long as the orchestrator runs,
// and the saga stays [Compensating] meanwhile (a saga that stays there is
// what an operator must look at; each failed attempt is logged). If the
// process stops, the next orchestrator that resumes the saga carries on
// with the same compensation and key.
//
// # Persistence
//
// The orchestrator writes the saga's [Record] through a [Store] before
// and after every action and every compensation: which step is in flight,
// which are done, whether it is compensating, the outcome and the failure
// reason. A step therefore runs only once the record says it may be in
// flight, and its success is recorded before the next step starts. One
// SQL table holds it:
//
//	CREATE TABLE sagas (
//	    id           text PRIMARY KEY,
//	    definition   text NOT NULL,
//	    state        bytea NOT NULL,     -- S encoded as JSON
//	    status       text NOT NULL,      -- running, compensating, completed, compensated
//	    step         integer NOT NULL,
//	    in_flight    boolean NOT NULL,
//	    reason       text NOT NULL,
//	    lease_owner  text NOT NULL,      -- '' when nobody holds it
//	    lease_expiry timestamptz,
//	    version      bigint NOT NULL,
//	    created_at   timestamptz NOT NULL,
//	    updated_at   timestamptz NOT NULL
//	);
//	CREATE INDEX sagas_unfinished ON sagas (definition)
//	    WHERE status IN ('running', 'compensating');
//
// Every write is conditional: [Store.Save] writes only while the writer
// holds a live lease and the row still has the version it read. The
// [Store] documentation says what each method must guarantee, with the
// SQL statement that does it; sagatest.VerifyStore checks an implementation.
//
// A service that keeps its own view of the saga (the order service's
// order status and status history) updates it inside [Store.Create] and
// [Store.Save], in the same transaction as the saga row, from the
// [Event] and [Record] they get: the two then never disagree, whatever
// crashes. [Options.Observer] is told of the same writes after they are
// made, for logs and metrics; it can miss one if the process dies.
//
// # Leases and recovery
//
// Only the holder of a saga's lease drives it. The lease has an owner (one
// per orchestrator, unique: [Options.Owner]) and an expiry. The
// orchestrator takes it when it creates or resumes a saga, renews it
// every third of [Options.LeaseTTL] while it drives, and releases it at
// the end. When a renewal is refused (another owner took the lease after
// it expired), or none has succeeded for three quarters of the TTL, the
// driver stops at once: it cancels the context of the call in flight and
// writes nothing more. A lease that expired can be taken by any other
// orchestrator: that is how the sagas of a process that died are
// resumed. [Orchestrator.Resume] takes every unfinished saga of its
// definition whose lease is free or expired and drives it on from where
// its record says, replaying the step that was in flight with the same
// key; [Orchestrator.Recover] calls it periodically.
//
// # Running and waiting
//
// [Orchestrator.Run] creates a saga (idempotently: an id that exists is
// never created again) and returns its outcome. A second Run, or
// [Orchestrator.Wait], with the id of a saga already under way does not
// start a second saga: it waits for the first one's outcome, whether the
// saga is driven in this process (the callers share one driver) or in
// another (they poll the store every [Options.PollInterval], and take the
// saga over if its lease expires). A caller whose context ends stops
// waiting; the saga goes on.
//
// # Crash boundaries
//
// [Options.Boundary], when set, is called at every boundary between a
// write and a call, with a [Boundary] naming the point and the step. A
// hook that returns an error stops the driver right there, as if the
// process had died: nothing more is written and the lease is kept until
// it expires. [KillAt] returns a hook that kills the process itself at
// one boundary, for crash tests that run a real process. The points, in
// the order a saga passes them:
//
//   - "created": the saga was created (by Run), no step started;
//   - "before-action:<step>": the record says the step is in flight;
//     its action has not been called;
//   - "after-action:<step>": the action succeeded; that is not saved;
//   - "action-saved:<step>": the step's success is saved (after the last
//     step, the saga is saved completed);
//   - "action-failed:<step>": the action failed for good; that is not
//     saved;
//   - "failure-saved:<step>": the saga is saved compensating (or
//     compensated, when there is nothing to undo) with the reason;
//   - "before-compensation:<step>": the record says the compensation is
//     in flight; it has not been called;
//   - "after-compensation:<step>": the compensation succeeded; that is
//     not saved;
//   - "compensation-saved:<step>": it is saved (after the last one, the
//     saga is saved compensated).
package saga
