package saga_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"time"

	"github.com/keelplatform/keel/internal/saga"
)

// placeOrderState is the state of the order service's place-order saga.
type placeOrderState struct {
	OrderID  string `json:"order_id"`
	ItemID   string `json:"item_id"`
	Quantity int    `json:"quantity"`
	Amount   int64  `json:"amount"`
	ChargeID string `json:"charge_id,omitempty"`
}

// The order service defines place-order over its peers (here stand-ins
// for the generated inventory and payment clients, which pass x.Key as
// the request id), keeps its order status in step inside the store's
// writes, and runs the saga under the PlaceOrder idempotency key.
func ExampleOrchestrator_Run() {
	reserveStock := func(ctx context.Context, key, item string, qty int) error { return nil }
	releaseStock := func(ctx context.Context, key, reserveKey string) error { return nil }
	commitStock := func(ctx context.Context, key, reserveKey string) error { return nil }
	charge := func(ctx context.Context, key string, amount int64) (string, error) {
		if amount > 100 {
			return "", saga.Permanent(errors.New("card declined"))
		}
		return "ch_1", nil
	}
	refund := func(ctx context.Context, key, chargeKey string) error { return nil }

	def := saga.Definition[placeOrderState]{
		Name: "place-order",
		Steps: []saga.Step[placeOrderState]{
			{
				Name: "reserve-stock",
				Action: func(ctx context.Context, x saga.Exec, s *placeOrderState) error {
					return reserveStock(ctx, x.Key, s.ItemID, s.Quantity)
				},
				Compensate: func(ctx context.Context, x saga.Exec, s *placeOrderState) error {
					return releaseStock(ctx, x.Key, x.ActionKey)
				},
			},
			{
				Name: "charge-payment",
				Action: func(ctx context.Context, x saga.Exec, s *placeOrderState) error {
					id, err := charge(ctx, x.Key, s.Amount)
					s.ChargeID = id
					return err
				},
				Compensate: func(ctx context.Context, x saga.Exec, s *placeOrderState) error {
					return refund(ctx, x.Key, x.ActionKey) // by key: the charge id may never have arrived
				},
			},
			{
				Name: "commit-stock",
				Action: func(ctx context.Context, x saga.Exec, s *placeOrderState) error {
					return commitStock(ctx, x.Key, saga.ActionKey(x.SagaID, "reserve-stock"))
				},
			},
		},
	}

	// The ent store updates the order row in the same transaction as the
	// saga row; MemStore.Apply plays that part here.
	store := &saga.MemStore{Apply: func(rec saga.Record, ev saga.Event) error {
		switch {
		case ev.Kind == saga.Created:
			fmt.Println(rec.ID, "PENDING")
		case rec.Status == saga.Completed:
			fmt.Println(rec.ID, "CONFIRMED")
		case rec.Status == saga.Compensated:
			fmt.Println(rec.ID, "CANCELLED:", rec.Reason)
		}
		return nil
	}}
	orch, err := saga.New(store, def, saga.Options{
		LeaseTTL: 10 * time.Second,
		Logger:   slog.New(slog.DiscardHandler),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer orch.Close()
	ctx := context.Background()
	go orch.Recover(ctx, 0) // carry on the sagas of instances that died

	for _, req := range []placeOrderState{
		{OrderID: "o-1", ItemID: "tea", Quantity: 2, Amount: 40},
		{OrderID: "o-2", ItemID: "tea", Quantity: 9, Amount: 180},
	} {
		out, err := orch.Run(ctx, "place-order/"+req.OrderID, req) // the PlaceOrder idempotency key
		if err != nil {
			log.Fatal(err) // the saga goes on; a retried PlaceOrder waits for it
		}
		fmt.Println(out.Status, out.State.ChargeID)
	}
	// Output:
	// place-order/o-1 PENDING
	// place-order/o-1 CONFIRMED
	// completed ch_1
	// place-order/o-2 PENDING
	// place-order/o-2 CANCELLED: charge-payment: card declined
	// compensated
}
