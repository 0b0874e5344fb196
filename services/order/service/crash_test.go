//go:build unix

package service_test

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/drill"
	"github.com/keelplatform/keel/internal/testkit"
	"github.com/keelplatform/keel/services/order/internal/order"
	"github.com/keelplatform/keel/services/order/internal/placeorder"
)

// TestCrashDrillKillsAtTheBoundaryAndAnotherRunRecovers runs the order
// binary with the crash drill set after the charge: the process dies by
// SIGKILL with the payment taken and not recorded in the saga; the
// binary started again on the same database carries the saga on (the
// charge replayed with its key) to a confirmed order charged once.
func TestCrashDrillKillsAtTheBoundaryAndAnotherRunRecovers(t *testing.T) {
	s := newPeers(t, database.DriverSQLite)
	env := []string{
		"KEEL_ENV=test",
		"KEEL_CONFIG_DIR=" + filepath.Join("..", "..", "..", "consul", "kv"),
		"KEEL_SERVER_ADDR=127.0.0.1:0",
		"CONSUL_HTTP_ADDR=",
		"KEEL_PEERS=" + s.peers,
	}
	for k, v := range s.orderEnv {
		env = append(env, k+"="+v)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	const key = "crash-drill-0001"
	req := &orderv1.PlaceOrderRequest{IdempotencyKey: key, UserId: s.userID, Lines: []*orderv1.OrderLine{{Sku: "TEA", Quantity: 1}}}

	boundary := "after-action:" + placeorder.ChargePayment
	first := testkit.Start(t, binary, append(env, drill.Var+"="+boundary)...)
	client := orderv1connect.NewOrderServiceClient(http.DefaultClient, "http://"+first.Addr())
	if _, err := client.PlaceOrder(ctx, connect.NewRequest(req)); err == nil {
		t.Fatal("PlaceOrder was answered; the drill should have killed the process first")
	}
	if !first.Killed(10 * time.Second) {
		t.Fatalf("the process was not killed at %s\n%s", boundary, first.Logs())
	}
	if captured, _ := s.recorder.payments(); len(captured) != 1 {
		t.Fatalf("captured %v before the crash, want the charge", captured)
	}

	second := testkit.Start(t, binary, env...)
	client = orderv1connect.NewOrderServiceClient(http.DefaultClient, "http://"+second.Addr())
	id := order.ID(s.userID, key)
	var o *orderv1.Order
	eventually(t, "the order recovered", func() error {
		res, err := client.GetOrder(ctx, connect.NewRequest(&orderv1.GetOrderRequest{OrderId: id}))
		if err != nil {
			return err
		}
		if o = res.Msg.GetOrder(); o.GetStatus() != confirmed {
			return fmt.Errorf("order is %v", o.GetStatus())
		}
		return nil
	})
	captured, refunds := s.recorder.payments()
	if charges, _ := s.recorder.calls(); len(captured) != 1 || captured[0] != o.GetPaymentId() || refunds != 0 || charges != 2 {
		t.Errorf("%d charge calls, captured %v, %d refunds; want the charge and its replay: one payment", charges, captured, refunds)
	}
	s.wantCommitted(id)
	res, err := client.PlaceOrder(ctx, connect.NewRequest(req))
	if err != nil || res.Msg.GetOrder().GetOrderId() != id || res.Msg.GetOrder().GetStatus() != confirmed {
		t.Errorf("PlaceOrder again: %v, %v; want the confirmed order", res, err)
	}
	if err := second.Stop(10 * time.Second); err != nil {
		t.Error(err)
	}
}
