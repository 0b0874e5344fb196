package saga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Outcome is how a saga ended.
type Outcome[S any] struct {
	// ID is the saga's id.
	ID string
	// Status is Completed or Compensated.
	Status Status
	// Reason says why a Compensated saga failed; see [Record.Reason].
	Reason string
	// State is the saga's final state.
	State S
}

// Orchestrator drives the sagas of one [Definition] through a [Store].
// Several orchestrators, in one process or several, may share a store:
// leases keep any saga in the hands of one at a time. It is safe for
// concurrent use. Create it with [New]; [Orchestrator.Close] it when
// done.
type Orchestrator[S any] struct {
	def   Definition[S]
	store Store
	opts  Options
	log   *slog.Logger

	life context.Context // ends when the orchestrator closes
	stop context.CancelCauseFunc
	wg   sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	flights map[string]*flight
}

// flight is this orchestrator's attempt to bring one saga to its end
// (create it, take it over, drive it), shared by every local caller
// waiting for that saga.
type flight struct {
	done chan struct{}
	rec  Record // the finished record, when err is nil
	err  error
}

// errElsewhere ends a flight that found the saga leased by another
// owner: its waiters poll the store.
var errElsewhere = errors.New("saga is driven by another owner")

// New returns an orchestrator of def's sagas, kept in store.
func New[S any](store Store, def Definition[S], opts Options) (*Orchestrator[S], error) {
	if store == nil {
		return nil, errors.New("saga: nil store")
	}
	if err := def.validate(); err != nil {
		return nil, err
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	life, stop := context.WithCancelCause(context.Background())
	return &Orchestrator[S]{
		def:     def,
		store:   store,
		opts:    opts,
		log:     opts.Logger.With(slog.String("saga_definition", def.Name), slog.String("saga_owner", opts.Owner)),
		life:    life,
		stop:    stop,
		flights: map[string]*flight{},
	}, nil
}

// Owner returns the owner id the orchestrator holds leases under.
func (o *Orchestrator[S]) Owner() string { return o.opts.Owner }

// Run creates saga id with the initial state, unless it exists, and
// returns its outcome once it has ended: [Completed], or [Compensated]
// with the reason (neither is an error). If saga id exists, state is
// ignored and Run waits for that saga as [Orchestrator.Wait] does: any
// number of concurrent Runs of one id make one saga and get the same
// outcome.
//
// The saga is driven on a context that keeps ctx's values but not its
// cancellation: when ctx ends, Run returns ctx's error and the saga goes
// on (a later Run or Wait gets its outcome). Run returns an error
// wrapping [ErrStopped] when the driver stopped before the end.
func (o *Orchestrator[S]) Run(ctx context.Context, id string, state S) (Outcome[S], error) {
	if id == "" {
		return Outcome[S]{}, errors.New("saga: empty saga id")
	}
	if err := ctx.Err(); err != nil {
		return Outcome[S]{}, err
	}
	data, err := json.Marshal(state)
	if err != nil {
		return Outcome[S]{}, fmt.Errorf("saga %s: encode state: %w", id, err)
	}
	f, _, err := o.launch(ctx, id, func(ctx context.Context) (Record, error) {
		leased := time.Now()
		rec, created, err := o.store.Create(ctx, Record{
			ID:         id,
			Definition: o.def.Name,
			State:      data,
			Status:     Running,
			LeaseOwner: o.opts.Owner,
		}, o.opts.LeaseTTL)
		if err != nil {
			return Record{}, fmt.Errorf("saga %s: create: %w", id, err)
		}
		if !created {
			return o.takeOver(ctx, rec)
		}
		o.observe(Event{Kind: Created, Step: -1}, rec)
		return o.drive(ctx, rec, leased, true)
	})
	if err != nil {
		return Outcome[S]{}, err
	}
	return o.await(ctx, id, f)
}

// Wait returns the outcome of saga id once it has ended. If this
// orchestrator drives it, Wait joins that driver. Otherwise it takes the
// saga over if its lease is free or expired, or else reads it from the
// store every [Options.PollInterval] (taking it over if the lease
// expires) until it ends or ctx does. It returns an error wrapping
// [ErrNotFound] if there is no such saga.
func (o *Orchestrator[S]) Wait(ctx context.Context, id string) (Outcome[S], error) {
	f, _, err := o.launch(ctx, id, o.follow(id))
	if err != nil {
		return Outcome[S]{}, err
	}
	return o.await(ctx, id, f)
}

// Resume takes the lease of every unfinished saga of the definition whose
// lease is free or expired (those of a process that died), and drives
// each on from where its record says, in the background, replaying the
// step that was in flight with its key. It returns the ids it took;
// [Orchestrator.Wait] gets their outcomes. Sagas leased by a live owner,
// or already driven here, are left alone.
func (o *Orchestrator[S]) Resume(ctx context.Context) ([]string, error) {
	recs, err := o.store.Unfinished(ctx, o.def.Name)
	if err != nil {
		return nil, fmt.Errorf("saga: list unfinished %s sagas: %w", o.def.Name, err)
	}
	var took []string
	var errs []error
	for _, rec := range recs {
		acquired := make(chan error, 1)
		_, started, err := o.launch(ctx, rec.ID, func(ctx context.Context) (Record, error) {
			leased := time.Now()
			got, err := o.store.Acquire(ctx, rec.ID, o.opts.Owner, o.opts.LeaseTTL)
			acquired <- err
			switch {
			case errors.Is(err, ErrNotAcquired):
				return Record{}, errElsewhere
			case err != nil:
				return Record{}, fmt.Errorf("saga %s: acquire: %w", rec.ID, err)
			}
			return o.drive(ctx, got, leased, false)
		})
		if err != nil {
			return took, err
		}
		if !started {
			continue
		}
		switch err := <-acquired; {
		case err == nil:
			took = append(took, rec.ID)
		case !errors.Is(err, ErrNotAcquired):
			errs = append(errs, fmt.Errorf("saga %s: acquire: %w", rec.ID, err))
		}
	}
	return took, errors.Join(errs...)
}

// Recover calls [Orchestrator.Resume] at once and then every interval
// (the lease TTL if interval is not positive), so that the sagas of
// processes that die are carried on, until ctx ends or the orchestrator
// closes. Errors are logged.
func (o *Orchestrator[S]) Recover(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = o.opts.LeaseTTL
	}
	for {
		if _, err := o.Resume(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, ErrClosed) {
			o.log.Warn("saga: resuming unfinished sagas failed", slog.Any("err", err))
		}
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-o.life.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Close stops every driver of the orchestrator and waits for them: the
// calls in flight have their context canceled, nothing more is written,
// and the leases are released so that another orchestrator can resume
// the sagas at once. Waiting callers get an error wrapping [ErrStopped]
// and [ErrClosed]. Later calls of the orchestrator's methods fail with
// [ErrClosed].
func (o *Orchestrator[S]) Close() error {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
	o.stop(ErrClosed)
	o.wg.Wait()
	return nil
}

// launch starts work as the flight of saga id, unless one is under way
// here, and returns the flight and whether it started it. work runs on a
// context that keeps ctx's values and ends when the orchestrator closes.
func (o *Orchestrator[S]) launch(ctx context.Context, id string, work func(context.Context) (Record, error)) (*flight, bool, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil, false, ErrClosed
	}
	if f := o.flights[id]; f != nil {
		return f, false, nil
	}
	f := &flight{done: make(chan struct{})}
	o.flights[id] = f
	fctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	unlink := context.AfterFunc(o.life, func() { cancel(context.Cause(o.life)) })
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		rec, err := work(fctx)
		unlink()
		cancel(nil)
		o.mu.Lock()
		delete(o.flights, id)
		o.mu.Unlock()
		f.rec, f.err = rec, err
		close(f.done)
	}()
	return f, true, nil
}

// follow returns the work of a flight that brings an existing saga to
// its end: read it, and take it over if its lease is free.
func (o *Orchestrator[S]) follow(id string) func(context.Context) (Record, error) {
	return func(ctx context.Context) (Record, error) {
		rec, err := o.store.Get(ctx, id)
		if err != nil {
			return Record{}, fmt.Errorf("saga %s: %w", id, err)
		}
		return o.takeOver(ctx, rec)
	}
}

// takeOver returns rec if it is finished; otherwise it takes its lease
// and drives it to its end, or returns errElsewhere if another owner
// holds the lease.
func (o *Orchestrator[S]) takeOver(ctx context.Context, rec Record) (Record, error) {
	if rec.Definition != o.def.Name {
		return Record{}, fmt.Errorf("saga %s is a %q saga, not %q", rec.ID, rec.Definition, o.def.Name)
	}
	if rec.Status.Finished() {
		return rec, nil
	}
	leased := time.Now()
	got, err := o.store.Acquire(ctx, rec.ID, o.opts.Owner, o.opts.LeaseTTL)
	switch {
	case errors.Is(err, ErrNotAcquired):
		return Record{}, errElsewhere
	case err != nil:
		return Record{}, fmt.Errorf("saga %s: acquire: %w", rec.ID, err)
	}
	return o.drive(ctx, got, leased, false)
}

// await waits for f, the flight of saga id, and while another owner
// drives the saga polls the store with new flights, until the saga ends
// or ctx does.
func (o *Orchestrator[S]) await(ctx context.Context, id string, f *flight) (Outcome[S], error) {
	for {
		select {
		case <-ctx.Done():
			return Outcome[S]{}, ctx.Err()
		case <-f.done:
		}
		if !errors.Is(f.err, errElsewhere) {
			if f.err != nil {
				return Outcome[S]{}, f.err
			}
			return o.outcome(f.rec)
		}
		t := time.NewTimer(o.opts.PollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return Outcome[S]{}, ctx.Err()
		case <-t.C:
		}
		var err error
		if f, _, err = o.launch(ctx, id, o.follow(id)); err != nil {
			return Outcome[S]{}, err
		}
	}
}

// outcome returns the outcome of the finished record rec.
func (o *Orchestrator[S]) outcome(rec Record) (Outcome[S], error) {
	out := Outcome[S]{ID: rec.ID, Status: rec.Status, Reason: rec.Reason}
	if err := json.Unmarshal(rec.State, &out.State); err != nil {
		return Outcome[S]{}, fmt.Errorf("saga %s: decode state: %w", rec.ID, err)
	}
	return out, nil
}

// permanent reports whether an action's error is permanent.
func (o *Orchestrator[S]) permanent(err error) bool {
	return IsPermanent(err) || (o.opts.IsPermanent != nil && o.opts.IsPermanent(err))
}

// observe tells the observer, if any, of a write.
func (o *Orchestrator[S]) observe(ev Event, rec Record) {
	if o.opts.Observer != nil {
		o.opts.Observer(ev, rec)
	}
}

// release frees the lease of saga id, even while the orchestrator
// closes; a failure only delays the saga's next driver until the lease
// expires.
func (o *Orchestrator[S]) release(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := o.store.Release(ctx, id, o.opts.Owner); err != nil {
		o.log.Warn("saga: release lease failed; it will expire", slog.String("saga", id), slog.Any("err", err))
	}
}
