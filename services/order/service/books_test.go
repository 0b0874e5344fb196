//go:build unix

package service_test

import (
	"context"
	"database/sql"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/drill"
	"github.com/keelplatform/keel/internal/saga"
	"github.com/keelplatform/keel/internal/testkit"
	"github.com/keelplatform/keel/services/order/internal/order"
	"github.com/keelplatform/keel/services/order/internal/placeorder"
	paymentservice "github.com/keelplatform/keel/services/payment/service"
)

// initialStock is the catalogue's stock before any order.
var initialStock = map[string]int64{"TEA": teaStock, "MUG": mugStock, "GOLD": goldStock, "BOOK": 10}

// crashes are the saga boundaries a crash drill kills the order service
// at, every one place-order passes, with the order that passes it: TEA
// orders are confirmed, GOLD ones (over the payment simulator's limit)
// are declined and compensated.
func crashes() []struct{ boundary, sku string } {
	var out []struct{ boundary, sku string }
	add := func(sku string, points ...saga.Point) func(step string) {
		return func(step string) {
			for _, p := range points {
				out = append(out, struct{ boundary, sku string }{saga.Boundary{Point: p, StepName: step}.String(), sku})
			}
		}
	}
	out = append(out, struct{ boundary, sku string }{saga.Boundary{Point: saga.PointCreated}.String(), "TEA"})
	for _, step := range []string{placeorder.ReserveStock, placeorder.ChargePayment, placeorder.CommitStock} {
		add("TEA", saga.BeforeAction, saga.AfterAction, saga.ActionSaved)(step)
	}
	add("GOLD", saga.ActionFailed, saga.FailureSaved)(placeorder.ChargePayment)
	add("GOLD", saga.BeforeCompensation, saga.AfterCompensation, saga.CompensationSaved)(placeorder.ReserveStock)
	return out
}

// TestCrashAtEverySagaBoundary kills the order service, a real process,
// with SIGKILL at each boundary of the place-order saga in turn, one
// order per boundary, then starts it once more on the same database:
// every order ends CONFIRMED or CANCELLED as its saga should, a retry of
// each returns the same order, and the books of the other services
// reconcile exactly with the orders.
func TestCrashAtEverySagaBoundary(t *testing.T) {
	for _, driver := range orderDrivers {
		t.Run(driver, func(t *testing.T) {
			s := newPeers(t, driver)
			env := s.binaryEnv()
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()

			cases := crashes()
			keys := make([]string, len(cases))
			for i, c := range cases {
				keys[i] = fmt.Sprintf("crash-%s-%02d", driver, i)
				// The drill names this order's saga: a crash instance also
				// recovers the sagas of the instances killed before it.
				p := testkit.Start(t, binary, append(env, drill.Var+"="+c.boundary+"@"+order.ID(s.userID, keys[i]))...)
				client := orderv1connect.NewOrderServiceClient(testkit.H2CClient(), "http://"+p.Addr(), connect.WithGRPC())
				if _, err := client.PlaceOrder(ctx, connect.NewRequest(s.request(keys[i], c.sku, 1))); err == nil {
					t.Fatalf("%s: PlaceOrder was answered; the drill should have killed the process first", c.boundary)
				}
				if !p.Killed(20 * time.Second) {
					t.Fatalf("%s: the process was not killed there\n%s", c.boundary, p.Logs())
				}
			}

			p := testkit.Start(t, binary, env...)
			client := orderv1connect.NewOrderServiceClient(testkit.H2CClient(), "http://"+p.Addr(), connect.WithGRPC())
			orders := make([]*orderv1.Order, len(cases))
			for i, c := range cases {
				o := s.waitFinal(ctx, client, keys[i])
				want := confirmed
				if c.sku == "GOLD" {
					want = orderv1.OrderStatus_ORDER_STATUS_CANCELLED
				}
				if o.GetStatus() != want {
					t.Errorf("killed at %s: order %s, want %s (reason %q)", c.boundary, o.GetStatus(), want, o.GetFailureReason())
				}
				if want == orderv1.OrderStatus_ORDER_STATUS_CANCELLED && !strings.Contains(o.GetFailureReason(), "declined") {
					t.Errorf("killed at %s: cancelled for %q, want the decline", c.boundary, o.GetFailureReason())
				}
				// A retry after everything returns the same order.
				res, err := client.PlaceOrder(ctx, connect.NewRequest(s.request(keys[i], c.sku, 1)))
				if got := retried(res, err); got != o.GetOrderId() {
					t.Errorf("killed at %s: PlaceOrder retried: order %q (%v), want %s", c.boundary, got, err, o.GetOrderId())
				}
				orders[i] = o
			}
			if t.Failed() {
				t.Logf("last order process:\n%s", p.Logs())
			}
			s.reconcile(t, orders)
		})
	}
}

// TestPaymentKilledMidCharge kills the payment service, a real process,
// in the middle of a charge at each point where the money and the ledger
// could part, while the order service places an order; the payment
// service is started again on its database and the saga's retries reach
// it: the order is confirmed, charged exactly once, and the books
// reconcile.
func TestPaymentKilledMidCharge(t *testing.T) {
	for _, point := range paymentservice.CrashPoints {
		t.Run(point, func(t *testing.T) {
			s := newPeers(t, database.DriverSQLite)
			// This test's payment service is the real binary, on a database
			// of its own, in place of the shop's.
			data := t.TempDir()
			env := []string{
				"KEEL_ENV=test",
				"KEEL_CONFIG_DIR=" + filepath.Join("..", "..", "..", "consul", "kv"),
				"KEEL_SERVER_ADDR=127.0.0.1:0",
				"CONSUL_HTTP_ADDR=",
				"KEEL_DATABASE_DATA_DIR=" + data,
			}
			payment := testkit.Start(t, paymentBinary, append(env, drill.Var+"="+point)...)
			s.paymentData = data
			s.reroutePayment(t, "", payment.Addr())
			// Retries enough to outlast the payment service's restart.
			s.orderEnv["KEEL_SAGA_MAX_ATTEMPTS"] = "100"
			s.orderEnv["KEEL_SAGA_MAX_BACKOFF"] = "100ms"
			s.orders = s.startOrders()

			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			placed := make(chan error, 1)
			var o *orderv1.Order
			go func() {
				res, err := s.orders.PlaceOrder(ctx, connect.NewRequest(s.request("payment-crash-1", "TEA", 3)))
				if err == nil {
					o = res.Msg.GetOrder()
				}
				placed <- err
			}()
			if !payment.Killed(20 * time.Second) {
				t.Fatalf("the payment service was not killed at %s\n%s", point, payment.Logs())
			}
			restarted := testkit.Start(t, paymentBinary, env...)
			s.reroutePayment(t, payment.Addr(), restarted.Addr())
			if err := <-placed; err != nil {
				t.Fatalf("PlaceOrder: %v\norder service:\n%s", err, s.logs.String())
			}
			if o.GetStatus() != confirmed {
				t.Fatalf("order %s (%q), want confirmed", o.GetStatus(), o.GetFailureReason())
			}
			s.reconcile(t, []*orderv1.Order{o})
		})
	}
}

// binaryEnv is the environment of the order binary in the shop: the
// shop's order settings, and its peers by static discovery.
func (s *shop) binaryEnv() []string {
	env := []string{
		"KEEL_ENV=test",
		"KEEL_CONFIG_DIR=" + filepath.Join("..", "..", "..", "consul", "kv"),
		"KEEL_SERVER_ADDR=127.0.0.1:0",
		"CONSUL_HTTP_ADDR=",
		"KEEL_PEERS=" + s.peers,
	}
	for _, k := range slices.Sorted(maps.Keys(s.orderEnv)) {
		env = append(env, k+"="+s.orderEnv[k])
	}
	return env
}

// request is a PlaceOrder of quantity of sku by the shop's user.
func (s *shop) request(key, sku string, quantity int64) *orderv1.PlaceOrderRequest {
	return &orderv1.PlaceOrderRequest{
		IdempotencyKey: key, UserId: s.userID,
		Lines: []*orderv1.OrderLine{{Sku: sku, Quantity: quantity}},
	}
}

// reroutePayment points the shop's discovery at the payment service at
// addr instead of old (none when old is empty) and of the recorder.
func (s *shop) reroutePayment(t *testing.T, old, addr string) {
	t.Helper()
	ctx := context.Background()
	_ = s.registry.Deregister(ctx, "payment-recorder")
	if old != "" {
		_ = s.registry.Deregister(ctx, "payment-"+old)
	}
	if err := s.registry.Register(ctx, discovery.Instance{ID: "payment-" + addr, Service: "payment", Addr: addr}); err != nil {
		t.Fatal(err)
	}
}

// waitFinal waits until the order placed under key is CONFIRMED or
// CANCELLED and returns it.
func (s *shop) waitFinal(ctx context.Context, client orderv1connect.OrderServiceClient, key string) *orderv1.Order {
	s.t.Helper()
	var o *orderv1.Order
	eventually(s.t, "order "+key+" final", func() error {
		res, err := client.GetOrder(ctx, connect.NewRequest(&orderv1.GetOrderRequest{OrderId: order.ID(s.userID, key)}))
		if err != nil {
			return err
		}
		o = res.Msg.GetOrder()
		if o.GetStatus() == orderv1.OrderStatus_ORDER_STATUS_PENDING {
			return fmt.Errorf("order %s still pending", o.GetOrderId())
		}
		return nil
	})
	return o
}

// retried returns the id of the order a repeated PlaceOrder answered
// with: in the response, or in the error of a cancelled order.
func retried(res *connect.Response[orderv1.PlaceOrderResponse], err error) string {
	if err == nil {
		return res.Msg.GetOrder().GetOrderId()
	}
	if ce, ok := err.(*connect.Error); ok {
		for _, d := range ce.Details() {
			if v, _ := d.Value(); v != nil {
				if o, ok := v.(*orderv1.Order); ok {
					return o.GetOrderId()
				}
			}
		}
	}
	return ""
}

// reconcile audits the books of the inventory and the payment service,
// read from their databases, against orders, every order placed in the
// shop: for every item, available + reserved + committed is the initial
// stock, nothing is left reserved, and what is committed is what the
// CONFIRMED orders bought; the ledger's charges less its refunds are the
// total of the CONFIRMED orders, each of which was charged once.
func (s *shop) reconcile(t *testing.T, orders []*orderv1.Order) {
	t.Helper()
	bought := map[string]int64{}
	var confirmedTotal int64
	confirmedPayments := map[string]bool{}
	for _, o := range orders {
		if o.GetStatus() != confirmed {
			continue
		}
		for _, l := range o.GetLines() {
			bought[l.GetSku()] += l.GetQuantity()
		}
		confirmedTotal += o.GetTotal().GetAmountMinor()
		confirmedPayments[o.GetPaymentId()] = true
	}

	inventory := openSQLite(t, s.inventoryData, "inventory")
	rows, err := inventory.Query(`SELECT id, available, reserved, committed FROM items`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var sku string
		var available, reserved, committed int64
		if err := rows.Scan(&sku, &available, &reserved, &committed); err != nil {
			t.Fatal(err)
		}
		if sum := available + reserved + committed; sum != initialStock[sku] {
			t.Errorf("%s: available %d + reserved %d + committed %d = %d, want the initial %d", sku, available, reserved, committed, sum, initialStock[sku])
		}
		if reserved != 0 || committed != bought[sku] {
			t.Errorf("%s: reserved %d, committed %d; want 0 and %d (confirmed orders)", sku, reserved, committed, bought[sku])
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}

	ledger := openSQLite(t, s.paymentData, "payment")
	var charged, refunded int64
	charges := map[string]int{}
	entries, err := ledger.Query(`SELECT kind, amount_minor, payment_id FROM ledger_entries`)
	if err != nil {
		t.Fatal(err)
	}
	defer entries.Close()
	for entries.Next() {
		var kind, payment string
		var amount int64
		if err := entries.Scan(&kind, &amount, &payment); err != nil {
			t.Fatal(err)
		}
		switch kind {
		case "charge":
			charged += amount
			charges[payment]++
		case "refund":
			refunded += amount
		}
	}
	if err := entries.Err(); err != nil {
		t.Fatal(err)
	}
	if charged-refunded != confirmedTotal {
		t.Errorf("ledger: charged %d - refunded %d = %d, want %d (the confirmed orders' total)", charged, refunded, charged-refunded, confirmedTotal)
	}
	for id := range confirmedPayments {
		if charges[id] != 1 {
			t.Errorf("payment %s of a confirmed order has %d charge entries, want 1", id, charges[id])
		}
	}
}

// openSQLite opens a service's SQLite file in dir for reading.
func openSQLite(t *testing.T, dir, name string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, name+".db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}
