package saga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/failsafe-go/failsafe-go"
	"github.com/failsafe-go/failsafe-go/retrypolicy"
)

// driver drives one saga whose lease its orchestrator holds.
type driver[S any] struct {
	o      *Orchestrator[S]
	ctx    context.Context // ends when the driver must stop
	cancel context.CancelCauseFunc
	rec    Record // as last stored
	halted bool   // a boundary hook stopped the driver
}

// drive brings rec, whose lease the orchestrator took with a request
// sent at leased, to its end, and returns the finished record. created
// says Run has just created it.
func (o *Orchestrator[S]) drive(ctx context.Context, rec Record, leased time.Time, created bool) (Record, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stopBeat := o.heartbeat(ctx, cancel, rec.ID, leased)
	d := &driver[S]{o: o, ctx: ctx, cancel: cancel, rec: rec}
	err := d.run(created)
	stopBeat()
	if err == nil {
		o.release(rec.ID)
		return d.rec, nil
	}
	// A driver that lost its lease has nothing to release, and one a hook
	// stopped plays dead. Otherwise (closing, or a fault of this saga's)
	// let the lease go so that the next driver need not wait for it.
	if !d.halted && !errors.Is(context.Cause(ctx), ErrLeaseLost) {
		o.release(rec.ID)
	}
	level := slog.LevelWarn
	if errors.Is(err, ErrClosed) || d.halted {
		level = slog.LevelInfo
	}
	o.log.Log(context.Background(), level, "saga: driver stopped before the end", slog.String("saga", rec.ID), slog.Any("err", err))
	return Record{}, err
}

// run drives the saga from its record to its end.
func (d *driver[S]) run(created bool) error {
	if created {
		if err := d.boundary(PointCreated, -1); err != nil {
			return err
		}
	}
	n := len(d.o.def.Steps)
	for {
		var err error
		switch d.rec.Status {
		case Completed, Compensated:
			return nil
		case Running:
			if d.rec.Step < 0 || d.rec.Step >= n {
				return fmt.Errorf("saga %s: running at step %d but definition %s has %d steps", d.rec.ID, d.rec.Step, d.o.def.Name, n)
			}
			err = d.act(d.rec.Step)
		case Compensating:
			if d.rec.Step >= n {
				return fmt.Errorf("saga %s: compensating step %d but definition %s has %d steps", d.rec.ID, d.rec.Step, d.o.def.Name, n)
			}
			err = d.compensate(d.rec.Step)
		default:
			return fmt.Errorf("saga %s: unknown status %q", d.rec.ID, d.rec.Status)
		}
		if err != nil {
			return err
		}
	}
}

// act runs the action of step i and records how it went.
func (d *driver[S]) act(i int) error {
	step := d.o.def.Steps[i]
	if err := d.checkState(); err != nil {
		return err
	}
	if !d.rec.InFlight {
		next := d.rec
		next.InFlight = true
		if err := d.save(next, Event{Kind: StepStarted, Step: i, StepName: step.Name}); err != nil {
			return err
		}
	}
	if err := d.boundary(BeforeAction, i); err != nil {
		return err
	}
	state, attempts, err := d.call(i, false)
	if d.ctx.Err() != nil {
		return d.stopped()
	}
	if err == nil {
		if err := d.boundary(AfterAction, i); err != nil {
			return err
		}
		next := d.rec
		next.State, next.Step, next.InFlight = state, i+1, false
		if next.Step == len(d.o.def.Steps) {
			next.Status = Completed
		}
		if err := d.save(next, Event{Kind: StepDone, Step: i, StepName: step.Name}); err != nil {
			return err
		}
		return d.boundary(ActionSaved, i)
	}

	if err := d.boundary(ActionFailed, i); err != nil {
		return err
	}
	next := d.rec
	next.Status, next.InFlight = Compensating, false
	if d.o.permanent(err) {
		// The action had no effect: undo the steps before it.
		next.Reason = fmt.Sprintf("%s: %v", step.Name, err)
		next.Step = d.o.def.compensationAtOrBefore(i - 1)
	} else {
		// The action's effect is unknown: undo it too.
		next.Reason = fmt.Sprintf("%s: no success after %d attempts: %v", step.Name, attempts, err)
		next.Step = d.o.def.compensationAtOrBefore(i)
	}
	if next.Step < 0 {
		next.Status = Compensated
	}
	d.o.log.Warn("saga: step failed; compensating", slog.String("saga", d.rec.ID), slog.String("reason", next.Reason))
	if err := d.save(next, Event{Kind: StepFailed, Step: i, StepName: step.Name}); err != nil {
		return err
	}
	return d.boundary(FailureSaved, i)
}

// compensate runs the compensation of step j, or of the last step before
// it that has one, and records it.
func (d *driver[S]) compensate(j int) error {
	k := d.o.def.compensationAtOrBefore(j)
	if k < 0 {
		// Only a record from an older definition gets here.
		next := d.rec
		next.Status, next.Step, next.InFlight = Compensated, -1, false
		return d.save(next, Event{Kind: CompensationDone, Step: -1})
	}
	step := d.o.def.Steps[k]
	if err := d.checkState(); err != nil {
		return err
	}
	if !d.rec.InFlight || k != j {
		next := d.rec
		next.Step, next.InFlight = k, true
		if err := d.save(next, Event{Kind: CompensationStarted, Step: k, StepName: step.Name}); err != nil {
			return err
		}
	}
	if err := d.boundary(BeforeCompensation, k); err != nil {
		return err
	}
	state, _, err := d.call(k, true)
	if d.ctx.Err() != nil {
		return d.stopped()
	}
	if err != nil {
		// Compensations are retried until the context ends; this is a
		// failure of the retry machinery itself.
		return fmt.Errorf("saga %s: compensation of %s: %w", d.rec.ID, step.Name, err)
	}
	if err := d.boundary(AfterCompensation, k); err != nil {
		return err
	}
	next := d.rec
	next.State, next.InFlight = state, false
	next.Step = d.o.def.compensationAtOrBefore(k - 1)
	if next.Step < 0 {
		next.Status = Compensated
	}
	if err := d.save(next, Event{Kind: CompensationDone, Step: k, StepName: step.Name}); err != nil {
		return err
	}
	return d.boundary(CompensationSaved, k)
}

// checkState reports whether the record's state decodes: a saga whose
// state does not is a fault, not a failed step.
func (d *driver[S]) checkState() error {
	var s S
	if err := json.Unmarshal(d.rec.State, &s); err != nil {
		return fmt.Errorf("saga %s: decode state: %w", d.rec.ID, err)
	}
	return nil
}

// call runs the action of step i, or its compensation, with retries, and
// returns the state it left (encoded), the attempts made and the last
// error. An action is retried on transient errors up to the limits of
// the options (a [Step.Retriable] one until the context ends); a
// compensation on every error until the context ends.
func (d *driver[S]) call(i int, compensating bool) ([]byte, int, error) {
	opts := d.o.opts
	step := d.o.def.Steps[i]
	fn, key, what := step.Action, ActionKey(d.rec.ID, step.Name), "action"
	if compensating {
		fn, key, what = step.Compensate, CompensationKey(d.rec.ID, step.Name), "compensation"
	}
	b := retrypolicy.NewBuilder[[]byte]().WithJitterFactor(opts.Jitter).ReturnLastFailure()
	if compensating {
		b = b.WithMaxRetries(-1).WithBackoff(opts.Backoff, opts.CompensationMaxBackoff)
	} else {
		b = b.HandleIf(func(_ []byte, err error) bool { return err != nil && !d.o.permanent(err) })
		switch {
		case step.Retriable:
			b = b.WithMaxRetries(-1).WithBackoff(opts.Backoff, opts.CompensationMaxBackoff)
		default:
			b = b.WithMaxAttempts(opts.MaxAttempts).WithBackoff(opts.Backoff, opts.MaxBackoff)
			if opts.StepTimeout > 0 {
				b = b.WithMaxDuration(opts.StepTimeout)
			}
		}
	}
	b = b.OnRetryScheduled(func(ev failsafe.ExecutionScheduledEvent[[]byte]) {
		d.o.log.Warn("saga: "+what+" failed; retrying",
			slog.String("saga", d.rec.ID), slog.String("step", step.Name),
			slog.Int("attempt", ev.Attempts()), slog.Duration("delay", ev.Delay), slog.Any("err", ev.LastError()))
	})
	attempts := 0
	state, err := failsafe.With[[]byte](b.Build()).WithContext(d.ctx).Get(func() ([]byte, error) {
		attempts++
		var s S
		if err := json.Unmarshal(d.rec.State, &s); err != nil {
			return nil, fmt.Errorf("decode state: %w", err)
		}
		ctx, cancel := d.ctx, context.CancelFunc(func() {})
		if opts.AttemptTimeout > 0 {
			ctx, cancel = context.WithTimeout(ctx, opts.AttemptTimeout)
		}
		defer cancel()
		x := Exec{SagaID: d.rec.ID, Step: step.Name, Key: key, ActionKey: ActionKey(d.rec.ID, step.Name), Attempt: attempts}
		if err := fn(ctx, x, &s); err != nil {
			return nil, err
		}
		out, err := json.Marshal(&s)
		if err != nil {
			return nil, fmt.Errorf("encode state: %w", err)
		}
		return out, nil
	})
	return state, attempts, err
}

// save writes next, a successor of the stored record, and makes it the
// driver's record. It retries errors of the store until the write is
// refused (the lease is lost: the driver stops) or the driver stops.
func (d *driver[S]) save(next Record, ev Event) error {
	delay := d.o.opts.Backoff
	for {
		if d.ctx.Err() != nil {
			return d.stopped()
		}
		rec, err := d.o.store.Save(d.ctx, next, ev)
		if err == nil {
			d.rec = rec
			d.o.observe(ev, rec)
			return nil
		}
		if errors.Is(err, ErrLeaseLost) {
			d.cancel(fmt.Errorf("save %s: %w", ev.Kind, err))
			return d.stopped()
		}
		if d.ctx.Err() != nil {
			return d.stopped()
		}
		d.o.log.Warn("saga: store write failed; retrying",
			slog.String("saga", d.rec.ID), slog.String("event", string(ev.Kind)), slog.Any("err", err))
		t := time.NewTimer(jitter(delay, d.o.opts.Jitter))
		select {
		case <-d.ctx.Done():
			t.Stop()
		case <-t.C:
		}
		delay = min(2*delay, d.o.opts.MaxBackoff)
	}
}

// boundary calls the boundary hook, if any, at point p of step i; an
// error from it stops the driver.
func (d *driver[S]) boundary(p Point, i int) error {
	hook := d.o.opts.Boundary
	if hook == nil {
		return nil
	}
	b := Boundary{SagaID: d.rec.ID, Point: p, Step: i}
	if i >= 0 {
		b.StepName = d.o.def.Steps[i].Name
	}
	if err := hook(b); err != nil {
		d.halted = true
		d.cancel(fmt.Errorf("boundary hook at %s: %w", b, err))
		return d.stopped()
	}
	return nil
}

// stopped returns the error of a driver that stopped, naming why.
func (d *driver[S]) stopped() error {
	return fmt.Errorf("saga %s: %w: %w", d.rec.ID, ErrStopped, context.Cause(d.ctx))
}

// heartbeat renews the lease of saga id, taken with a request sent at
// leased, every third of the TTL until ctx ends or the returned func is
// called (which waits for it to stop). When a renewal is refused, or
// none has succeeded for three quarters of the TTL, it calls lose: the
// lease is, or may soon be, another owner's.
func (o *Orchestrator[S]) heartbeat(ctx context.Context, lose context.CancelCauseFunc, id string, leased time.Time) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	ttl := o.opts.LeaseTTL
	safe := ttl - ttl/4 // how long a renewal is trusted, by the local clock
	go func() {
		defer close(done)
		guard := time.NewTimer(time.Until(leased.Add(safe)))
		defer guard.Stop()
		tick := time.NewTicker(ttl / 3)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-guard.C:
				lose(fmt.Errorf("%w: not renewed within %s", ErrLeaseLost, safe))
				return
			case <-tick.C:
				sent := time.Now()
				err := o.store.Renew(ctx, id, o.opts.Owner, ttl)
				switch {
				case err == nil:
					guard.Reset(time.Until(sent.Add(safe)))
				case errors.Is(err, ErrLeaseLost):
					lose(fmt.Errorf("renew: %w", err))
					return
				case ctx.Err() != nil:
					return
				default:
					o.log.Warn("saga: lease renewal failed; retrying", slog.String("saga", id), slog.Any("err", err))
				}
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// jitter returns d varied at random by up to factor of it, up or down.
func jitter(d time.Duration, factor float64) time.Duration {
	return time.Duration(float64(d) * (1 + factor*(2*rand.Float64()-1)))
}
