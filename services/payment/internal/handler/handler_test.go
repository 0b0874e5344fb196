package handler_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	paymentv1 "github.com/keelplatform/keel/gen/go/shop/payment/v1"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/pgtest"
	"github.com/keelplatform/keel/services/payment/internal/handler"
	"github.com/keelplatform/keel/services/payment/internal/ledger"
	"github.com/keelplatform/keel/services/payment/internal/provider"
	"github.com/keelplatform/keel/services/payment/internal/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// backends are the databases the service runs on.
var backends = []struct {
	name string
	cfg  func(t *testing.T) database.Config
}{
	{"sqlite", func(t *testing.T) database.Config {
		return database.Config{Driver: database.DriverSQLite, DataDir: t.TempDir(), Name: "payment"}
	}},
	{"postgres", func(t *testing.T) database.Config {
		return database.Config{Driver: database.DriverPostgres, DSN: pgtest.Start(t)}
	}},
}

// countingProvider counts the charges and refunds that reach the
// simulator, and can fail refunds as a provider that does not answer.
type countingProvider struct {
	*provider.Simulator
	calls   atomic.Int64
	refunds atomic.Int64
	// failRefunds is how many more refunds fail with ErrUnavailable
	// before reaching the simulator.
	failRefunds atomic.Int64
}

func (c *countingProvider) Charge(ctx context.Context, key, userID string, amount ledger.Money) error {
	c.calls.Add(1)
	return c.Simulator.Charge(ctx, key, userID, amount)
}

func (c *countingProvider) Refund(ctx context.Context, key, chargeKey string, amount *ledger.Money) (ledger.Money, error) {
	c.refunds.Add(1)
	if c.failRefunds.Add(-1) >= 0 {
		return ledger.Money{}, provider.ErrUnavailable
	}
	return c.Simulator.Refund(ctx, key, chargeKey, amount)
}

// env is a handler served on a loopback HTTP server over a real store.
type env struct {
	client   paymentv1connect.PaymentServiceClient
	store    *store.Store
	provider *countingProvider
	// crashAt is the crash point (handler.Crash*) at which the handler
	// abandons its request, as if its process died there: the request
	// gets no answer and the handler does nothing more for it.
	crashAt atomic.Pointer[string]
}

// newEnv serves a handler over a store on cfg (SQLite when nil) and a
// simulator with no rules, its books in a directory of the test's.
func newEnv(t *testing.T, cfg *database.Config) *env {
	t.Helper()
	if cfg == nil {
		cfg = &database.Config{DataDir: t.TempDir(), Name: "payment"}
	}
	st, err := store.Open(context.Background(), *cfg)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	st.SetMaxOpenConns(store.DefaultMaxOpenConns)
	books, err := provider.OpenBooks(context.Background(), t.TempDir())
	if err != nil {
		t.Fatalf("open provider books: %v", err)
	}
	t.Cleanup(func() { _ = books.Close() })
	p := &countingProvider{Simulator: provider.NewSimulator(provider.Rules{}, books)}
	e := &env{store: st, provider: p}
	h, err := handler.New(st, p, slog.New(slog.NewTextHandler(t.Output(), nil)), handler.WithCrashDrill(func(point string) {
		if at := e.crashAt.Load(); at != nil && *at == point {
			panic(http.ErrAbortHandler) // the request dies here, unanswered
		}
	}))
	if err != nil {
		t.Fatalf("handler.New: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle(paymentv1connect.NewPaymentServiceHandler(h))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the aborted requests
	srv.Start()
	t.Cleanup(srv.Close)
	e.client = paymentv1connect.NewPaymentServiceClient(srv.Client(), srv.URL)
	return e
}

// crash makes the handler abandon requests at point from now on; ""
// stops that.
func (e *env) crash(point string) {
	if point == "" {
		e.crashAt.Store(nil)
		return
	}
	e.crashAt.Store(&point)
}

// reconcile checks the provider's books against the ledger: the charges
// the provider took are the ledger's charges, and the refunds it made
// its refunds, in count and in sum.
func (e *env) reconcile(t *testing.T) {
	t.Helper()
	st, err := e.provider.Statement(context.Background())
	if err != nil {
		t.Fatalf("provider books: %v", err)
	}
	var books ledger.Totals
	for _, c := range st.Charges {
		if c.DeclineReason == "" {
			books.Charged += c.Amount.Minor
			books.Charges++
		}
	}
	for _, r := range st.Refunds {
		books.Refunded += r.Amount.Minor
		books.Refunds++
	}
	if tot := e.totals(t); tot != books {
		t.Errorf("the ledger holds %+v, the provider's books %+v", tot, books)
	}
}

// forEachBackend runs test on a fresh env on each database.
func forEachBackend(t *testing.T, test func(t *testing.T, e *env)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			cfg := b.cfg(t)
			test(t, newEnv(t, &cfg))
		})
	}
}

const (
	alice = "5c1d9b6e-7f2a-4b3c-8d4e-1f2a3b4c5d6e"
	bob   = "9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b"
)

func usd(minor int64) *moneyv1.Money { return &moneyv1.Money{CurrencyCode: "USD", AmountMinor: minor} }

func chargeReq(key, order, user string, amount *moneyv1.Money) *connect.Request[paymentv1.ChargeRequest] {
	return connect.NewRequest(&paymentv1.ChargeRequest{IdempotencyKey: key, OrderId: order, UserId: user, Amount: amount})
}

func refundReq(key, payment string, amount *moneyv1.Money, reason string) *connect.Request[paymentv1.RefundRequest] {
	return connect.NewRequest(&paymentv1.RefundRequest{IdempotencyKey: key, PaymentId: payment, Amount: amount, Reason: reason})
}

func (e *env) charge(t *testing.T, key string, minor int64) *paymentv1.Payment {
	t.Helper()
	resp, err := e.client.Charge(context.Background(), chargeReq(key, "order-"+key, alice, usd(minor)))
	if err != nil {
		t.Fatalf("Charge %s: %v", key, err)
	}
	return resp.Msg.GetPayment()
}

func (e *env) get(t *testing.T, id string) *paymentv1.Payment {
	t.Helper()
	resp, err := e.client.GetPayment(context.Background(), connect.NewRequest(&paymentv1.GetPaymentRequest{PaymentId: id}))
	if err != nil {
		t.Fatalf("GetPayment %s: %v", id, err)
	}
	return resp.Msg.GetPayment()
}

// totals returns the ledger's USD totals and fails if it holds another
// currency.
func (e *env) totals(t *testing.T) ledger.Totals {
	t.Helper()
	all, err := e.store.Totals(context.Background())
	if err != nil {
		t.Fatalf("Totals: %v", err)
	}
	for c := range all {
		if c != "USD" {
			t.Fatalf("ledger holds %s: %v", c, all)
		}
	}
	return all["USD"]
}

// wantCode fails unless err has code and a message containing msg.
func wantCode(t *testing.T, err error, code connect.Code, msg string) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
	if ce, ok := errors.AsType[*connect.Error](err); ok && !strings.Contains(ce.Message(), msg) {
		t.Fatalf("got message %q, want it to contain %q", ce.Message(), msg)
	}
}

// declineReason returns the PaymentDeclined detail of err, "" if none.
func declineReason(t *testing.T, err error) string {
	t.Helper()
	ce, ok := errors.AsType[*connect.Error](err)
	if !ok {
		return ""
	}
	for _, d := range ce.Details() {
		v, err := d.Value()
		if err != nil {
			t.Fatalf("error detail: %v", err)
		}
		if pd, ok := v.(*paymentv1.PaymentDeclined); ok {
			return pd.GetReason()
		}
	}
	return ""
}

// TestChargeSameKeyConcurrently: 20 callers charge with one key at once;
// every one gets the same payment and the ledger holds one charge.
func TestChargeSameKeyConcurrently(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		const callers = 20
		ids := make(chan string, callers)
		var wg sync.WaitGroup
		for range callers {
			wg.Go(func() {
				resp, err := e.client.Charge(context.Background(), chargeReq("same-key-20", "order-20", alice, usd(2599)))
				if err != nil {
					t.Errorf("Charge: %v", err)
					return
				}
				ids <- resp.Msg.GetPayment().GetPaymentId()
			})
		}
		wg.Wait()
		close(ids)
		seen := map[string]int{}
		for id := range ids {
			seen[id]++
		}
		if len(seen) != 1 {
			t.Fatalf("callers got payments %v, want one payment for all %d", seen, callers)
		}
		if tot := e.totals(t); tot != (ledger.Totals{Charged: 2599, Charges: 1}) {
			t.Fatalf("ledger %+v, want one charge of 2599", tot)
		}
		calls := e.provider.calls.Load()
		// A late retry is answered from the record, without the provider.
		again, err := e.client.Charge(context.Background(), chargeReq("same-key-20", "order-20", alice, usd(2599)))
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
		for id := range seen {
			if again.Msg.GetPayment().GetPaymentId() != id {
				t.Fatalf("retry got payment %s, want %s", again.Msg.GetPayment().GetPaymentId(), id)
			}
		}
		if e.provider.calls.Load() != calls {
			t.Fatal("a retry of a recorded charge reached the provider")
		}
		e.reconcile(t)
	})
}

func TestChargeKeyReuseWithDifferentRequest(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	p := e.charge(t, "reused-key", 1000)
	for name, req := range map[string]*connect.Request[paymentv1.ChargeRequest]{
		"another amount":   chargeReq("reused-key", "order-reused-key", alice, usd(1001)),
		"another currency": chargeReq("reused-key", "order-reused-key", alice, &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: 1000}),
		"another order":    chargeReq("reused-key", "order-other", alice, usd(1000)),
		"another user":     chargeReq("reused-key", "order-reused-key", bob, usd(1000)),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := e.client.Charge(ctx, req)
			wantCode(t, err, connect.CodeInvalidArgument, "idempotency_key")
		})
	}
	_, err := e.client.Refund(ctx, refundReq("reused-key", p.GetPaymentId(), usd(10), ""))
	wantCode(t, err, connect.CodeInvalidArgument, "idempotency_key")
	if tot := e.totals(t); tot != (ledger.Totals{Charged: 1000, Charges: 1}) {
		t.Fatalf("ledger %+v, want the first charge only", tot)
	}
}

// TestChargeRefusesBadRequests: the handler checks every field itself,
// without the contract's validation interceptor in front of it, before it
// charges anything.
func TestChargeRefusesBadRequests(t *testing.T) {
	e := newEnv(t, nil)
	cases := []struct {
		name string
		req  *connect.Request[paymentv1.ChargeRequest]
		msg  string
	}{
		{"zero amount", chargeReq("bad-request-1", "o", alice, usd(0)), "amount must be more than zero"},
		{"negative amount", chargeReq("bad-request-2", "o", alice, usd(-5)), "amount must be more than zero"},
		{"no amount", chargeReq("bad-request-3", "o", alice, nil), "amount is required"},
		{"bad currency", chargeReq("bad-request-4", "o", alice, &moneyv1.Money{CurrencyCode: "usd", AmountMinor: 1}), "amount.currency_code"},
		{"user not a UUID", chargeReq("bad-request-5", "o", "alice", usd(1)), "user_id"},
		{"short key", chargeReq("short", "o", alice, usd(1)), "idempotency_key"},
		{"no order", chargeReq("bad-request-7", "", alice, usd(1)), "order_id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.client.Charge(context.Background(), c.req)
			wantCode(t, err, connect.CodeInvalidArgument, c.msg)
		})
	}
	if n := e.provider.calls.Load(); n != 0 {
		t.Fatalf("%d bad requests reached the provider", n)
	}
	if tot := e.totals(t); tot != (ledger.Totals{}) {
		t.Fatalf("bad requests moved money: %+v", tot)
	}
}

// TestChargeDeclineIsRecordedAndReplayed: a declined charge is recorded
// under its key; a retry gets the same decline even once the provider
// would take it, and moves no money.
func TestChargeDeclineIsRecordedAndReplayed(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	e.provider.SetRules(provider.Rules{DeclineOverMinor: 1000, DeclineUsers: []string{bob}})

	cases := []struct{ key, user, reason string }{
		{"declined-over-limit", alice, provider.ReasonAmountOverLimit},
		{"declined-user-blocked", bob, provider.ReasonUserBlocked},
	}
	for _, c := range cases {
		_, err := e.client.Charge(ctx, chargeReq(c.key, "order-1", c.user, usd(5000)))
		wantCode(t, err, connect.CodeFailedPrecondition, "declined")
		if got := declineReason(t, err); got != c.reason {
			t.Fatalf("%s: decline reason %q, want %q", c.key, got, c.reason)
		}
	}
	calls := e.provider.calls.Load()
	e.provider.SetRules(provider.Rules{})
	for _, c := range cases {
		_, err := e.client.Charge(ctx, chargeReq(c.key, "order-1", c.user, usd(5000)))
		wantCode(t, err, connect.CodeFailedPrecondition, "declined")
		if got := declineReason(t, err); got != c.reason {
			t.Fatalf("%s retried: decline reason %q, want %q", c.key, got, c.reason)
		}
		// Reusing a declined key for another request is still a reuse.
		_, err = e.client.Charge(ctx, chargeReq(c.key, "order-1", c.user, usd(50)))
		wantCode(t, err, connect.CodeInvalidArgument, "idempotency_key")
	}
	if n := e.provider.calls.Load(); n != calls {
		t.Fatalf("retries of declined charges reached the provider %d times", n-calls)
	}
	if tot := e.totals(t); tot != (ledger.Totals{}) {
		t.Fatalf("declines moved money: %+v", tot)
	}
	// A new key is a new charge, which the provider now takes.
	e.charge(t, "after-the-limit-was-lifted", 5000)
}

// TestChargeProviderFailureRecordsNothing: when the provider does not
// answer the charge fails with unavailable and records nothing, so a retry
// with the same key charges again and succeeds.
func TestChargeProviderFailureRecordsNothing(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	e.provider.SetRules(provider.Rules{FailureRate: 1})
	for range 3 {
		_, err := e.client.Charge(ctx, chargeReq("flaky-provider", "order-9", alice, usd(700)))
		wantCode(t, err, connect.CodeUnavailable, "retry")
	}
	if _, err := e.store.Key(ctx, "flaky-provider"); !errors.Is(err, ledger.ErrNotFound) {
		t.Fatalf("a failed charge recorded its key: %v", err)
	}
	if tot := e.totals(t); tot != (ledger.Totals{}) {
		t.Fatalf("failed charges moved money: %+v", tot)
	}

	// At a partial rate, retrying with the key gets through.
	e.provider.SetRules(provider.Rules{FailureRate: 0.5})
	var p *paymentv1.Payment
	for try := 1; p == nil; try++ {
		resp, err := e.client.Charge(ctx, chargeReq("flaky-provider", "order-9", alice, usd(700)))
		switch {
		case err == nil:
			p = resp.Msg.GetPayment()
		case connect.CodeOf(err) != connect.CodeUnavailable || try == 30:
			t.Fatalf("attempt %d: %v", try, err)
		}
	}
	if tot := e.totals(t); tot != (ledger.Totals{Charged: 700, Charges: 1}) {
		t.Fatalf("ledger %+v, want one charge of 700", tot)
	}
	if got := e.get(t, p.GetPaymentId()); got.GetAmount().GetAmountMinor() != 700 {
		t.Fatalf("GetPayment: %v", got)
	}
}

func TestRefunds(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	p := e.charge(t, "refunded-charge", 1000)
	id := p.GetPaymentId()
	if p.GetStatus() != paymentv1.PaymentStatus_PAYMENT_STATUS_CAPTURED || p.GetRefunded().GetAmountMinor() != 0 || p.GetRefunded().GetCurrencyCode() != "USD" {
		t.Fatalf("charged payment %v", p)
	}

	resp, err := e.client.Refund(ctx, refundReq("refund-part", id, usd(250), "one item damaged"))
	if err != nil {
		t.Fatalf("partial refund: %v", err)
	}
	if got := resp.Msg.GetPayment(); got.GetStatus() != paymentv1.PaymentStatus_PAYMENT_STATUS_PARTIALLY_REFUNDED || got.GetRefunded().GetAmountMinor() != 250 {
		t.Fatalf("after a partial refund: %v", got)
	}
	// A retry returns the same result and refunds nothing more.
	again, err := e.client.Refund(ctx, refundReq("refund-part", id, usd(250), "one item damaged"))
	if err != nil || again.Msg.GetPayment().GetRefunded().GetAmountMinor() != 250 || len(again.Msg.GetPayment().GetRefunds()) != 1 {
		t.Fatalf("retried refund: %v, %v", again, err)
	}

	refused := []struct {
		name string
		req  *connect.Request[paymentv1.RefundRequest]
		code connect.Code
		msg  string
	}{
		{"key reused with another amount", refundReq("refund-part", id, usd(251), "one item damaged"), connect.CodeInvalidArgument, "idempotency_key"},
		{"key reused with another reason", refundReq("refund-part", id, usd(250), "changed mind"), connect.CodeInvalidArgument, "idempotency_key"},
		{"over what is left", refundReq("refund-over", id, usd(751), ""), connect.CodeFailedPrecondition, "left to refund"},
		{"another currency", refundReq("refund-eur", id, &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: 10}, ""), connect.CodeInvalidArgument, "currency"},
		{"zero amount", refundReq("refund-zero", id, usd(0), ""), connect.CodeInvalidArgument, "amount must be more than zero"},
		{"unknown payment", refundReq("refund-unknown", uuid.NewString(), usd(1), ""), connect.CodeNotFound, "not found"},
		{"payment id not a UUID", refundReq("refund-bad-id", "pay_123", usd(1), ""), connect.CodeNotFound, "not found"},
		{"short key", refundReq("short", id, usd(1), ""), connect.CodeInvalidArgument, "idempotency_key"},
		{"reason too long", refundReq("refund-long", id, usd(1), strings.Repeat("x", 501)), connect.CodeInvalidArgument, "reason"},
	}
	for _, c := range refused {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.client.Refund(ctx, c.req)
			wantCode(t, err, c.code, c.msg)
		})
	}

	resp, err = e.client.Refund(ctx, refundReq("refund-rest", id, nil, "order cancelled"))
	if err != nil {
		t.Fatalf("refund of the rest: %v", err)
	}
	if got := resp.Msg.GetPayment(); got.GetStatus() != paymentv1.PaymentStatus_PAYMENT_STATUS_REFUNDED || got.GetRefunded().GetAmountMinor() != 1000 {
		t.Fatalf("after refunding the rest: %v", got)
	}
	_, err = e.client.Refund(ctx, refundReq("refund-more", id, nil, ""))
	wantCode(t, err, connect.CodeFailedPrecondition, "left to refund")

	got := e.get(t, id)
	refunds := got.GetRefunds()
	if len(refunds) != 2 {
		t.Fatalf("GetPayment lists %d refunds, want 2: %v", len(refunds), got)
	}
	for i, want := range []struct {
		minor  int64
		reason string
	}{{250, "one item damaged"}, {750, "order cancelled"}} {
		r := refunds[i]
		if r.GetAmount().GetAmountMinor() != want.minor || r.GetAmount().GetCurrencyCode() != "USD" || r.GetReason() != want.reason || r.GetRefundId() == "" || !r.GetCreateTime().IsValid() {
			t.Errorf("refund %d: %v, want %d for %q", i, r, want.minor, want.reason)
		}
	}
	if got.GetStatus() != paymentv1.PaymentStatus_PAYMENT_STATUS_REFUNDED || got.GetRefunded().GetAmountMinor() != 1000 || got.GetOrderId() != "order-refunded-charge" || got.GetUserId() != alice {
		t.Fatalf("GetPayment: %v", got)
	}
	if tot := e.totals(t); tot != (ledger.Totals{Charged: 1000, Refunded: 1000, Charges: 1, Refunds: 2}) {
		t.Fatalf("ledger %+v", tot)
	}
	e.reconcile(t)
}

func TestGetPaymentUnknown(t *testing.T) {
	e := newEnv(t, nil)
	for _, id := range []string{uuid.NewString(), "not-a-uuid"} {
		_, err := e.client.GetPayment(context.Background(), connect.NewRequest(&paymentv1.GetPaymentRequest{PaymentId: id}))
		wantCode(t, err, connect.CodeNotFound, id)
	}
	_, err := e.client.GetPayment(context.Background(), connect.NewRequest(&paymentv1.GetPaymentRequest{}))
	wantCode(t, err, connect.CodeInvalidArgument, "payment_id")
}

// TestConcurrentRefundsNeverExceedTheCharge refunds one payment from many
// callers at once, with keys of their own, some of them retried: the
// refunds stop exactly at the charge.
func TestConcurrentRefundsNeverExceedTheCharge(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		const (
			charged = 1000
			each    = 30
			keys    = 50
		)
		p := e.charge(t, "refund-race-charge", charged)
		var ok, refused atomic.Int32
		var wg sync.WaitGroup
		for i := range keys {
			for range 2 { // every key twice: a retry racing its first call
				wg.Go(func() {
					_, err := e.client.Refund(context.Background(), refundReq(fmt.Sprintf("race-refund-%d", i), p.GetPaymentId(), usd(each), "race"))
					switch {
					case err == nil:
						ok.Add(1)
					case connect.CodeOf(err) == connect.CodeFailedPrecondition:
						refused.Add(1)
					default:
						t.Errorf("Refund: %v", err)
					}
				})
			}
		}
		wg.Wait()
		got := e.get(t, p.GetPaymentId())
		want := int64(charged / each * each)
		if got.GetRefunded().GetAmountMinor() != want || len(got.GetRefunds()) != charged/each {
			t.Fatalf("refunded %d in %d refunds, want %d in %d (calls: %d ok, %d refused)",
				got.GetRefunded().GetAmountMinor(), len(got.GetRefunds()), want, charged/each, ok.Load(), refused.Load())
		}
		if tot := e.totals(t); tot.Refunded != want || tot.Refunds != charged/each {
			t.Fatalf("ledger %+v, want refunds of %d", tot, want)
		}
		e.reconcile(t)
	})
}

// TestLedgerReconcilesAfterMixedWorkload runs charges (some declined, some
// failing at the provider and retried, some retried after success),
// refunds (partial, full, refused, retried) from several callers at once,
// then checks that the ledger's charges less refunds equal both what the
// callers were told and what the payments hold.
func TestLedgerReconcilesAfterMixedWorkload(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		ctx := context.Background()
		e.provider.SetRules(provider.Rules{DeclineOverMinor: 9000, DeclineUsers: []string{bob}, FailureRate: 0.3})
		const workers, orders = 4, 15

		var mu sync.Mutex
		var charged, refunded int64 // what callers were told succeeded, once per key
		var paymentIDs []string
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for o := range orders {
					user := alice
					if o%7 == 3 {
						user = bob
					}
					amount := int64(1000 + 700*o + w) // over 9000 from o == 12
					key := fmt.Sprintf("mixed-charge-%d-%d", w, o)
					var p *paymentv1.Payment
					for try := 0; try < 30; try++ {
						resp, err := e.client.Charge(ctx, chargeReq(key, fmt.Sprintf("order-%d-%d", w, o), user, usd(amount)))
						if connect.CodeOf(err) == connect.CodeUnavailable {
							continue
						}
						if connect.CodeOf(err) == connect.CodeFailedPrecondition {
							break // declined
						}
						if err != nil {
							t.Errorf("Charge %s: %v", key, err)
							return
						}
						p = resp.Msg.GetPayment()
						if try%2 == 0 { // and a retry after success
							if again, err := e.client.Charge(ctx, chargeReq(key, fmt.Sprintf("order-%d-%d", w, o), user, usd(amount))); err != nil || again.Msg.GetPayment().GetPaymentId() != p.GetPaymentId() {
								t.Errorf("retry of %s: %v, %v", key, again, err)
							}
						}
						break
					}
					if p == nil {
						continue
					}
					mu.Lock()
					charged += amount
					paymentIDs = append(paymentIDs, p.GetPaymentId())
					mu.Unlock()

					var refund *moneyv1.Money // every third order: all of it
					switch o % 3 {
					case 0:
						refund = usd(amount / 4)
					case 1:
						refund = usd(amount + 1) // refused
					}
					// This worker alone refunds the payment: what a refund
					// gave back is the rise of the payment's refunded total.
					var before int64
					for r := range 2 { // two refunds each, the second one retried once
						rkey := fmt.Sprintf("mixed-refund-%d-%d-%d", w, o, r)
						var got *connect.Response[paymentv1.RefundResponse]
						var err error
						for range 1 + r {
							got, err = e.client.Refund(ctx, refundReq(rkey, p.GetPaymentId(), refund, "mixed"))
						}
						switch {
						case err == nil:
							after := got.Msg.GetPayment().GetRefunded().GetAmountMinor()
							mu.Lock()
							refunded += after - before
							mu.Unlock()
							before = after
						case connect.CodeOf(err) != connect.CodeFailedPrecondition:
							t.Errorf("Refund %s: %v", rkey, err)
						}
					}
				}
			})
		}
		wg.Wait()

		tot := e.totals(t)
		var held, heldRefunded int64
		for _, id := range paymentIDs {
			p := e.get(t, id)
			held += p.GetAmount().GetAmountMinor()
			heldRefunded += p.GetRefunded().GetAmountMinor()
			var sum int64
			for _, r := range p.GetRefunds() {
				sum += r.GetAmount().GetAmountMinor()
			}
			if sum != p.GetRefunded().GetAmountMinor() {
				t.Errorf("payment %s: refunds sum to %d, refunded says %d", id, sum, p.GetRefunded().GetAmountMinor())
			}
		}
		t.Logf("ledger: %d charges of %d, %d refunds of %d; provider calls %d", tot.Charges, tot.Charged, tot.Refunds, tot.Refunded, e.provider.calls.Load())
		if tot.Charges != len(paymentIDs) || tot.Charged != charged || tot.Charged != held {
			t.Errorf("ledger charges %d in %d entries; callers were told %d in %d payments, which hold %d", tot.Charged, tot.Charges, charged, len(paymentIDs), held)
		}
		if tot.Refunded != refunded || tot.Refunded != heldRefunded {
			t.Errorf("ledger refunds %d; callers were told %d, payments say %d", tot.Refunded, refunded, heldRefunded)
		}
		if tot.Net() != charged-refunded {
			t.Errorf("ledger net %d, want %d", tot.Net(), charged-refunded)
		}
		if tot.Charges == 0 || tot.Refunds == 0 || tot.Charges == workers*orders {
			t.Errorf("the workload did not mix: %+v", tot)
		}
		e.reconcile(t)
	})
}

// TestProviderGetsTheRequestKeys: the provider is charged under the
// Charge request's idempotency key and refunds under ProviderRefundKey of
// the Refund request's, naming the charge by its key, so that its own
// de-duplication by key holds across retries and crashes; its books and
// the ledger agree entry by entry.
func TestProviderGetsTheRequestKeys(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	p := e.charge(t, "keyed-charge", 900)
	if _, err := e.client.Refund(ctx, refundReq("keyed-refund-1", p.GetPaymentId(), usd(200), "")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Refund(ctx, refundReq("keyed-refund-2", p.GetPaymentId(), nil, "")); err != nil {
		t.Fatal(err)
	}
	st, err := e.provider.Statement(ctx)
	if err != nil {
		t.Fatal(err)
	}
	usd := func(minor int64) ledger.Money { return ledger.Money{Currency: "USD", Minor: minor} }
	wantCharges := map[string]provider.ChargeRecord{
		"keyed-charge": {Key: "keyed-charge", UserID: alice, Amount: usd(900), Refunded: 900},
	}
	wantRefunds := map[string]provider.RefundRecord{
		handler.ProviderRefundKey("keyed-refund-1"): {Key: handler.ProviderRefundKey("keyed-refund-1"), ChargeKey: "keyed-charge", Amount: usd(200)},
		handler.ProviderRefundKey("keyed-refund-2"): {Key: handler.ProviderRefundKey("keyed-refund-2"), ChargeKey: "keyed-charge", Amount: usd(700)},
	}
	if !reflect.DeepEqual(st.Charges, wantCharges) || !reflect.DeepEqual(st.Refunds, wantRefunds) {
		t.Fatalf("provider books: charges %+v, refunds %+v; want %+v, %+v", st.Charges, st.Refunds, wantCharges, wantRefunds)
	}
	if k := handler.ProviderRefundKey("keyed-refund-1"); k != handler.ProviderRefundKey("keyed-refund-1") || k == handler.ProviderRefundKey("keyed-refund-2") {
		t.Fatalf("ProviderRefundKey is not a function of the key alone: %q", k)
	}
	e.reconcile(t)
}

// TestCrashBetweenProviderAndLedgerConverges abandons a Charge and a
// Refund at each point where the provider and the ledger part, as a
// crash of the process would, then retries each with its key (twice at
// once, as a saga and a late duplicate may): the provider moves the money
// once, the ledger records it once, and the books agree.
func TestCrashBetweenProviderAndLedgerConverges(t *testing.T) {
	points := []struct{ charge, refund string }{
		{handler.CrashAfterProvider, handler.CrashAfterProviderRefund},
		{handler.CrashAfterCapture, handler.CrashAfterRefundRecord},
	}
	for _, pt := range points {
		t.Run(pt.charge+","+pt.refund, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, e *env) {
				ctx := context.Background()
				both := func(call func() error) {
					t.Helper()
					var wg sync.WaitGroup
					for range 2 {
						wg.Go(func() {
							if err := call(); err != nil {
								t.Errorf("retry after the crash: %v", err)
							}
						})
					}
					wg.Wait()
				}

				e.crash(pt.charge)
				if _, err := e.client.Charge(ctx, chargeReq("crash-charge", "order-crash", alice, usd(1000))); err == nil {
					t.Fatal("the charge was answered past the crash point")
				}
				e.crash("")
				var (
					mu sync.Mutex
					id string
				)
				both(func() error {
					res, err := e.client.Charge(ctx, chargeReq("crash-charge", "order-crash", alice, usd(1000)))
					if err == nil {
						mu.Lock()
						id = res.Msg.GetPayment().GetPaymentId()
						mu.Unlock()
					}
					return err
				})
				// A partial refund, then one of all that is left.
				for i, amount := range []*moneyv1.Money{usd(300), nil} {
					key := fmt.Sprintf("crash-refund-%d", i)
					e.crash(pt.refund)
					if _, err := e.client.Refund(ctx, refundReq(key, id, amount, "crash")); err == nil {
						t.Fatalf("refund %s was answered past the crash point", key)
					}
					e.crash("")
					both(func() error {
						_, err := e.client.Refund(ctx, refundReq(key, id, amount, "crash"))
						return err
					})
				}

				got := e.get(t, id)
				if got.GetRefunded().GetAmountMinor() != 1000 || len(got.GetRefunds()) != 2 || got.GetRefunds()[1].GetAmount().GetAmountMinor() != 700 {
					t.Fatalf("payment after the crashes: %v; want refunds of 300 and 700", got)
				}
				if tot := e.totals(t); tot != (ledger.Totals{Charged: 1000, Refunded: 1000, Charges: 1, Refunds: 2}) {
					t.Fatalf("ledger %+v", tot)
				}
				e.reconcile(t)
			})
		})
	}
}

// TestRefundProviderFailureRecordsNothing: a refund the provider does not
// answer fails with unavailable and records nothing; a retry with the key
// gives the money back once.
func TestRefundProviderFailureRecordsNothing(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, nil)
	p := e.charge(t, "refund-flaky-charge", 800)
	e.provider.failRefunds.Store(2)
	for range 2 {
		_, err := e.client.Refund(ctx, refundReq("refund-flaky", p.GetPaymentId(), nil, ""))
		wantCode(t, err, connect.CodeUnavailable, "retry")
	}
	if _, err := e.store.Key(ctx, "refund-flaky"); !errors.Is(err, ledger.ErrNotFound) {
		t.Fatalf("a failed refund recorded its key: %v", err)
	}
	e.reconcile(t)
	res, err := e.client.Refund(ctx, refundReq("refund-flaky", p.GetPaymentId(), nil, ""))
	if err != nil || res.Msg.GetPayment().GetRefunded().GetAmountMinor() != 800 {
		t.Fatalf("retry: %v, %v", res, err)
	}
	refunds := e.provider.refunds.Load()
	if _, err := e.client.Refund(ctx, refundReq("refund-flaky", p.GetPaymentId(), nil, "")); err != nil {
		t.Fatal(err)
	}
	if e.provider.refunds.Load() != refunds {
		t.Fatal("a retry of a recorded refund reached the provider")
	}
	e.reconcile(t)
}

// TestRefundOfAllRacesPartialOnes asks for all that is left of a payment
// while many partial refunds of it are under way: the provider works out
// what is left when the refund reaches it, after the refunds before it
// however they interleave, so the payment ends fully refunded, by one of
// them, and the books agree.
func TestRefundOfAllRacesPartialOnes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, e *env) {
		const (
			charged  = 1000
			partials = 40
			fulls    = 2
		)
		p := e.charge(t, "full-and-partial", charged)
		refund := func(key string, amount *moneyv1.Money) error {
			_, err := e.client.Refund(context.Background(), refundReq(key, p.GetPaymentId(), amount, ""))
			if err != nil && connect.CodeOf(err) != connect.CodeFailedPrecondition {
				t.Errorf("Refund %s: %v", key, err)
			}
			return err
		}
		var partialsDone, full atomic.Int32
		var wg sync.WaitGroup
		for i := range partials {
			wg.Go(func() {
				_ = refund(fmt.Sprintf("partial-refund-%d", i), usd(10))
				partialsDone.Add(1)
			})
		}
		for i := range fulls {
			wg.Go(func() {
				for partialsDone.Load() < partials/4 {
					runtime.Gosched() // start once the partial refunds are in full swing
				}
				if refund(fmt.Sprintf("full-refund-%d", i), nil) == nil {
					full.Add(1)
				}
			})
		}
		wg.Wait()
		got := e.get(t, p.GetPaymentId())
		if got.GetRefunded().GetAmountMinor() != charged || full.Load() != 1 {
			t.Fatalf("refunded %d of %d; %d refunds of all that was left succeeded, want one", got.GetRefunded().GetAmountMinor(), charged, full.Load())
		}
		e.reconcile(t)
	})
}
