package service_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	paymentv1 "github.com/keelplatform/keel/gen/go/shop/payment/v1"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/pgtest"
	"github.com/keelplatform/keel/internal/testkit"
	inventoryservice "github.com/keelplatform/keel/services/inventory/service"
	orderservice "github.com/keelplatform/keel/services/order/service"
	paymentservice "github.com/keelplatform/keel/services/payment/service"
	userservice "github.com/keelplatform/keel/services/user/service"
)

// binary and paymentBinary are the order and the payment service built
// as their own binaries, for the crash tests.
var binary, paymentBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keel-order-bin-")
	if err == nil {
		binary, err = testkit.Build(dir, "github.com/keelplatform/keel/services/order")
	}
	if err == nil {
		paymentBinary, err = testkit.Build(dir, "github.com/keelplatform/keel/services/payment")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	pgtest.Main(m)
}

// The shop these tests run: the real inventory, user and payment
// services booted in-process as their binaries boot them, and the order
// service under test, all on loopback. Payment calls from the order
// service go through a recorder in front of the real payment service,
// which counts what was charged and refunded and can lose answers.
//
// Catalogue: TEA and MUG in EUR, GOLD in EUR above the payment
// simulator's decline limit, BOOK in USD.
const (
	declineOverMinor = 50000
	teaPrice         = 450
	mugPrice         = 1200
	goldPrice        = 60000
	teaStock         = 100
	mugStock         = 3
	goldStock        = 20
)

// orderDrivers are the databases the order service is tested on.
var orderDrivers = []string{database.DriverSQLite, database.DriverPostgres}

// shop is a running shop.
type shop struct {
	t        *testing.T
	registry *discovery.Static
	items    inventoryv1connect.InventoryServiceClient
	payments paymentv1connect.PaymentServiceClient // the real one, directly
	recorder *recorder
	userID   string
	// orderEnv is the order service's environment.
	orderEnv map[string]string
	orders   orderv1connect.OrderServiceClient
	logs     *testkit.Buffer
	// peers are the peers' addresses, in the form of KEEL_PEERS.
	peers string
	// users is the user service, directly.
	users userv1connect.UserServiceClient
	// inventoryData and paymentData hold the SQLite files of the
	// inventory and the payment service, for audits of their books.
	inventoryData, paymentData string
}

// newShop starts the peers and an order service on driver.
func newShop(t *testing.T, driver string) *shop {
	t.Helper()
	s := newPeers(t, driver)
	s.orders = s.startOrders()
	return s
}

// newPeers starts the peers, with the catalogue and a user, and readies
// the environment of an order service on driver, which it does not start.
func newPeers(t *testing.T, driver string) *shop {
	t.Helper()
	s := &shop{t: t, registry: discovery.NewStatic(), logs: &testkit.Buffer{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("order service logs:\n%s", s.logs.String())
		}
	})

	s.inventoryData, s.paymentData = t.TempDir(), t.TempDir()
	inventoryAddr := startService(t, inventoryservice.Service(), s.registry, io.Discard, map[string]string{"KEEL_DATABASE_DATA_DIR": s.inventoryData})
	s.items = inventoryv1connect.NewInventoryServiceClient(http.DefaultClient, "http://"+inventoryAddr)
	userAddr := startService(t, userservice.Service(), s.registry, io.Discard, map[string]string{
		userservice.TokenKeyVar:                "order-service-test-signing-key-0123456789",
		"KEEL_PASSWORD_HASHING_TIME":           "1",
		"KEEL_PASSWORD_HASHING_MEMORY_KIB":     "8192",
		"KEEL_PASSWORD_HASHING_MAX_CONCURRENT": "4",
	})
	// The real payment service registers in a registry of its own: the
	// order service reaches it through the recorder.
	paymentAddr := startService(t, paymentservice.Service(), discovery.NewStatic(), io.Discard, map[string]string{
		"KEEL_SIMULATOR_DECLINE_OVER_MINOR": fmt.Sprint(declineOverMinor),
		"KEEL_DATABASE_DATA_DIR":            s.paymentData,
	})
	s.payments = paymentv1connect.NewPaymentServiceClient(http.DefaultClient, "http://"+paymentAddr)
	var recorderAddr string
	s.recorder, recorderAddr = newRecorder(t, s.payments, s.registry)
	s.recorder.items = s.items
	s.peers = "inventory=" + inventoryAddr + ",user=" + userAddr + ",payment=" + recorderAddr

	ctx := context.Background()
	for i, it := range []struct {
		sku      string
		currency string
		price    int64
		stock    int64
	}{
		{"TEA", "EUR", teaPrice, teaStock}, {"MUG", "EUR", mugPrice, mugStock},
		{"GOLD", "EUR", goldPrice, goldStock}, {"BOOK", "USD", 900, 10},
	} {
		_, err := s.items.CreateItem(ctx, connect.NewRequest(&inventoryv1.CreateItemRequest{
			Sku: it.sku, Name: it.sku, Price: &moneyv1.Money{CurrencyCode: it.currency, AmountMinor: it.price},
			InitialStock: it.stock, RequestId: fmt.Sprintf("create-item-%d", i),
		}))
		if err != nil {
			t.Fatal(err)
		}
	}
	s.users = userv1connect.NewUserServiceClient(http.DefaultClient, "http://"+userAddr)
	res, err := s.users.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{
		Email: "ada@example.com", Password: "correct horse battery", DisplayName: "Ada",
	}))
	if err != nil {
		t.Fatal(err)
	}
	s.userID = res.Msg.GetUser().GetId()

	s.orderEnv = map[string]string{
		// Quick sagas: short leases, backoffs and polls.
		"KEEL_SAGA_LEASE_TTL":                "1s",
		"KEEL_SAGA_MAX_ATTEMPTS":             "3",
		"KEEL_SAGA_BACKOFF":                  "10ms",
		"KEEL_SAGA_MAX_BACKOFF":              "50ms",
		"KEEL_SAGA_COMPENSATION_MAX_BACKOFF": "100ms",
		"KEEL_SAGA_POLL_INTERVAL":            "20ms",
		"KEEL_SAGA_RECOVERY_INTERVAL":        "100ms",
		// An instance whose answers are lost comes back quickly.
		"KEEL_CALLS_BREAKER_OPEN_FOR": "50ms",
	}
	switch driver {
	case database.DriverSQLite:
		s.orderEnv["KEEL_DATABASE_DATA_DIR"] = t.TempDir()
	case database.DriverPostgres:
		s.orderEnv["KEEL_DATABASE_DRIVER"] = database.DriverPostgres
		s.orderEnv[orderservice.DatabaseDSNVar] = pgtest.Start(t)
	}
	return s
}

// orderDatabase is the order service's database.
func (s *shop) orderDatabase() database.Config {
	if dsn := s.orderEnv[orderservice.DatabaseDSNVar]; dsn != "" {
		return database.Config{Driver: database.DriverPostgres, DSN: dsn}
	}
	return database.Config{Driver: database.DriverSQLite, DataDir: s.orderEnv["KEEL_DATABASE_DATA_DIR"], Name: orderservice.Name}
}

// startOrders starts an instance of the order service on the shop's
// order database and returns a client of it; the instance stops when the
// test ends.
func (s *shop) startOrders() orderv1connect.OrderServiceClient {
	s.t.Helper()
	addr := startService(s.t, orderservice.Service(), s.registry, s.logs, s.orderEnv)
	return orderv1connect.NewOrderServiceClient(http.DefaultClient, "http://"+addr)
}

// startService boots svc in the test environment, registered in
// registry, with a fresh data directory and the environment variables
// vars, and returns its address. It stops when the test ends.
func startService[T boot.Settings](t *testing.T, svc boot.Service[T], registry *discovery.Static, log io.Writer, vars map[string]string) string {
	t.Helper()
	env := map[string]string{"KEEL_DATABASE_DATA_DIR": t.TempDir()}
	for k, v := range vars {
		env[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := boot.Start(ctx, svc, boot.Options{
		Env:       config.EnvTest,
		ConfigDir: seedDir,
		Backend:   boot.Static{Discovery: registry},
		Log:       log,
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	})
	if err != nil {
		cancel()
		t.Fatalf("start %s: %v", svc.Name, err)
	}
	t.Cleanup(func() {
		cancel()
		if err := r.Wait(); err != nil {
			t.Errorf("%s: %v", svc.Name, err)
		}
	})
	return r.Instance.Addr
}

// place places an order of lines ("SKU", quantity pairs) under key.
func (s *shop) place(key string, lines ...any) (*orderv1.Order, error) {
	return s.placeWith(s.orders, key, lines...)
}

// placeWith places an order through the order instance c.
func (s *shop) placeWith(c orderv1connect.OrderServiceClient, key string, lines ...any) (*orderv1.Order, error) {
	req := &orderv1.PlaceOrderRequest{IdempotencyKey: key, UserId: s.userID}
	for i := 0; i < len(lines); i += 2 {
		req.Lines = append(req.Lines, &orderv1.OrderLine{
			Sku: lines[i].(string), Quantity: int64(lines[i+1].(int)),
			// Whatever the caller says, prices come from the catalogue.
			UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: 1},
		})
	}
	res, err := c.PlaceOrder(context.Background(), connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetOrder(), nil
}

// get returns the order with the id.
func (s *shop) get(id string) *orderv1.Order {
	s.t.Helper()
	res, err := s.orders.GetOrder(context.Background(), connect.NewRequest(&orderv1.GetOrderRequest{OrderId: id}))
	if err != nil {
		s.t.Fatalf("GetOrder %s: %v", id, err)
	}
	return res.Msg.GetOrder()
}

// available returns the available stock of sku.
func (s *shop) available(sku string) int64 {
	s.t.Helper()
	res, err := s.items.GetItem(context.Background(), connect.NewRequest(&inventoryv1.GetItemRequest{Sku: sku}))
	if err != nil {
		s.t.Fatal(err)
	}
	return res.Msg.GetItem().GetAvailable()
}

// wantCommitted checks that the reservation of order id is committed:
// releasing a committed reservation is refused (and changes nothing).
func (s *shop) wantCommitted(id string) {
	s.t.Helper()
	_, err := s.items.ReleaseReservation(context.Background(), connect.NewRequest(&inventoryv1.ReleaseReservationRequest{ReservationId: id}))
	if connect.CodeOf(err) != connect.CodeFailedPrecondition {
		s.t.Errorf("releasing the reservation of order %s: %v, want failed_precondition (committed)", id, err)
	}
}

// payment returns the payment with the id, as the payment service has it.
func (s *shop) payment(id string) *paymentv1.Payment {
	s.t.Helper()
	res, err := s.payments.GetPayment(context.Background(), connect.NewRequest(&paymentv1.GetPaymentRequest{PaymentId: id}))
	if err != nil {
		s.t.Fatalf("GetPayment %s: %v", id, err)
	}
	return res.Msg.GetPayment()
}

// eventually retries check until it passes or 15s have gone by.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err = check(); err == nil {
			return
		}
	}
	t.Fatalf("%s: %v", what, err)
}

// recorder is a PaymentService in front of the real one: it forwards
// every call, and records the payments charges captured (by key) and the
// refunds made. It can delay charges and lose their answers, and let
// the stock reservation of an order expire while its charge is under way.
type recorder struct {
	next atomic.Pointer[forward]
	// items is the inventory, whose reservations expire.
	items inventoryv1connect.InventoryServiceClient

	mu       sync.Mutex
	captured map[string]string // charge key -> payment id
	declined int
	charges  int               // Charge calls
	refunds  map[string]string // refund key -> payment id

	// chargeDelay is added to every charge, in nanoseconds.
	chargeDelay atomic.Int64
	// loseCharges is how many more charge answers to lose: the charge is
	// made, the caller gets unavailable.
	loseCharges atomic.Int64
	// expiring are the orders whose stock reservation expires while
	// their charge is under way.
	expiring map[string]bool
}

// newRecorder serves a recorder in front of payments on loopback,
// registers it as "payment" in registry and returns it with its address.
func newRecorder(t *testing.T, payments paymentv1connect.PaymentServiceClient, registry *discovery.Static) (*recorder, string) {
	t.Helper()
	r := &recorder{captured: map[string]string{}, refunds: map[string]string{}, expiring: map[string]bool{}}
	r.forwardTo(payments)
	mux := http.NewServeMux()
	mux.Handle(paymentv1connect.NewPaymentServiceHandler(r))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	if err := registry.Register(context.Background(), discovery.Instance{ID: "payment-recorder", Service: "payment", Addr: ln.Addr().String()}); err != nil {
		t.Fatal(err)
	}
	return r, ln.Addr().String()
}

// forwardTo makes the recorder forward to payments from now on.
func (r *recorder) forwardTo(payments paymentv1connect.PaymentServiceClient) {
	r.next.Store(&forward{payments})
}

// expireWhenCharged makes the stock reservation of the order with the id
// expire whenever a charge for it is made, before the charge is
// answered, as a hold that ran out while a slow provider charged would:
// the inventory releases it (what its sweep does to an expired hold), and
// committing it fails for good.
func (r *recorder) expireWhenCharged(orderID string) {
	r.mu.Lock()
	r.expiring[orderID] = true
	r.mu.Unlock()
}

// forward is the real payment service as a handler.
type forward struct {
	c paymentv1connect.PaymentServiceClient
}

func (f forward) Charge(ctx context.Context, req *connect.Request[paymentv1.ChargeRequest]) (*connect.Response[paymentv1.ChargeResponse], error) {
	return f.c.Charge(ctx, connect.NewRequest(req.Msg))
}

func (f forward) Refund(ctx context.Context, req *connect.Request[paymentv1.RefundRequest]) (*connect.Response[paymentv1.RefundResponse], error) {
	return f.c.Refund(ctx, connect.NewRequest(req.Msg))
}

func (f forward) GetPayment(ctx context.Context, req *connect.Request[paymentv1.GetPaymentRequest]) (*connect.Response[paymentv1.GetPaymentResponse], error) {
	return f.c.GetPayment(ctx, connect.NewRequest(req.Msg))
}

// Charge forwards a charge and records its outcome.
func (r *recorder) Charge(ctx context.Context, req *connect.Request[paymentv1.ChargeRequest]) (*connect.Response[paymentv1.ChargeResponse], error) {
	if d := time.Duration(r.chargeDelay.Load()); d > 0 {
		time.Sleep(d)
	}
	res, err := r.next.Load().Charge(ctx, req)
	r.mu.Lock()
	expire := r.expiring[req.Msg.GetOrderId()]
	r.mu.Unlock()
	if expire {
		if _, rerr := r.items.ReleaseReservation(ctx, connect.NewRequest(&inventoryv1.ReleaseReservationRequest{ReservationId: req.Msg.GetOrderId()})); rerr != nil {
			return nil, rerr
		}
	}
	r.mu.Lock()
	r.charges++
	switch {
	case err == nil:
		r.captured[req.Msg.GetIdempotencyKey()] = res.Msg.GetPayment().GetPaymentId()
	case connect.CodeOf(err) == connect.CodeFailedPrecondition:
		r.declined++
	}
	r.mu.Unlock()
	if r.loseCharges.Add(-1) >= 0 {
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("answer lost"))
	}
	return res, err
}

// Refund forwards a refund and records it.
func (r *recorder) Refund(ctx context.Context, req *connect.Request[paymentv1.RefundRequest]) (*connect.Response[paymentv1.RefundResponse], error) {
	res, err := r.next.Load().Refund(ctx, req)
	if err == nil {
		r.mu.Lock()
		r.refunds[req.Msg.GetIdempotencyKey()] = req.Msg.GetPaymentId()
		r.mu.Unlock()
	}
	return res, err
}

// GetPayment forwards.
func (r *recorder) GetPayment(ctx context.Context, req *connect.Request[paymentv1.GetPaymentRequest]) (*connect.Response[paymentv1.GetPaymentResponse], error) {
	return r.next.Load().GetPayment(ctx, req)
}

// payments returns the distinct payments captured, and the refunds made.
func (r *recorder) payments() (captured []string, refunds int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	for _, id := range r.captured {
		if !seen[id] {
			seen[id] = true
			captured = append(captured, id)
		}
	}
	return captured, len(r.refunds)
}

// calls returns the number of Charge calls and of declines.
func (r *recorder) calls() (charges, declined int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.charges, r.declined
}
