package saga_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/saga"
	"github.com/keelplatform/keel/internal/saga/sagatest"
)

func TestMemStoreKeepsTheStoreContract(t *testing.T) {
	sagatest.VerifyStore(t, &saga.MemStore{})
}

// TestMemStoreApplyFailureAbortsTheWrite pins what a store must do when
// the caller's own tables cannot be written with the saga row: write
// neither.
func TestMemStoreApplyFailureAbortsTheWrite(t *testing.T) {
	refuse := false
	store := &saga.MemStore{Apply: func(saga.Record, saga.Event) error {
		if refuse {
			return errors.New("orders table unavailable")
		}
		return nil
	}}
	ctx := context.Background()
	rec, _, err := store.Create(ctx, saga.Record{ID: "s", Definition: "d", State: []byte(`{}`), Status: saga.Running, LeaseOwner: "a"}, leaseTTL)
	if err != nil {
		t.Fatal(err)
	}
	refuse = true
	next := rec
	next.Step = 1
	if _, err := store.Save(ctx, next, saga.Event{Kind: saga.StepDone, Step: 0, StepName: "x"}); err == nil {
		t.Fatal("Save succeeded though its Apply failed")
	}
	if _, created, err := store.Create(ctx, saga.Record{ID: "t", Definition: "d", State: []byte(`{}`), Status: saga.Running, LeaseOwner: "a"}, leaseTTL); err == nil || created {
		t.Fatal("Create succeeded though its Apply failed")
	}
	got, err := store.Get(ctx, "s")
	if err != nil || got.Version != rec.Version || got.Step != 0 {
		t.Errorf("after a refused Save the record is %+v (%v), want it unchanged", got, err)
	}
	if _, err := store.Get(ctx, "t"); !errors.Is(err, saga.ErrNotFound) {
		t.Errorf("after a refused Create: %v, want no saga", err)
	}
}

// TestMemStoreListsUnfinishedOldestFirst: Unfinished lists the unfinished
// sagas of a definition oldest first, and those created at the same time
// by id, always in the same order.
func TestMemStoreListsUnfinishedOldestFirst(t *testing.T) {
	clk := newClock()
	store := &saga.MemStore{Now: clk.Now}
	ctx := context.Background()
	create := func(id, definition string, status saga.Status) {
		t.Helper()
		if _, _, err := store.Create(ctx, saga.Record{ID: id, Definition: definition, State: []byte(`{}`), Status: status}, leaseTTL); err != nil {
			t.Fatal(err)
		}
	}
	create("m", "d", saga.Running)
	clk.Advance(time.Second)
	for _, id := range []string{"c", "a", "b"} {
		create(id, "d", saga.Compensating)
	}
	create("0-other", "e", saga.Running)
	create("0-done", "d", saga.Completed)
	clk.Advance(time.Second)
	create("0-young", "d", saga.Running)
	for range 5 {
		recs, err := store.Unfinished(ctx, "d")
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range recs {
			ids = append(ids, r.ID)
		}
		if want := []string{"m", "a", "b", "c", "0-young"}; !slices.Equal(ids, want) {
			t.Fatalf("Unfinished listed %q, want %q", ids, want)
		}
	}
}
