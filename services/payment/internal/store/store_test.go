package store_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"

	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/pgtest"
	"github.com/keelplatform/keel/services/payment/internal/ledger"
	"github.com/keelplatform/keel/services/payment/internal/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func open(t *testing.T, cfg database.Config) *store.Store {
	t.Helper()
	s, err := store.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

var user = uuid.MustParse("7d4f0b8e-2a51-4c7e-9c1b-5e2f3a4b6c7d")

func charge(key string, minor int64) ledger.Charge {
	return ledger.Charge{Key: key, OrderID: "order-" + key, UserID: user, Amount: ledger.Money{Currency: "USD", Minor: minor}}
}

func capture(t *testing.T, s *store.Store, key string, minor int64) ledger.Payment {
	t.Helper()
	p, err := s.Capture(context.Background(), charge(key, minor))
	if err != nil {
		t.Fatalf("Capture %s: %v", key, err)
	}
	return p
}

func totals(t *testing.T, s *store.Store) ledger.Totals {
	t.Helper()
	all, err := s.Totals(context.Background())
	if err != nil {
		t.Fatalf("Totals: %v", err)
	}
	if len(all) > 1 {
		t.Fatalf("ledger holds currencies %v, want USD only", all)
	}
	return all["USD"]
}

// TestStore runs each case on a fresh store on each database.
func TestStore(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, s *store.Store)
	}{
		{"capture records payment, ledger entry and key", testCapture},
		{"a key is recorded once", testKeyRecordedOnce},
		{"decline is recorded under its key", testDecline},
		{"refunds", testRefunds},
		{"concurrent captures with one key", testConcurrentCaptures},
		{"concurrent refunds never exceed the charge", testConcurrentRefunds},
		{"concurrent refunds of everything left", testConcurrentFullRefunds},
		{"refunds of a stale rest race partial refunds", testStaleRestRacesPartialRefunds},
	}
	for _, c := range configs {
		t.Run(c.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) { tc.run(t, open(t, c.cfg(t))) })
			}
		})
	}
}

func testCapture(t *testing.T, s *store.Store) {
	ctx := context.Background()
	p := capture(t, s, "capture-1", 1250)
	if p.Amount != (ledger.Money{Currency: "USD", Minor: 1250}) || p.Refunded != 0 || p.Status() != ledger.Captured || p.OrderID != "order-capture-1" || p.UserID != user || p.ChargeKey != "capture-1" {
		t.Fatalf("Capture returned %+v", p)
	}
	got, err := s.Payment(ctx, p.ID)
	if err != nil {
		t.Fatalf("Payment: %v", err)
	}
	if !got.CreateTime.Equal(p.CreateTime) || got.Amount != p.Amount || len(got.Refunds) != 0 {
		t.Fatalf("Payment returned %+v, want %+v", got, p)
	}
	rec, err := s.Key(ctx, "capture-1")
	if err != nil {
		t.Fatalf("Key: %v", err)
	}
	if rec.PaymentID != p.ID || !rec.Matches(ledger.OpCharge, charge("capture-1", 1250).Hash()) || rec.DeclineReason != "" {
		t.Fatalf("Key returned %+v", rec)
	}
	if tot := totals(t, s); tot != (ledger.Totals{Charged: 1250, Charges: 1}) {
		t.Fatalf("Totals %+v", tot)
	}
	if _, err := s.Payment(ctx, uuid.New()); !errors.Is(err, ledger.ErrNotFound) {
		t.Fatalf("Payment of an unknown id: %v, want ErrNotFound", err)
	}
	if _, err := s.Key(ctx, "never-used"); !errors.Is(err, ledger.ErrNotFound) {
		t.Fatalf("Key never used: %v, want ErrNotFound", err)
	}
}

func testKeyRecordedOnce(t *testing.T, s *store.Store) {
	ctx := context.Background()
	p := capture(t, s, "once-1", 100)
	if _, err := s.Capture(ctx, charge("once-1", 100)); !errors.Is(err, ledger.ErrKeyRecorded) {
		t.Fatalf("second Capture: %v, want ErrKeyRecorded", err)
	}
	if err := s.Decline(ctx, charge("once-1", 100), "user_blocked"); !errors.Is(err, ledger.ErrKeyRecorded) {
		t.Fatalf("Decline of a captured key: %v, want ErrKeyRecorded", err)
	}
	amount := ledger.Money{Currency: "USD", Minor: 10}
	if _, err := s.Refund(ctx, ledger.RefundRequest{Key: "once-1", PaymentID: p.ID, Amount: &amount}, amount); !errors.Is(err, ledger.ErrKeyRecorded) {
		t.Fatalf("Refund with a charge's key: %v, want ErrKeyRecorded", err)
	}
	if tot := totals(t, s); tot != (ledger.Totals{Charged: 100, Charges: 1}) {
		t.Fatalf("Totals %+v", tot)
	}
}

func testDecline(t *testing.T, s *store.Store) {
	ctx := context.Background()
	c := charge("decline-1", 900)
	if err := s.Decline(ctx, c, "amount_over_limit"); err != nil {
		t.Fatalf("Decline: %v", err)
	}
	rec, err := s.Key(ctx, c.Key)
	if err != nil {
		t.Fatalf("Key: %v", err)
	}
	if rec.DeclineReason != "amount_over_limit" || rec.PaymentID != uuid.Nil || !rec.Matches(ledger.OpCharge, c.Hash()) {
		t.Fatalf("Key returned %+v", rec)
	}
	if _, err := s.Capture(ctx, c); !errors.Is(err, ledger.ErrKeyRecorded) {
		t.Fatalf("Capture of a declined key: %v, want ErrKeyRecorded", err)
	}
	if tot := totals(t, s); tot != (ledger.Totals{}) {
		t.Fatalf("a decline moved money: %+v", tot)
	}
}

func testRefunds(t *testing.T, s *store.Store) {
	ctx := context.Background()
	p := capture(t, s, "refunds-charge", 1000)
	usd := func(minor int64) *ledger.Money { return &ledger.Money{Currency: "USD", Minor: minor} }

	got, err := s.Refund(ctx, ledger.RefundRequest{Key: "refund-1", PaymentID: p.ID, Amount: usd(300), Reason: "damaged"}, *usd(300))
	if err != nil {
		t.Fatalf("partial Refund: %v", err)
	}
	if got.Refunded != 300 || got.Status() != ledger.PartiallyRefunded || len(got.Refunds) != 1 || got.Refunds[0].Reason != "damaged" || got.Refunds[0].Amount != *usd(300) || got.ChargeKey != "refunds-charge" {
		t.Fatalf("after a partial refund: %+v", got)
	}
	if _, err := s.Refund(ctx, ledger.RefundRequest{Key: "refund-2", PaymentID: p.ID, Amount: usd(701)}, *usd(701)); !errors.Is(err, ledger.ErrExceedsRefundable) {
		t.Fatalf("Refund over the rest: %v, want ErrExceedsRefundable", err)
	}
	eur := &ledger.Money{Currency: "EUR", Minor: 1}
	if _, err := s.Refund(ctx, ledger.RefundRequest{Key: "refund-3", PaymentID: p.ID, Amount: eur}, *eur); !errors.Is(err, ledger.ErrCurrencyMismatch) {
		t.Fatalf("Refund in EUR: %v, want ErrCurrencyMismatch", err)
	}
	if _, err := s.Refund(ctx, ledger.RefundRequest{Key: "refund-4", PaymentID: uuid.New(), Amount: usd(1)}, *usd(1)); !errors.Is(err, ledger.ErrNotFound) {
		t.Fatalf("Refund of an unknown payment: %v, want ErrNotFound", err)
	}
	if _, err := s.Refund(ctx, ledger.RefundRequest{Key: "refund-7", PaymentID: p.ID, Amount: usd(10)}, *usd(11)); err == nil {
		t.Fatal("Refund of another amount than asked for succeeded")
	}
	got, err = s.Refund(ctx, ledger.RefundRequest{Key: "refund-5", PaymentID: p.ID, Reason: "cancelled"}, *usd(700))
	if err != nil {
		t.Fatalf("Refund of the rest: %v", err)
	}
	if got.Refunded != 1000 || got.Status() != ledger.Refunded || len(got.Refunds) != 2 || got.Refunds[1].Amount != *usd(700) {
		t.Fatalf("after refunding the rest: %+v", got)
	}
	if _, err := s.Refund(ctx, ledger.RefundRequest{Key: "refund-6", PaymentID: p.ID}, *usd(1)); !errors.Is(err, ledger.ErrExceedsRefundable) {
		t.Fatalf("Refund of a refunded payment: %v, want ErrExceedsRefundable", err)
	}
	if tot := totals(t, s); tot != (ledger.Totals{Charged: 1000, Refunded: 1000, Charges: 1, Refunds: 2}) {
		t.Fatalf("Totals %+v", tot)
	}
	for _, key := range []string{"refund-2", "refund-3", "refund-4", "refund-6", "refund-7"} {
		if _, err := s.Key(ctx, key); !errors.Is(err, ledger.ErrNotFound) {
			t.Errorf("refused refund %s recorded its key: %v", key, err)
		}
	}
	if got, err := s.Payment(ctx, p.ID); err != nil || got.ChargeKey != "refunds-charge" || len(got.Refunds) != 2 {
		t.Fatalf("Payment: %+v, %v", got, err)
	}
}

func testConcurrentCaptures(t *testing.T, s *store.Store) {
	const callers = 20
	var won, lost atomic.Int32
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			_, err := s.Capture(context.Background(), charge("race-1", 4200))
			switch {
			case err == nil:
				won.Add(1)
			case errors.Is(err, ledger.ErrKeyRecorded):
				lost.Add(1)
			default:
				t.Errorf("Capture: %v", err)
			}
		})
	}
	wg.Wait()
	if won.Load() != 1 || lost.Load() != callers-1 {
		t.Fatalf("%d captures won the key, %d lost it; want 1 and %d", won.Load(), lost.Load(), callers-1)
	}
	if tot := totals(t, s); tot != (ledger.Totals{Charged: 4200, Charges: 1}) {
		t.Fatalf("Totals %+v", tot)
	}
}

// testConcurrentRefunds refunds one payment from many goroutines at once,
// each with a key of its own: exactly as many succeed as the charge
// covers, and the payment and the ledger agree.
func testConcurrentRefunds(t *testing.T, s *store.Store) {
	const (
		charged = 1000
		each    = 70
		callers = 30
	)
	p := capture(t, s, "concurrent-refunds", charged)
	var ok, refused atomic.Int32
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			amount := ledger.Money{Currency: "USD", Minor: each}
			_, err := s.Refund(context.Background(), ledger.RefundRequest{Key: fmt.Sprintf("concurrent-refund-%d", i), PaymentID: p.ID, Amount: &amount}, amount)
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, ledger.ErrExceedsRefundable):
				refused.Add(1)
			default:
				t.Errorf("Refund: %v", err)
			}
		})
	}
	wg.Wait()
	if want := int32(charged / each); ok.Load() != want || refused.Load() != callers-want {
		t.Fatalf("%d refunds of %d succeeded, %d refused; want %d and %d", ok.Load(), each, refused.Load(), want, callers-want)
	}
	got, err := s.Payment(context.Background(), p.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := int64(charged / each * each)
	if got.Refunded != want || len(got.Refunds) != charged/each {
		t.Fatalf("payment refunded %d in %d refunds, want %d in %d", got.Refunded, len(got.Refunds), want, charged/each)
	}
	if tot := totals(t, s); tot.Refunded != want || tot.Refunds != charged/each {
		t.Fatalf("ledger refunds %+v, want %d", tot, want)
	}
}

// testConcurrentFullRefunds records many refunds of all that is left at
// once, each worked out before the others were recorded: one is
// recorded, the others find less left than they say.
func testConcurrentFullRefunds(t *testing.T, s *store.Store) {
	p := capture(t, s, "concurrent-full", 500)
	var ok atomic.Int32
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			_, err := s.Refund(context.Background(), ledger.RefundRequest{Key: fmt.Sprintf("full-refund-%d", i), PaymentID: p.ID}, ledger.Money{Currency: "USD", Minor: 500})
			switch {
			case err == nil:
				ok.Add(1)
			case !errors.Is(err, ledger.ErrExceedsRefundable):
				t.Errorf("Refund: %v", err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Fatalf("%d refunds of everything left succeeded, want 1", ok.Load())
	}
	if tot := totals(t, s); tot.Refunded != 500 || tot.Refunds != 1 {
		t.Fatalf("ledger refunds %+v, want one of 500", tot)
	}
}

// testStaleRestRacesPartialRefunds records refunds of what was left of a
// payment before many partial refunds of it, while they are under way:
// the store checks each amount against what is left when it records it,
// under the payment's lock, so a rest that went stale is refused and the
// payment never goes past its charge.
func testStaleRestRacesPartialRefunds(t *testing.T, s *store.Store) {
	const (
		charged  = 1000
		partials = 40
		fulls    = 4
	)
	p := capture(t, s, "full-and-partial", charged)
	refund := func(key string, amount ledger.Money, asked *ledger.Money) error {
		_, err := s.Refund(context.Background(), ledger.RefundRequest{Key: key, PaymentID: p.ID, Amount: asked}, amount)
		if err != nil && !errors.Is(err, ledger.ErrExceedsRefundable) {
			t.Errorf("Refund %s: %v", key, err)
		}
		return err
	}
	var partialsDone atomic.Int32
	var recorded atomic.Int64
	var wg sync.WaitGroup
	for i := range partials {
		wg.Go(func() {
			ten := ledger.Money{Currency: "USD", Minor: 10}
			if refund(fmt.Sprintf("partial-refund-%d", i), ten, &ten) == nil {
				recorded.Add(10)
			}
			partialsDone.Add(1)
		})
	}
	for i := range fulls {
		wg.Go(func() {
			for partialsDone.Load() < partials/4 {
				runtime.Gosched() // start once the partial refunds are in full swing
			}
			got, err := s.Payment(context.Background(), p.ID)
			if err != nil {
				t.Error(err)
				return
			}
			rest := ledger.Money{Currency: "USD", Minor: got.Amount.Minor - got.Refunded}
			if refund(fmt.Sprintf("full-refund-%d", i), rest, nil) == nil {
				recorded.Add(rest.Minor)
			}
		})
	}
	wg.Wait()
	got, err := s.Payment(context.Background(), p.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Refunded != recorded.Load() || got.Refunded > charged {
		t.Fatalf("refunded %d of %d; the refunds recorded add up to %d", got.Refunded, charged, recorded.Load())
	}
	if tot := totals(t, s); tot.Refunded != got.Refunded {
		t.Fatalf("ledger refunds %+v, payment says %d", tot, got.Refunded)
	}
}
