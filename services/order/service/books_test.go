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
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
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

// sagaPath is one way the place-order saga can go, with an order that
// goes that way and every boundary it passes, in order.
type sagaPath struct {
	name string
	// sku and quantity make the order; price is the sku's.
	sku      string
	quantity int64
	price    int64
	// expire lets the order's stock reservation expire while its charge
	// is under way, so that committing the stock fails for good.
	expire bool
	// status is how the order ends, and reason a part of the failure
	// reason of a cancelled one.
	status orderv1.OrderStatus
	reason string
	// boundaries are the saga boundaries the order passes.
	boundaries []string
}

// sagaPaths are the paths of the place-order saga: TEA is confirmed;
// MUG, ordered past its stock, fails to reserve; GOLD (over the payment
// simulator's limit) is declined, its reservation released; and TEA
// whose reservation expires during the charge fails to commit, its
// charge refunded and its reservation released.
func sagaPaths() []sagaPath {
	b := func(p saga.Point, step string) string { return saga.Boundary{Point: p, StepName: step}.String() }
	done := func(step string) []string {
		return []string{b(saga.BeforeAction, step), b(saga.AfterAction, step), b(saga.ActionSaved, step)}
	}
	failed := func(step string) []string {
		return []string{b(saga.BeforeAction, step), b(saga.ActionFailed, step), b(saga.FailureSaved, step)}
	}
	undone := func(step string) []string {
		return []string{b(saga.BeforeCompensation, step), b(saga.AfterCompensation, step), b(saga.CompensationSaved, step)}
	}
	created := []string{saga.Boundary{Point: saga.PointCreated}.String()}
	path := func(steps ...[]string) []string { return slices.Concat(append([][]string{created}, steps...)...) }
	const (
		reserve = placeorder.ReserveStock
		charge  = placeorder.ChargePayment
		commit  = placeorder.CommitStock
	)
	return []sagaPath{
		{name: "confirmed", sku: "TEA", quantity: 1, price: teaPrice, status: confirmed,
			boundaries: path(done(reserve), done(charge), done(commit))},
		{name: "out of stock", sku: "MUG", quantity: mugStock + 1, price: mugPrice, status: cancelled, reason: "out of stock",
			boundaries: path(failed(reserve))},
		{name: "declined", sku: "GOLD", quantity: 1, price: goldPrice, status: cancelled, reason: "payment declined",
			boundaries: path(done(reserve), failed(charge), undone(reserve))},
		{name: "failed after the charge", sku: "TEA", quantity: 1, price: teaPrice, expire: true, status: cancelled, reason: "inventory refused",
			boundaries: path(done(reserve), done(charge), failed(commit), undone(charge), undone(reserve))},
	}
}

// TestSagaPathsPassTheirBoundaries runs an order down each saga path
// through the service's saga definition, recording the boundaries its
// driver passes: they are the path's boundaries, so the crash test below
// kills at every boundary of every path.
func TestSagaPathsPassTheirBoundaries(t *testing.T) {
	s := newPeers(t, database.DriverSQLite)
	for _, p := range sagaPaths() {
		key := "path-" + strings.ReplaceAll(p.name, " ", "-")
		if p.expire {
			s.recorder.expireWhenCharged(order.ID(s.userID, key))
		}
		var passed []string
		_, err := s.runSaga(key, func(b saga.Boundary) error {
			passed = append(passed, b.String())
			return nil
		}, order.Line{SKU: p.sku, Quantity: p.quantity, UnitPriceMinor: p.price})
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		if !slices.Equal(passed, p.boundaries) {
			t.Errorf("%s: the saga passed\n%q\nthe path lists\n%q", p.name, passed, p.boundaries)
		}
	}
}

// TestCrashAtEverySagaBoundary kills the order service, a real process,
// with SIGKILL at every boundary of every path of the place-order saga in
// turn (confirmed, out of stock, declined, failed after the charge), one
// order per boundary, then starts it once more on the same database:
// every order ends CONFIRMED or CANCELLED as its path should, a retry of
// each returns the same order, and the three books reconcile: the
// payment provider's, the payment ledger and the orders (with the
// inventory's).
func TestCrashAtEverySagaBoundary(t *testing.T) {
	for _, driver := range orderDrivers {
		t.Run(driver, func(t *testing.T) {
			began := time.Now()
			s := newPeers(t, driver)
			env := s.binaryEnv()
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()

			type crash struct {
				sagaPath
				boundary, key string
			}
			var cases []crash
			for _, p := range sagaPaths() {
				for _, b := range p.boundaries {
					cases = append(cases, crash{p, b, fmt.Sprintf("crash-%s-%02d", driver, len(cases))})
				}
			}
			for _, c := range cases {
				id := order.ID(s.userID, c.key)
				if c.expire {
					s.recorder.expireWhenCharged(id)
				}
				// The drill names this order's saga: a crash instance also
				// recovers the sagas of the instances killed before it.
				p := testkit.Start(t, binary, append(env, drill.Var+"="+c.boundary+"@"+id)...)
				client := orderv1connect.NewOrderServiceClient(testkit.H2CClient(), "http://"+p.Addr(), connect.WithGRPC())
				if _, err := client.PlaceOrder(ctx, connect.NewRequest(s.request(c.key, c.sku, c.quantity))); err == nil {
					t.Fatalf("%s %s: PlaceOrder was answered; the drill should have killed the process first", c.name, c.boundary)
				}
				if !p.Killed(20 * time.Second) {
					t.Fatalf("%s %s: the process was not killed there\n%s", c.name, c.boundary, p.Logs())
				}
			}

			p := testkit.Start(t, binary, env...)
			client := orderv1connect.NewOrderServiceClient(testkit.H2CClient(), "http://"+p.Addr(), connect.WithGRPC())
			orders := make([]*orderv1.Order, len(cases))
			for i, c := range cases {
				o := s.waitFinal(ctx, client, c.key)
				if o.GetStatus() != c.status || !strings.Contains(o.GetFailureReason(), c.reason) {
					t.Errorf("%s, killed at %s: order %s (reason %q), want %s (%q)", c.name, c.boundary, o.GetStatus(), o.GetFailureReason(), c.status, c.reason)
				}
				// A retry after everything returns the same order.
				res, err := client.PlaceOrder(ctx, connect.NewRequest(s.request(c.key, c.sku, c.quantity)))
				if got := retried(res, err); got != o.GetOrderId() {
					t.Errorf("%s, killed at %s: PlaceOrder retried: order %q (%v), want %s", c.name, c.boundary, got, err, o.GetOrderId())
				}
				orders[i] = o
			}
			if t.Failed() {
				t.Logf("last order process:\n%s", p.Logs())
			}
			s.reconcile(t, orders)
			t.Logf("%d crashes on %s in %s", len(cases), driver, time.Since(began).Round(time.Millisecond))
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

// TestPaymentKilledMidRefund kills the payment service, a real process,
// in the middle of the refund that compensates an order's charge (its
// stock reservation expired during the charge, so committing it failed),
// at each point where the provider and the ledger could part; the
// payment service is started again on its database and the saga's
// compensation, retried, reaches it: the order is cancelled, its charge
// given back exactly once, and the three books reconcile.
func TestPaymentKilledMidRefund(t *testing.T) {
	for _, point := range paymentservice.RefundCrashPoints {
		t.Run(point, func(t *testing.T) {
			s := newPeers(t, database.DriverSQLite)
			// This test's payment service is the real binary, on a database
			// of its own, in place of the shop's, behind the recorder.
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
			s.recorder.forwardTo(paymentv1connect.NewPaymentServiceClient(testkit.H2CClient(), "http://"+payment.Addr(), connect.WithGRPC()))
			s.orders = s.startOrders()

			const key = "payment-refund-crash-1"
			id := order.ID(s.userID, key)
			s.recorder.expireWhenCharged(id)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			placed := make(chan error, 1)
			go func() {
				_, err := s.orders.PlaceOrder(ctx, connect.NewRequest(s.request(key, "TEA", 2)))
				placed <- err
			}()
			if !payment.Killed(20 * time.Second) {
				t.Fatalf("the payment service was not killed at %s\n%s", point, payment.Logs())
			}
			restarted := testkit.Start(t, paymentBinary, env...)
			s.recorder.forwardTo(paymentv1connect.NewPaymentServiceClient(testkit.H2CClient(), "http://"+restarted.Addr(), connect.WithGRPC()))
			cancelledWith(t, <-placed, "inventory refused")
			o := s.waitFinal(ctx, s.orders, key)
			if o.GetStatus() != cancelled {
				t.Fatalf("order %s (%q), want cancelled", o.GetStatus(), o.GetFailureReason())
			}
			s.reconcile(t, []*orderv1.Order{o})
			if st, err := paymentservice.ReadProviderBooks(ctx, data); err != nil || len(st.Refunds) != 1 {
				t.Fatalf("provider books %+v, %v; want the one refund", st, err)
			}
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

// reconcile audits three books against each other: the payment
// provider's (read through the payment service's ReadProviderBooks), the
// payment service's ledger and the orders, every order placed in the
// shop, with the inventory's stock besides.
//
// Inventory: for every item, available + reserved + committed is the
// initial stock, nothing is left reserved, and what is committed is what
// the CONFIRMED orders bought. Money, per order (its charge key is the
// key of its saga's charge-payment step): what the provider holds of the
// charge under that key (charged less refunded) and what the ledger
// holds of it are both the order's total when it is CONFIRMED, nothing
// when it is CANCELLED; a confirmed order's payment is the ledger's
// payment for that key, charged once. Entry by entry: every charge the
// provider took is a charge in the ledger under the same key and amount,
// and the other way round; every refund in the ledger is a refund at
// the provider under the provider key of its request's key, of the same
// charge and amount, and the other way round; every charge the provider
// declined is a cancelled order's; and neither book holds money of a
// charge no order made.
func (s *shop) reconcile(t *testing.T, orders []*orderv1.Order) {
	t.Helper()
	bought := map[string]int64{}
	var confirmedTotal int64
	for _, o := range orders {
		if o.GetStatus() != confirmed {
			continue
		}
		for _, l := range o.GetLines() {
			bought[l.GetSku()] += l.GetQuantity()
		}
		confirmedTotal += o.GetTotal().GetAmountMinor()
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

	// The ledger, entry by entry.
	type entry struct {
		key, payment string
		amount       int64
	}
	ledger := openSQLite(t, s.paymentData, "payment")
	var charged, refunded int64
	var ledgerCharges, ledgerRefunds []entry
	chargeKeyOf := map[string]string{} // payment id -> its charge's key
	entries, err := ledger.Query(`SELECT kind, idempotency_key, amount_minor, payment_id FROM ledger_entries`)
	if err != nil {
		t.Fatal(err)
	}
	defer entries.Close()
	for entries.Next() {
		var kind string
		var e entry
		if err := entries.Scan(&kind, &e.key, &e.amount, &e.payment); err != nil {
			t.Fatal(err)
		}
		switch kind {
		case "charge":
			charged += e.amount
			ledgerCharges = append(ledgerCharges, e)
			if prev, ok := chargeKeyOf[e.payment]; ok {
				t.Errorf("ledger: payment %s has two charge entries, %s and %s", e.payment, prev, e.key)
			}
			chargeKeyOf[e.payment] = e.key
		case "refund":
			refunded += e.amount
			ledgerRefunds = append(ledgerRefunds, e)
		}
	}
	if err := entries.Err(); err != nil {
		t.Fatal(err)
	}
	if charged-refunded != confirmedTotal {
		t.Errorf("ledger: charged %d - refunded %d = %d, want %d (the confirmed orders' total)", charged, refunded, charged-refunded, confirmedTotal)
	}
	ledgerHeld := map[string]int64{} // charge key -> charged less refunded
	paymentOf := map[string]string{} // charge key -> payment id
	for _, e := range ledgerCharges {
		ledgerHeld[e.key] += e.amount
		paymentOf[e.key] = e.payment
	}
	for _, e := range ledgerRefunds {
		ledgerHeld[chargeKeyOf[e.payment]] -= e.amount
	}

	// The provider's books against the ledger.
	books, err := paymentservice.ReadProviderBooks(context.Background(), s.paymentData)
	if err != nil {
		t.Fatal(err)
	}
	providerHeld := map[string]int64{} // charge key -> charged less refunded
	taken := 0
	for key, c := range books.Charges {
		if c.DeclineReason != "" {
			continue
		}
		taken++
		providerHeld[key] = c.Amount.Minor - c.Refunded
	}
	if taken != len(ledgerCharges) || len(books.Refunds) != len(ledgerRefunds) {
		t.Errorf("the provider took %d charges and made %d refunds; the ledger has %d and %d", taken, len(books.Refunds), len(ledgerCharges), len(ledgerRefunds))
	}
	for _, e := range ledgerCharges {
		if c, ok := books.Charges[e.key]; !ok || c.DeclineReason != "" || c.Amount.Minor != e.amount {
			t.Errorf("ledger charge %s of %d: the provider has %+v (found: %v)", e.key, e.amount, c, ok)
		}
	}
	var providerRefunded int64
	for _, e := range ledgerRefunds {
		key := paymentservice.ProviderRefundKey(e.key)
		if r, ok := books.Refunds[key]; !ok || r.ChargeKey != chargeKeyOf[e.payment] || r.Amount.Minor != e.amount {
			t.Errorf("ledger refund %s of %d of charge %s: the provider has %+v under %s (found: %v)", e.key, e.amount, chargeKeyOf[e.payment], r, key, ok)
		}
	}
	for _, r := range books.Refunds {
		providerRefunded += r.Amount.Minor
		if books.Charges[r.ChargeKey].Refunded == 0 {
			t.Errorf("provider refund %s of charge %s, which says nothing was refunded", r.Key, r.ChargeKey)
		}
	}
	if providerRefunded != refunded {
		t.Errorf("the provider refunded %d, the ledger %d", providerRefunded, refunded)
	}

	// The orders against both.
	ordered := map[string]bool{}
	for _, o := range orders {
		key := saga.ActionKey(o.GetOrderId(), placeorder.ChargePayment)
		ordered[key] = true
		var want int64
		if o.GetStatus() == confirmed {
			want = o.GetTotal().GetAmountMinor()
			if paymentOf[key] != o.GetPaymentId() {
				t.Errorf("confirmed order %s has payment %q; the ledger's charge %s is payment %q", o.GetOrderId(), o.GetPaymentId(), key, paymentOf[key])
			}
		}
		if providerHeld[key] != want || ledgerHeld[key] != want {
			t.Errorf("order %s (%s, total %d): the provider holds %d of its charge, the ledger %d; want %d",
				o.GetOrderId(), o.GetStatus(), o.GetTotal().GetAmountMinor(), providerHeld[key], ledgerHeld[key], want)
		}
		if c, ok := books.Charges[key]; ok && c.DeclineReason != "" && o.GetStatus() != cancelled {
			t.Errorf("order %s is %s; the provider declined its charge (%s)", o.GetOrderId(), o.GetStatus(), c.DeclineReason)
		}
	}
	for key := range books.Charges {
		if !ordered[key] {
			t.Errorf("the provider has a charge %s of no order", key)
		}
	}
	for key := range ledgerHeld {
		if !ordered[key] {
			t.Errorf("the ledger has a charge %s of no order", key)
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
