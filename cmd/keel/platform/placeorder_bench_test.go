package platform_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sync/errgroup"

	"github.com/keelplatform/keel/cmd/keel/platform"
	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	paymentv1 "github.com/keelplatform/keel/gen/go/shop/payment/v1"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/pgtest"
	"github.com/keelplatform/keel/internal/testkit"
	orderservice "github.com/keelplatform/keel/services/order/service"
)

// BenchmarkPlaceOrder measures PlaceOrder, the place-order saga end to
// end, on whole platforms as `keel up` runs them (user, inventory,
// payment, order and the edge in this process, static discovery, caches
// in process memory), once with every service on SQLite (a file each in a
// temporary directory) and once with every service on PostgreSQL (a
// database each in one pgtest cluster, which runs with fsync off, as
// SQLite's WAL with synchronous=NORMAL does not sync a commit either).
// Every call is Connect JSON over HTTP/1.1 keep-alive through the edge.
//
// Each order has two lines (two items, quantities 1 and 2, stock 10^9)
// and a key of its own, so each call runs the whole saga: the order
// service reads the key, checks the user and prices the lines (peer
// calls answered from the user's and the inventory's caches), creates
// the saga and the order, reserves the stock, charges, commits the
// stock, saving the saga after each step, and reads the order back.
// Two single writes through the edge give the scale of one hop: Charge
// (a payment written) and ReserveStock (a reservation of the same two
// lines held).
//
// Each case runs with one caller (c1: b.N calls one after the other) and
// the charge and PlaceOrder also with placeOrderCallers callers at once
// (RunParallel). Each reports its latency percentiles (p50-ms, p99-ms),
// its rate (calls/s), PlaceOrder its ratio to the charge at the same
// concurrency (x-charge), and the PostgreSQL cases their ratio to SQLite
// (x-sqlite); a table of them all closes the run. Every answer is
// checked: an order not ORDER_STATUS_CONFIRMED with the expected total,
// a payment not captured, a reservation not held or any error fails the
// benchmark, after counting the failures by kind. So does an order
// service's database, read directly, that does not hold exactly b.N more
// orders after a case, all confirmed, or a service that did not store in
// the database it was given. Warnings and errors the services log during
// a case are counted and shown.
//
// Client, edge, services and databases share this machine: compare the
// ratios of one run, and absolute numbers only on a quiet machine.
func BenchmarkPlaceOrder(b *testing.B) {
	results := map[string]orderBenchResult{} // by "driver/case/cN"
	drivers := []string{database.DriverSQLite, database.DriverPostgres}
	for _, driver := range drivers {
		b.Run(driver, func(b *testing.B) {
			s := startOrderBench(b, driver)
			for _, c := range orderBenchCases() {
				for _, callers := range c.callers {
					name := fmt.Sprintf("%s/c%d", c.name, callers)
					b.Run(name, func(b *testing.B) {
						mark := s.logs.count()
						before := s.orderCounts(b)
						r := s.measure(b, c.call, callers)
						if after := s.orderCounts(b); c.name == "placeorder" {
							after.check(b, before, b.N)
						} else {
							after.check(b, before, 0)
						}
						if n, first := s.logs.since(mark); n > 0 {
							b.Logf("the services logged %d warnings or errors during %s, the first: %s", n, name, first)
						}
						results[driver+"/"+name] = r
						if hop, ok := results[fmt.Sprintf("%s/charge/c%d", driver, callers)]; ok && c.name == "placeorder" {
							b.ReportMetric(r.nsPerOp/hop.nsPerOp, "x-charge")
						}
						if base, ok := results[database.DriverSQLite+"/"+name]; ok && driver != database.DriverSQLite {
							b.ReportMetric(r.nsPerOp/base.nsPerOp, "x-sqlite")
						}
					})
				}
			}
		})
	}
	b.Log(orderBenchTable(results, drivers))
}

// placeOrderCallers is how many callers call at once in the concurrent
// cases.
const placeOrderCallers = 16

// orderBenchCase is a call measured by [BenchmarkPlaceOrder].
type orderBenchCase struct {
	name    string
	callers []int // concurrencies to measure it at
	// call makes one call with the key, unique to the run, and checks
	// its answer.
	call func(s *orderBench, ctx context.Context, key string) error
}

func orderBenchCases() []orderBenchCase {
	both := []int{1, placeOrderCallers}
	return []orderBenchCase{
		{name: "charge", callers: both, call: (*orderBench).charge},
		{name: "reserve", callers: []int{1}, call: (*orderBench).reserve},
		{name: "placeorder", callers: both, call: (*orderBench).placeOrder},
	}
}

// The bench catalogue: two items priced in euro cents, and the lines of
// every order and reservation.
var (
	orderBenchItems = []struct {
		sku   string
		price int64
	}{{"BENCH-ORDER-A", 450}, {"BENCH-ORDER-B", 1200}}
	orderBenchQuantities = []int64{1, 2}
)

// orderBenchStock is each item's stock, enough for any run.
const orderBenchStock = 1_000_000_000

// orderBenchTotal is the total of an order of the bench lines.
func orderBenchTotal() int64 {
	var total int64
	for i, it := range orderBenchItems {
		total += it.price * orderBenchQuantities[i]
	}
	return total
}

// orderBench is a platform started for [BenchmarkPlaceOrder], with
// clients of its edge, a registered user and the bench items.
type orderBench struct {
	orders    orderv1connect.OrderServiceClient
	payments  paymentv1connect.PaymentServiceClient
	inventory inventoryv1connect.InventoryServiceClient
	userID    string
	logs      *problemLog
	orderDB   *sql.DB      // the order service's database, read directly
	prefix    string       // of every key of this platform's calls
	seq       atomic.Int64 // numbers the keys
}

// stateless names the services that keep no data, and so open no
// database: the storefront reads its peers.
var stateless = map[string]bool{"storefront": true}

// startOrderBench starts a platform with every service on driver, seeds
// the user and the items through the edge, warms the paths up, and stops
// the platform when b ends.
func startOrderBench(b *testing.B, driver string) *orderBench {
	b.Helper()
	opts := platform.Options{
		Env: config.EnvTest, ConfigDir: "../../../consul/kv", EdgeAddr: "127.0.0.1:0", DataDir: b.TempDir(),
		Log: &problemLog{}, IdentityKey: strings.Repeat("k", 32),
	}
	if driver == database.DriverPostgres {
		opts.ProcessEnv = map[string]map[string]string{}
		for _, svc := range platform.Services() {
			if stateless[svc.Name] {
				continue
			}
			opts.ProcessEnv[svc.Name] = map[string]string{
				"KEEL_DATABASE_DRIVER": database.DriverPostgres,
				database.DSNVar:        pgtest.Start(b), // a database per service
			}
		}
	}
	orderDB := openServiceDB(b, opts, orderservice.Name)
	ctx, cancel := context.WithCancel(context.Background())
	began := time.Now()
	p, err := platform.Start(ctx, opts)
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cancel()
		if err := p.Wait(); err != nil {
			b.Errorf("platform stopped with %v", err)
		}
	})
	httpClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4 * placeOrderCallers}}
	b.Cleanup(httpClient.CloseIdleConnections)
	url := "http://" + p.EdgeAddr()
	users := userv1connect.NewUserServiceClient(httpClient, url, connect.WithProtoJSON())
	reg, err := users.Register(b.Context(), connect.NewRequest(&userv1.RegisterRequest{
		Email: "orders-" + driver + "@example.com", Password: "correct horse", DisplayName: "Bench",
	}))
	if err != nil {
		b.Fatalf("register the bench user: %v", err)
	}
	login, err := users.Login(b.Context(), connect.NewRequest(&userv1.LoginRequest{Email: "orders-" + driver + "@example.com", Password: "correct horse"}))
	if err != nil {
		b.Fatalf("log the bench user in: %v", err)
	}
	// Charge, ReserveStock and CreateItem are internal: the edge refuses
	// them from outside, so they go straight to their services, as the
	// order service's saga sends them.
	direct := map[string]string{}
	for _, svc := range p.Services() {
		name, addr, _ := strings.Cut(svc, "@")
		direct[name] = "http://" + addr
	}
	asPlatform := testkit.AsPlatform(b, opts.IdentityKey, "bench")
	s := &orderBench{
		orders:    orderv1connect.NewOrderServiceClient(httpClient, url, connect.WithProtoJSON(), bearer(login.Msg.GetAccessToken())),
		payments:  paymentv1connect.NewPaymentServiceClient(httpClient, direct["payment"], connect.WithProtoJSON(), asPlatform),
		inventory: inventoryv1connect.NewInventoryServiceClient(httpClient, direct["inventory"], connect.WithProtoJSON(), asPlatform),
		logs:      opts.Log.(*problemLog),
		orderDB:   orderDB,
		prefix:    fmt.Sprintf("bench-%d-", time.Now().UnixNano()),
	}
	s.userID = reg.Msg.GetUser().GetId()
	for _, it := range orderBenchItems {
		_, err := s.inventory.CreateItem(b.Context(), connect.NewRequest(&inventoryv1.CreateItemRequest{
			RequestId:    "bench-" + it.sku,
			Sku:          it.sku,
			Name:         "Benchmark item " + it.sku,
			Price:        &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: it.price},
			InitialStock: orderBenchStock,
		}))
		if err != nil {
			b.Fatalf("create %s: %v", it.sku, err)
		}
	}

	// Warm up: connections on every path, the caches of the user and
	// the items, the databases' first pages.
	g, gctx := errgroup.WithContext(b.Context())
	for range placeOrderCallers {
		g.Go(func() error {
			for range 4 {
				for _, c := range orderBenchCases() {
					if err := c.call(s, gctx, s.key()); err != nil {
						return fmt.Errorf("warm-up %s: %w", c.name, err)
					}
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	// Every service stores in the database it was given, and only there.
	for _, svc := range platform.Services() {
		if stateless[svc.Name] {
			continue
		}
		file := filepath.Join(opts.DataDir, svc.Name+".db")
		_, err := os.Stat(file)
		switch {
		case driver == database.DriverSQLite && err != nil:
			b.Fatalf("%s runs on SQLite but %s is missing: %v", svc.Name, file, err)
		case driver != database.DriverSQLite && err == nil:
			b.Fatalf("%s should run on %s but wrote %s", svc.Name, driver, file)
		}
	}
	if s.orderCounts(b).all == 0 {
		b.Fatalf("the order service's %s database holds none of the orders of the warm-up", driver)
	}
	b.Logf("%s: platform started, seeded and warmed up in %v", driver, time.Since(began).Round(time.Millisecond))
	return s
}

// openServiceDB opens, to read it, the database of the service name in a
// platform started with opts: its PostgreSQL database, or its SQLite
// file (which the service creates when it starts). It is closed when b
// ends.
func openServiceDB(b *testing.B, opts platform.Options, name string) *sql.DB {
	b.Helper()
	driverName, dsn := "sqlite", "file:"+filepath.Join(opts.DataDir, name+".db")+"?_pragma=busy_timeout(5000)"
	if pg := opts.ProcessEnv[name][database.DSNVar]; pg != "" {
		driverName, dsn = "pgx", pg
	}
	db, err := sql.Open(driverName, dsn)
	if err != nil {
		b.Fatalf("open the %s database: %v", name, err)
	}
	b.Cleanup(func() { _ = db.Close() })
	return db
}

// orderCounts are the orders in the order service's database.
type orderCounts struct {
	all, confirmed int
}

// orderCounts counts the orders in the order service's database.
func (s *orderBench) orderCounts(b *testing.B) orderCounts {
	b.Helper()
	var c orderCounts
	err := s.orderDB.QueryRowContext(b.Context(),
		`SELECT count(*), count(*) FILTER (WHERE status = 'confirmed') FROM orders`).Scan(&c.all, &c.confirmed)
	if err != nil {
		b.Fatalf("count the orders: %v", err)
	}
	return c
}

// check fails b unless the database holds, since before, placed more
// orders, every one of them confirmed.
func (c orderCounts) check(b *testing.B, before orderCounts, placed int) {
	b.Helper()
	if all, confirmed := c.all-before.all, c.confirmed-before.confirmed; all != placed || confirmed != placed {
		b.Fatalf("the order service's database holds %d more orders, %d more confirmed, want %d confirmed", all, confirmed, placed)
	}
}

// key returns a key no call of this platform has used.
func (s *orderBench) key() string {
	return s.prefix + strconv.FormatInt(s.seq.Add(1), 10)
}

// lines returns the bench lines as an order's and as a reservation's.
func (s *orderBench) lines() ([]*orderv1.OrderLine, []*inventoryv1.StockLine) {
	order := make([]*orderv1.OrderLine, len(orderBenchItems))
	stock := make([]*inventoryv1.StockLine, len(orderBenchItems))
	for i, it := range orderBenchItems {
		order[i] = &orderv1.OrderLine{Sku: it.sku, Quantity: orderBenchQuantities[i]}
		stock[i] = &inventoryv1.StockLine{Sku: it.sku, Quantity: orderBenchQuantities[i]}
	}
	return order, stock
}

// placeOrder places an order of the bench lines and checks it was
// confirmed, charged and priced right.
func (s *orderBench) placeOrder(ctx context.Context, key string) error {
	lines, _ := s.lines()
	res, err := s.orders.PlaceOrder(ctx, connect.NewRequest(&orderv1.PlaceOrderRequest{
		IdempotencyKey: key, UserId: s.userID, Lines: lines,
	}))
	if err != nil {
		return err
	}
	o := res.Msg.GetOrder()
	switch {
	case o.GetStatus() != orderv1.OrderStatus_ORDER_STATUS_CONFIRMED:
		return fmt.Errorf("order %s is %s (%s), want confirmed", o.GetOrderId(), o.GetStatus(), o.GetFailureReason())
	case o.GetPaymentId() == "":
		return fmt.Errorf("confirmed order %s has no payment", o.GetOrderId())
	case o.GetTotal().GetAmountMinor() != orderBenchTotal() || len(o.GetLines()) != len(orderBenchItems):
		return fmt.Errorf("order %s: %d lines, total %v, want %d lines, total %d",
			o.GetOrderId(), len(o.GetLines()), o.GetTotal(), len(orderBenchItems), orderBenchTotal())
	}
	return nil
}

// charge charges the bench user the total of an order and checks the
// payment was captured.
func (s *orderBench) charge(ctx context.Context, key string) error {
	res, err := s.payments.Charge(ctx, connect.NewRequest(&paymentv1.ChargeRequest{
		IdempotencyKey: key, OrderId: key, UserId: s.userID,
		Amount: &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: orderBenchTotal()},
	}))
	if err != nil {
		return err
	}
	if p := res.Msg.GetPayment(); p.GetStatus() != paymentv1.PaymentStatus_PAYMENT_STATUS_CAPTURED {
		return fmt.Errorf("payment %s is %s, want captured", p.GetPaymentId(), p.GetStatus())
	}
	return nil
}

// reserve holds the bench lines and checks the reservation is held.
func (s *orderBench) reserve(ctx context.Context, key string) error {
	_, lines := s.lines()
	res, err := s.inventory.ReserveStock(ctx, connect.NewRequest(&inventoryv1.ReserveStockRequest{ReservationId: key, Lines: lines}))
	if err != nil {
		return err
	}
	if r := res.Msg.GetReservation(); r.GetState() != inventoryv1.ReservationState_RESERVATION_STATE_HELD {
		return fmt.Errorf("reservation %s is %s, want held", r.GetReservationId(), r.GetState())
	}
	return nil
}

// orderBenchResult is what a case measured.
type orderBenchResult struct {
	nsPerOp   float64 // wall time per call: 1/rate
	perSecond float64
	p50, p99  time.Duration
}

// measure makes b.N calls, from callers callers at once, and reports
// their latency percentiles and rate. Any failed call fails b, with the
// failures counted by kind.
func (s *orderBench) measure(b *testing.B, call func(*orderBench, context.Context, string) error, callers int) orderBenchResult {
	var (
		mu        sync.Mutex
		latencies []time.Duration
		failures  = map[string]int{} // by code and message
		failed    int
	)
	record := func(lat []time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		latencies = append(latencies, lat...)
		if err != nil {
			failed++
			failures[callErrorKind(err)]++
		}
	}
	ctx := b.Context()
	if callers == 1 {
		lat := make([]time.Duration, 0, 1024)
		for b.Loop() {
			began := time.Now()
			if err := call(s, ctx, s.key()); err != nil {
				record(nil, err)
				continue
			}
			lat = append(lat, time.Since(began))
		}
		record(lat, nil)
	} else {
		procs := runtime.GOMAXPROCS(0)
		if callers%procs != 0 {
			b.Fatalf("%d callers cannot be spread evenly over GOMAXPROCS=%d", callers, procs)
		}
		b.SetParallelism(callers / procs)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			lat := make([]time.Duration, 0, 1024)
			for pb.Next() {
				began := time.Now()
				if err := call(s, ctx, s.key()); err != nil {
					record(nil, err)
					continue
				}
				lat = append(lat, time.Since(began))
			}
			record(lat, nil)
		})
		b.StopTimer()
	}
	elapsed := b.Elapsed()
	if failed > 0 {
		kinds := make([]string, 0, len(failures))
		for k, n := range failures {
			kinds = append(kinds, fmt.Sprintf("%d× %s", n, k))
		}
		slices.Sort(kinds)
		b.Fatalf("%d of %d calls failed (%d callers):\n  %s", failed, b.N, callers, strings.Join(kinds, "\n  "))
	}
	slices.Sort(latencies)
	r := orderBenchResult{
		nsPerOp:   float64(elapsed.Nanoseconds()) / float64(b.N),
		perSecond: float64(b.N) / elapsed.Seconds(),
		p50:       latencyPercentile(latencies, 0.50),
		p99:       latencyPercentile(latencies, 0.99),
	}
	b.ReportMetric(r.perSecond, "calls/s")
	b.ReportMetric(float64(r.p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(r.p99.Microseconds())/1000, "p99-ms")
	return r
}

// latencyPercentile returns the q-quantile of sorted, by the nearest
// rank.
func latencyPercentile(sorted []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// callErrorKind names an error for a tally: its Connect code and
// message, shortened.
func callErrorKind(err error) string {
	msg := err.Error()
	if cerr := new(connect.Error); errors.As(err, &cerr) {
		msg = cerr.Code().String() + ": " + cerr.Message()
	}
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	return msg
}

// orderBenchTable formats the results of every case (keys
// "driver/case/cN"), by case and driver, with the ratio of the second
// driver to the first.
func orderBenchTable(results map[string]orderBenchResult, drivers []string) string {
	var s strings.Builder
	fmt.Fprintf(&s, "through the edge, Connect JSON over HTTP/1.1; per driver: calls/s, p50 and p99 in ms; then %s/%s of ns/op and of p99\n%-16s",
		drivers[1], drivers[0], "")
	for _, d := range drivers {
		fmt.Fprintf(&s, "%30s", d)
	}
	fmt.Fprintf(&s, "%18s\n", "ns/op, p99")
	for _, c := range orderBenchCases() {
		for _, callers := range c.callers {
			name := fmt.Sprintf("%s/c%d", c.name, callers)
			fmt.Fprintf(&s, "%-16s", name)
			for _, d := range drivers {
				if r, ok := results[d+"/"+name]; ok {
					fmt.Fprintf(&s, "%12.0f/s %6.2f %8.2f", r.perSecond, millis(r.p50), millis(r.p99))
				} else {
					fmt.Fprintf(&s, "%30s", "-")
				}
			}
			a, okA := results[drivers[0]+"/"+name]
			z, okZ := results[drivers[1]+"/"+name]
			if okA && okZ {
				fmt.Fprintf(&s, "%9.2fx %6.2fx", z.nsPerOp/a.nsPerOp, millis(z.p99)/millis(a.p99))
			}
			s.WriteByte('\n')
		}
	}
	for _, d := range drivers {
		for _, callers := range []int{1, placeOrderCallers} {
			po, ok1 := results[fmt.Sprintf("%s/placeorder/c%d", d, callers)]
			ch, ok2 := results[fmt.Sprintf("%s/charge/c%d", d, callers)]
			if ok1 && ok2 {
				fmt.Fprintf(&s, "%s, c%d: a PlaceOrder takes %.1f× a charge's ns/op, its p99 %.1f× the charge's\n",
					d, callers, po.nsPerOp/ch.nsPerOp, millis(po.p99)/millis(ch.p99))
			}
		}
	}
	return strings.TrimSuffix(s.String(), "\n")
}

// millis is d in milliseconds, to the microsecond.
func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// problemLog receives the platform's JSON logs and keeps the warnings
// and errors, the first maxProblems of them and the count of all. It is
// safe for concurrent use.
type problemLog struct {
	mu    sync.Mutex
	n     int
	lines []string
}

// maxProblems bounds the problem lines a [problemLog] keeps.
const maxProblems = 10000

// Write implements io.Writer; slog writes one record per call.
func (l *problemLog) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(`"level":"WARN"`)) || bytes.Contains(p, []byte(`"level":"ERROR"`)) {
		l.mu.Lock()
		if len(l.lines) < maxProblems {
			l.lines = append(l.lines, strings.TrimSpace(string(p)))
		}
		l.n++
		l.mu.Unlock()
	}
	return len(p), nil
}

// count is how many warnings and errors were logged so far.
func (l *problemLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// since returns how many warnings and errors were logged after the
// first mark, and the first of them if kept.
func (l *problemLog) since(mark int) (n int, first string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if mark < len(l.lines) {
		first = l.lines[mark]
	}
	return l.n - mark, first
}
