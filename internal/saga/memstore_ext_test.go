package saga_test

import (
	"context"
	"errors"
	"testing"

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
