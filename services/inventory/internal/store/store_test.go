package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/services/inventory/internal/stock"
	"github.com/keelplatform/keel/services/inventory/internal/store"
)

// open returns a store on a fresh database of the driver.
func open(t *testing.T, cfg database.Config) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func item(sku string, available int64) stock.Item {
	return stock.Item{SKU: sku, Name: "Item " + sku, Currency: "EUR", PriceMinor: 1250, Available: available}
}

// TestConcurrentReservationsNeverOversell: 200 concurrent reservations of
// one unit against a stock of 50: exactly 50 are held and the stock ends
// at 0, on both databases.
func TestConcurrentReservationsNeverOversell(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			s := open(t, d.cfg(t))
			ctx := context.Background()
			if _, err := s.CreateItem(ctx, "create-sku-1", item("SKU-1", 50)); err != nil {
				t.Fatal(err)
			}
			var held, short atomic.Int64
			var wg sync.WaitGroup
			for i := range 200 {
				wg.Go(func() {
					_, err := s.Reserve(ctx, fmt.Sprintf("r-%03d", i), []stock.Line{{SKU: "SKU-1", Quantity: 1}}, time.Now().Add(time.Hour))
					var insufficient *stock.InsufficientError
					switch {
					case err == nil:
						held.Add(1)
					case errors.As(err, &insufficient):
						short.Add(1)
					default:
						t.Errorf("reservation %d: %v", i, err)
					}
				})
			}
			wg.Wait()
			it, err := s.GetItem(ctx, "SKU-1")
			if err != nil {
				t.Fatal(err)
			}
			if held.Load() != 50 || short.Load() != 150 || it.Available != 0 || it.Reserved != 50 {
				t.Fatalf("held %d, refused %d; item available %d, reserved %d; want 50 held, 150 refused, 0 and 50",
					held.Load(), short.Load(), it.Available, it.Reserved)
			}
		})
	}
}

// TestReservationLifeCycle: reserve, commit, release and their replays,
// with the stock counters always adding up.
func TestReservationLifeCycle(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			s := open(t, d.cfg(t))
			ctx := context.Background()
			for _, sku := range []string{"A", "B"} {
				if _, err := s.CreateItem(ctx, "create-"+sku+"-0001", item(sku, 10)); err != nil {
					t.Fatal(err)
				}
			}
			lines := []stock.Line{{SKU: "A", Quantity: 3}, {SKU: "B", Quantity: 4}}
			expire := time.Now().Add(time.Hour)
			if _, err := s.Reserve(ctx, "order-1", lines, expire); err != nil {
				t.Fatal(err)
			}
			// A replay holds nothing more; other lines under the id conflict.
			if _, err := s.Reserve(ctx, "order-1", lines, expire); err != nil {
				t.Fatalf("replay: %v", err)
			}
			if _, err := s.Reserve(ctx, "order-1", lines[:1], expire); !errors.Is(err, stock.ErrConflict) {
				t.Fatalf("same id, other lines: %v", err)
			}
			// All or nothing: B is short, so A is not held either.
			var insufficient *stock.InsufficientError
			if _, err := s.Reserve(ctx, "order-2", []stock.Line{{SKU: "A", Quantity: 1}, {SKU: "B", Quantity: 7}}, expire); !errors.As(err, &insufficient) || insufficient.SKU != "B" || insufficient.Available != 6 {
				t.Fatalf("short on B: %v", err)
			}
			if _, err := s.Reserve(ctx, "order-3", []stock.Line{{SKU: "NOPE", Quantity: 1}}, expire); !errors.Is(err, stock.ErrNotFound) {
				t.Fatalf("unknown sku: %v", err)
			}
			check := func(sku string, available, reserved, committed int64) {
				t.Helper()
				it, err := s.GetItem(ctx, sku)
				if err != nil {
					t.Fatal(err)
				}
				if it.Available != available || it.Reserved != reserved || it.Committed != committed {
					t.Fatalf("%s: available %d reserved %d committed %d; want %d %d %d", sku, it.Available, it.Reserved, it.Committed, available, reserved, committed)
				}
			}
			check("A", 7, 3, 0)
			check("B", 6, 4, 0)
			for range 2 {
				if r, err := s.Commit(ctx, "order-1"); err != nil || r.State != stock.Committed {
					t.Fatalf("commit: %v %v", r.State, err)
				}
			}
			check("A", 7, 0, 3)
			if _, _, err := s.Release(ctx, "order-1"); !errors.Is(err, stock.ErrWrongState) {
				t.Fatalf("releasing a committed reservation: %v", err)
			}
			for range 2 {
				if _, ok, err := s.Release(ctx, "never-reserved"); ok || err != nil {
					t.Fatalf("releasing an unknown id: %v %v", ok, err)
				}
			}
			// The release fenced the id: a reservation arriving late
			// holds nothing.
			if _, err := s.Reserve(ctx, "never-reserved", []stock.Line{{SKU: "A", Quantity: 1}}, expire); !errors.Is(err, stock.ErrConflict) {
				t.Fatalf("reserving a fenced id: %v, want ErrConflict", err)
			}
			check("A", 7, 0, 3)
			if _, err := s.Reserve(ctx, "order-4", []stock.Line{{SKU: "A", Quantity: 2}}, expire); err != nil {
				t.Fatal(err)
			}
			for range 2 {
				if _, ok, err := s.Release(ctx, "order-4"); err != nil || !ok {
					t.Fatalf("release: %v %v", ok, err)
				}
			}
			check("A", 7, 0, 3)
			if _, err := s.Commit(ctx, "order-4"); !errors.Is(err, stock.ErrWrongState) {
				t.Fatalf("committing a released reservation: %v", err)
			}
		})
	}
}

// TestExpiredReservationsReturnTheirStock: a reservation neither
// committed nor released gives its stock back once its time is up.
func TestExpiredReservationsReturnTheirStock(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			s := open(t, d.cfg(t))
			ctx := context.Background()
			if _, err := s.CreateItem(ctx, "create-exp-1", item("E", 5)); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Reserve(ctx, "gone", []stock.Line{{SKU: "E", Quantity: 2}}, time.Now().Add(-time.Second)); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Reserve(ctx, "kept", []stock.Line{{SKU: "E", Quantity: 1}}, time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			expired, err := s.ExpireBefore(ctx, time.Now())
			if err != nil || len(expired) != 1 || expired[0].ID != "gone" || len(expired[0].Lines) != 1 {
				t.Fatalf("expired %+v, %v; want the reservation gone", expired, err)
			}
			it, _ := s.GetItem(ctx, "E")
			if it.Available != 4 || it.Reserved != 1 {
				t.Fatalf("available %d reserved %d; want 4 and 1", it.Available, it.Reserved)
			}
			if r, err := s.GetReservation(ctx, "gone"); err != nil || r.State != stock.Released {
				t.Fatalf("expired reservation: %v %v", r.State, err)
			}
		})
	}
}

// TestRequestsAreIdempotent: CreateItem and RestockItem do their work
// once per request id.
func TestRequestsAreIdempotent(t *testing.T) {
	for _, d := range drivers {
		t.Run(d.name, func(t *testing.T) {
			s := open(t, d.cfg(t))
			ctx := context.Background()
			for range 3 {
				if _, err := s.CreateItem(ctx, "create-R-0001", item("R", 5)); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.CreateItem(ctx, "create-R-0002", item("R", 5)); !errors.Is(err, stock.ErrExists) {
				t.Fatalf("another request for a taken sku: %v", err)
			}
			var wg sync.WaitGroup
			for range 10 {
				wg.Go(func() {
					if _, err := s.Restock(ctx, "restock-R-0001", "R", 7); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			it, _ := s.GetItem(ctx, "R")
			if it.Available != 12 {
				t.Fatalf("available %d after one restock of 7 sent 10 times; want 12", it.Available)
			}
			if _, err := s.Restock(ctx, "restock-X-0001", "X", 1); !errors.Is(err, stock.ErrNotFound) {
				t.Fatalf("restock of an unknown sku: %v", err)
			}
		})
	}
}
