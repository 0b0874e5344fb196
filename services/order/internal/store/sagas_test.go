package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/saga"
	"github.com/keelplatform/keel/internal/saga/sagatest"
	"github.com/keelplatform/keel/services/order/internal/order"
	"github.com/keelplatform/keel/services/order/internal/store"
)

// open returns a store on a fresh database of the driver.
func open(t *testing.T, d int) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), drivers[d].cfg(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestSagaStoreKeepsTheContract runs the saga package's contract checks
// against the store on both databases: create once, conditional saves,
// leases one owner holds that expire by the database's clock.
func TestSagaStoreKeepsTheContract(t *testing.T) {
	for i, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			sagatest.VerifyStore(t, open(t, i).Sagas())
		})
	}
}

// TestSagaWritesKeepTheOrderInStep: the order is created PENDING with the
// saga, learns its payment id, and ends CONFIRMED or CANCELLED with the
// saga's reason, each with a history entry; a write refused for a lost
// lease changes neither saga nor order.
func TestSagaWritesKeepTheOrderInStep(t *testing.T) {
	for i, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			s := open(t, i)
			sagas := s.Sagas()
			ctx := context.Background()
			place := func(key string) saga.Record {
				t.Helper()
				id := order.ID("5c1d9b6e-7f2a-4b3c-8d4e-1f2a3b4c5d6e", key)
				state, _ := json.Marshal(order.State{
					OrderID: id, IdempotencyKey: key, RequestHash: "hash-" + key, UserID: "5c1d9b6e-7f2a-4b3c-8d4e-1f2a3b4c5d6e",
					Currency: "EUR", Lines: []order.Line{{SKU: "TEA", Quantity: 2, UnitPriceMinor: 450}}, TotalMinor: 900,
				})
				rec, created, err := sagas.Create(ctx, saga.Record{ID: id, Definition: order.Definition, State: state, Status: saga.Running, LeaseOwner: "a"}, time.Minute)
				if err != nil || !created {
					t.Fatalf("Create = %v, %v", created, err)
				}
				o, err := s.Order(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if o.Status != order.Pending || len(o.History) != 1 || o.History[0].Status != order.Pending || o.TotalMinor != 900 ||
					o.IdempotencyKey != key || len(o.Lines) != 1 || o.Lines[0].UnitPriceMinor != 450 || !o.CreateTime.Equal(rec.CreatedAt) {
					t.Fatalf("created order %+v", o)
				}
				return rec
			}
			save := func(rec saga.Record, status saga.Status, reason string, ev saga.Event) saga.Record {
				t.Helper()
				rec.Status, rec.Reason = status, reason
				got, err := sagas.Save(ctx, rec, ev)
				if err != nil {
					t.Fatal(err)
				}
				return got
			}

			rec := place("in-step-confirmed")
			var st order.State
			_ = json.Unmarshal(rec.State, &st)
			st.PaymentID = "pay-1"
			rec.State, _ = json.Marshal(st)
			rec.Step = 2
			rec = save(rec, saga.Running, "", saga.Event{Kind: saga.StepDone, Step: 1, StepName: "charge-payment"})
			if o, _ := s.Order(ctx, rec.ID); o.PaymentID != "pay-1" || o.Status != order.Pending {
				t.Fatalf("after the charge: %+v", o)
			}
			// A stale write (the version moved on) changes nothing.
			stale := rec
			stale.Version--
			stale.Status = saga.Completed
			if _, err := sagas.Save(ctx, stale, saga.Event{Kind: saga.StepDone, Step: 2, StepName: "commit-stock"}); !errors.Is(err, saga.ErrLeaseLost) {
				t.Fatalf("stale Save: %v", err)
			}
			if o, _ := s.Order(ctx, rec.ID); o.Status != order.Pending || len(o.History) != 1 {
				t.Fatalf("a refused Save changed the order: %+v", o)
			}
			rec = save(rec, saga.Completed, "", saga.Event{Kind: saga.StepDone, Step: 2, StepName: "commit-stock"})
			o, _ := s.Order(ctx, rec.ID)
			if o.Status != order.Confirmed || len(o.History) != 2 || o.History[1].Status != order.Confirmed || !o.UpdateTime.Equal(rec.UpdatedAt) {
				t.Fatalf("completed saga, order %+v", o)
			}

			rec = place("in-step-cancelled")
			rec = save(rec, saga.Compensating, "charge-payment: payment declined: card_blocked", saga.Event{Kind: saga.StepFailed, Step: 1, StepName: "charge-payment"})
			if o, _ := s.Order(ctx, rec.ID); o.Status != order.Pending || o.FailureReason != "" {
				t.Fatalf("compensating saga, order %+v", o)
			}
			rec.Step = -1
			save(rec, saga.Compensated, rec.Reason, saga.Event{Kind: saga.CompensationDone, Step: 0, StepName: "reserve-stock"})
			o, _ = s.Order(ctx, rec.ID)
			want := "charge-payment: payment declined: card_blocked"
			if o.Status != order.Cancelled || o.FailureReason != want || len(o.History) != 2 || o.History[1].Reason != want {
				t.Fatalf("compensated saga, order %+v", o)
			}
		})
	}
}
