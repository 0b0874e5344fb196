// Package sagatest checks that a saga.Store keeps its contract, for the
// tests of every implementation (the in-memory one, the order service's
// ent store on SQLite and PostgreSQL).
package sagatest

import (
	"bytes"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/keelplatform/keel/internal/saga"
)

// VerifyStore checks that store keeps the contract of [saga.Store]: creation
// once per id, conditional writes, leases that only one owner holds and
// that expire by the store's clock, and the listing of unfinished
// sagas, concurrent callers included. A saga.Store implementation's tests
// call it (the ent store's against SQLite and PostgreSQL). It uses ids
// and a definition name of its own, so store may hold other sagas, and
// it waits for short leases to expire (about a second in all).
func VerifyStore(t *testing.T, store saga.Store) {
	t.Helper()
	prefix := "verify-" + uuid.NewString()
	def := prefix + "-definition"
	const ttl = time.Minute
	const short = 200 * time.Millisecond
	n := 0
	fresh := func(owner string) saga.Record {
		n++
		return saga.Record{
			ID:         prefix + "-" + strconv.Itoa(n),
			Definition: def,
			State:      []byte(`{"n":1}`),
			Status:     saga.Running,
			LeaseOwner: owner,
		}
	}
	create := func(t *testing.T, owner string, ttl time.Duration) saga.Record {
		t.Helper()
		rec, created, err := store.Create(t.Context(), fresh(owner), ttl)
		if err != nil || !created {
			t.Fatalf("Create = %v, %v; want a new saga", created, err)
		}
		return rec
	}
	wantErr := func(t *testing.T, what string, err, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("%s: error %v, want %v", what, err, want)
		}
	}
	save := func(t *testing.T, rec saga.Record, status saga.Status) saga.Record {
		t.Helper()
		rec.Status = status
		got, err := store.Save(t.Context(), rec, saga.Event{Kind: saga.StepDone, Step: 0, StepName: "s"})
		if err != nil {
			t.Fatalf("Save of version %d by %s: %v", rec.Version, rec.LeaseOwner, err)
		}
		return got
	}

	t.Run("CreateOnce", func(t *testing.T) {
		rec := fresh("a")
		got, created, err := store.Create(t.Context(), rec, ttl)
		if err != nil || !created {
			t.Fatalf("Create = %v, %v; want a new saga", created, err)
		}
		if got.Version != 1 || got.LeaseOwner != "a" || !bytes.Equal(got.State, rec.State) || got.Status != saga.Running || got.Definition != def {
			t.Errorf("created %+v", got)
		}
		if got.LeaseExpiry.Sub(got.CreatedAt) < ttl-time.Second || got.CreatedAt.IsZero() || got.UpdatedAt.IsZero() {
			t.Errorf("created lease until %s at %s, want %s later", got.LeaseExpiry, got.CreatedAt, ttl)
		}
		again := rec
		again.State, again.LeaseOwner = []byte(`{"n":2}`), "b"
		old, created, err := store.Create(t.Context(), again, ttl)
		if err != nil || created {
			t.Fatalf("second Create = %v, %v; want the existing saga", created, err)
		}
		if old.Version != 1 || old.LeaseOwner != "a" || !bytes.Equal(old.State, rec.State) {
			t.Errorf("second Create returned %+v, want the first", old)
		}
		read, err := store.Get(t.Context(), rec.ID)
		if err != nil || read.Version != 1 || !bytes.Equal(read.State, rec.State) {
			t.Errorf("Get = %+v, %v", read, err)
		}
		_, err = store.Get(t.Context(), prefix+"-missing")
		wantErr(t, "Get of a missing saga", err, saga.ErrNotFound)
	})

	t.Run("ConcurrentCreate", func(t *testing.T) {
		rec := fresh("")
		var created atomic.Int32
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				r := rec
				r.LeaseOwner = string(rune('a' + i))
				if _, ok, err := store.Create(t.Context(), r, ttl); err != nil {
					t.Errorf("Create: %v", err)
				} else if ok {
					created.Add(1)
				}
			})
		}
		wg.Wait()
		if created.Load() != 1 {
			t.Errorf("%d concurrent Creates of one id created it %d times, want once", 8, created.Load())
		}
	})

	t.Run("SaveIsConditional", func(t *testing.T) {
		rec := create(t, "a", ttl)
		next := rec
		next.State, next.Step, next.InFlight, next.Reason = []byte(`{"n":3}`), 1, true, "why"
		got, err := store.Save(t.Context(), next, saga.Event{Kind: saga.StepStarted, Step: 1, StepName: "s"})
		if err != nil {
			t.Fatalf("Save: %v", err)
		}
		if got.Version != 2 || got.Step != 1 || !got.InFlight || got.Reason != "why" || !bytes.Equal(got.State, next.State) || got.LeaseOwner != "a" || !got.LeaseExpiry.Equal(rec.LeaseExpiry) {
			t.Errorf("Save stored %+v", got)
		}
		_, err = store.Save(t.Context(), next, saga.Event{Kind: saga.StepDone})
		wantErr(t, "Save of a stale version", err, saga.ErrLeaseLost)
		other := got
		other.LeaseOwner = "b"
		_, err = store.Save(t.Context(), other, saga.Event{Kind: saga.StepDone})
		wantErr(t, "Save by an owner without the lease", err, saga.ErrLeaseLost)

		var won atomic.Int32
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				if _, err := store.Save(t.Context(), got, saga.Event{Kind: saga.StepDone}); err == nil {
					won.Add(1)
				} else if !errors.Is(err, saga.ErrLeaseLost) {
					t.Errorf("Save: %v", err)
				}
			})
		}
		wg.Wait()
		if won.Load() != 1 {
			t.Errorf("%d concurrent Saves of one version: %d succeeded, want 1", 8, won.Load())
		}
	})

	t.Run("LeaseHeldUntilReleased", func(t *testing.T) {
		rec := create(t, "a", ttl)
		_, err := store.Acquire(t.Context(), rec.ID, "b", ttl)
		wantErr(t, "Acquire of a live lease", err, saga.ErrNotAcquired)
		_, err = store.Acquire(t.Context(), rec.ID, "a", ttl)
		wantErr(t, "Acquire of a live lease by its holder", err, saga.ErrNotAcquired)
		if err := store.Release(t.Context(), rec.ID, "b"); err != nil {
			t.Errorf("Release by a non-holder: %v", err)
		}
		_, err = store.Acquire(t.Context(), rec.ID, "b", ttl)
		wantErr(t, "Acquire after a non-holder's Release", err, saga.ErrNotAcquired)

		if err := store.Renew(t.Context(), rec.ID, "a", ttl); err != nil {
			t.Errorf("Renew by the holder: %v", err)
		}
		wantErr(t, "Renew by a non-holder", store.Renew(t.Context(), rec.ID, "b", ttl), saga.ErrLeaseLost)
		if err := store.Release(t.Context(), rec.ID, "a"); err != nil {
			t.Fatalf("Release: %v", err)
		}
		wantErr(t, "Renew of a released lease", store.Renew(t.Context(), rec.ID, "a", ttl), saga.ErrLeaseLost)
		_, err = store.Save(t.Context(), rec, saga.Event{Kind: saga.StepDone})
		wantErr(t, "Save under a released lease", err, saga.ErrLeaseLost)
		got, err := store.Acquire(t.Context(), rec.ID, "b", ttl)
		if err != nil {
			t.Fatalf("Acquire of a released lease: %v", err)
		}
		if got.LeaseOwner != "b" || got.Version != rec.Version+1 {
			t.Errorf("Acquire stored owner %q version %d, want b, %d", got.LeaseOwner, got.Version, rec.Version+1)
		}
		save(t, got, saga.Running)
	})

	t.Run("LeaseExpires", func(t *testing.T) {
		rec := create(t, "a", short)
		renewed := create(t, "a", short)
		if err := store.Renew(t.Context(), renewed.ID, "a", ttl); err != nil {
			t.Fatalf("Renew: %v", err)
		}
		time.Sleep(2 * short)
		_, err := store.Save(t.Context(), rec, saga.Event{Kind: saga.StepDone})
		wantErr(t, "Save under an expired lease", err, saga.ErrLeaseLost)
		wantErr(t, "Renew of an expired lease", store.Renew(t.Context(), rec.ID, "a", ttl), saga.ErrLeaseLost)
		got, err := store.Acquire(t.Context(), rec.ID, "b", ttl)
		if err != nil {
			t.Fatalf("Acquire of an expired lease: %v", err)
		}
		if got.Version != rec.Version+1 {
			t.Errorf("Acquire left version %d, want %d", got.Version, rec.Version+1)
		}
		_, err = store.Save(t.Context(), rec, saga.Event{Kind: saga.StepDone})
		wantErr(t, "Save by the former holder", err, saga.ErrLeaseLost)
		save(t, got, saga.Running)
		save(t, renewed, saga.Running) // Renew kept that lease alive
	})

	t.Run("ConcurrentAcquire", func(t *testing.T) {
		rec := create(t, "a", ttl)
		if err := store.Release(t.Context(), rec.ID, "a"); err != nil {
			t.Fatal(err)
		}
		var won atomic.Int32
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Go(func() {
				if _, err := store.Acquire(t.Context(), rec.ID, string(rune('b'+i)), ttl); err == nil {
					won.Add(1)
				} else if !errors.Is(err, saga.ErrNotAcquired) {
					t.Errorf("Acquire: %v", err)
				}
			})
		}
		wg.Wait()
		if won.Load() != 1 {
			t.Errorf("%d concurrent Acquires of a free lease: %d succeeded, want 1", 8, won.Load())
		}
	})

	t.Run("Unfinished", func(t *testing.T) {
		running := create(t, "a", ttl)
		compensating := save(t, create(t, "a", ttl), saga.Compensating)
		completed := save(t, create(t, "a", ttl), saga.Completed)
		compensated := save(t, create(t, "a", ttl), saga.Compensated)
		other := fresh("a")
		other.Definition = def + "-other"
		if _, _, err := store.Create(t.Context(), other, ttl); err != nil {
			t.Fatal(err)
		}
		recs, err := store.Unfinished(t.Context(), def)
		if err != nil {
			t.Fatalf("Unfinished: %v", err)
		}
		listed := map[string]bool{}
		for _, r := range recs {
			listed[r.ID] = true
		}
		if !listed[running.ID] || !listed[compensating.ID] {
			t.Errorf("Unfinished left out a running or compensating saga")
		}
		if listed[completed.ID] || listed[compensated.ID] || listed[other.ID] {
			t.Errorf("Unfinished listed a finished saga or one of another definition")
		}
		if err := store.Release(t.Context(), completed.ID, "a"); err != nil {
			t.Fatal(err)
		}
		_, err = store.Acquire(t.Context(), completed.ID, "b", ttl)
		wantErr(t, "Acquire of a finished saga", err, saga.ErrNotAcquired)
	})

	t.Run("MissingSaga", func(t *testing.T) {
		id := prefix + "-missing"
		_, err := store.Acquire(t.Context(), id, "a", ttl)
		wantErr(t, "Acquire", err, saga.ErrNotAcquired)
		wantErr(t, "Renew", store.Renew(t.Context(), id, "a", ttl), saga.ErrLeaseLost)
		_, err = store.Save(t.Context(), saga.Record{ID: id, Definition: def, Status: saga.Running, LeaseOwner: "a", Version: 1}, saga.Event{Kind: saga.StepDone})
		wantErr(t, "Save", err, saga.ErrLeaseLost)
		if err := store.Release(t.Context(), id, "a"); err != nil {
			t.Errorf("Release: %v", err)
		}
	})
}
