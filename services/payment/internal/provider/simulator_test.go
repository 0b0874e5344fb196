package provider_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/keelplatform/keel/services/payment/internal/ledger"
	"github.com/keelplatform/keel/services/payment/internal/provider"
)

const blocked = "3b8a1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

func usd(minor int64) ledger.Money { return ledger.Money{Currency: "USD", Minor: minor} }

// newSimulator returns a simulator answering by rules, its books in a
// directory of the test's.
func newSimulator(t *testing.T, rules provider.Rules) *provider.Simulator {
	t.Helper()
	books, err := provider.OpenBooks(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = books.Close() })
	return provider.NewSimulator(rules, books)
}

func declineReason(err error) string {
	if d, ok := errors.AsType[*provider.Declined](err); ok {
		return d.Reason
	}
	return ""
}

func TestSimulatorTakesEveryChargeByDefault(t *testing.T) {
	sim := newSimulator(t, provider.Rules{})
	for i := range 1000 {
		if err := sim.Charge(context.Background(), fmt.Sprintf("key-%d", i), blocked, usd(1<<40)); err != nil {
			t.Fatalf("charge %d: %v", i, err)
		}
	}
}

func TestSimulatorDeclines(t *testing.T) {
	sim := newSimulator(t, provider.Rules{DeclineOverMinor: 1000, DeclineUsers: []string{blocked}})
	other := "00000000-0000-4000-8000-000000000001"
	cases := []struct {
		key    string
		user   string
		amount int64
		want   string
	}{
		{"decline-key-1", other, 1000, ""},
		{"decline-key-2", other, 1001, provider.ReasonAmountOverLimit},
		{"decline-key-3", blocked, 1, provider.ReasonUserBlocked},
	}
	for _, c := range cases {
		err := sim.Charge(context.Background(), c.key, c.user, usd(c.amount))
		if got := declineReason(err); got != c.want || (c.want == "" && err != nil) {
			t.Errorf("charge of %d by %s: %v, want decline reason %q", c.amount, c.user, err, c.want)
		}
	}
	sim.SetRules(provider.Rules{})
	// A key the provider answered keeps its answer, the rules lifted.
	for _, c := range cases {
		err := sim.Charge(context.Background(), c.key, c.user, usd(c.amount))
		if got := declineReason(err); got != c.want || (c.want == "" && err != nil) {
			t.Errorf("charge %s repeated after the rules were lifted: %v, want decline reason %q", c.key, err, c.want)
		}
	}
	if err := sim.Charge(context.Background(), "decline-key-4", blocked, usd(5000)); err != nil {
		t.Fatalf("a new key after the rules were lifted: %v", err)
	}
	st, err := sim.Statement(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range append(cases, struct {
		key    string
		user   string
		amount int64
		want   string
	}{"decline-key-4", blocked, 5000, ""}) {
		got := st.Charges[c.key]
		if got != (provider.ChargeRecord{Key: c.key, UserID: c.user, Amount: usd(c.amount), DeclineReason: c.want}) {
			t.Errorf("books hold %+v for %s, want %d by %s declined for %q", got, c.key, c.amount, c.user, c.want)
		}
	}
}

// TestSimulatorChargesOncePerKey: a charge repeated with its key, after
// the provider answered, is answered the same and takes nothing more; a
// key reused for another user or amount is refused and changes nothing.
func TestSimulatorChargesOncePerKey(t *testing.T) {
	ctx := context.Background()
	sim := newSimulator(t, provider.Rules{})
	for range 3 {
		if err := sim.Charge(ctx, "once-key", blocked, usd(700)); err != nil {
			t.Fatal(err)
		}
	}
	other := "00000000-0000-4000-8000-000000000001"
	for name, c := range map[string]struct {
		user   string
		amount ledger.Money
	}{
		"another amount":   {blocked, usd(701)},
		"another currency": {blocked, ledger.Money{Currency: "EUR", Minor: 700}},
		"another user":     {other, usd(700)},
	} {
		if err := sim.Charge(ctx, "once-key", c.user, c.amount); !errors.Is(err, provider.ErrKeyReused) {
			t.Errorf("%s under a charged key: %v, want ErrKeyReused", name, err)
		}
	}
	st, err := sim.Statement(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Charges) != 1 || st.Charges["once-key"] != (provider.ChargeRecord{Key: "once-key", UserID: blocked, Amount: usd(700)}) {
		t.Fatalf("books hold %+v, want one charge of 700", st.Charges)
	}
}

// TestSimulatorRefunds: refunds by key give back at most what is left of
// a charge taken, a repeated key gives back nothing more and answers
// with what it gave back the first time, and the books say so.
func TestSimulatorRefunds(t *testing.T) {
	ctx := context.Background()
	sim := newSimulator(t, provider.Rules{DeclineOverMinor: 5000})
	if err := sim.Charge(ctx, "charge-1", blocked, usd(1000)); err != nil {
		t.Fatal(err)
	}
	if err := sim.Charge(ctx, "charge-declined", blocked, usd(9000)); declineReason(err) == "" {
		t.Fatalf("charge over the limit: %v", err)
	}
	refund := func(key, charge string, amount *ledger.Money) (int64, error) {
		got, err := sim.Refund(ctx, key, charge, amount)
		if err == nil && got.Currency != "USD" {
			t.Errorf("refund %s gave back %+v, want USD", key, got)
		}
		return got.Minor, err
	}
	part := usd(300)
	for range 2 {
		if got, err := refund("refund-1", "charge-1", &part); got != 300 || err != nil {
			t.Fatalf("partial refund: %d, %v; want 300", got, err)
		}
	}
	refused := []struct {
		name, key, charge string
		amount            *ledger.Money
		want              error
	}{
		{"over what is left", "refund-2", "charge-1", &ledger.Money{Currency: "USD", Minor: 701}, provider.ErrExceedsCharge},
		{"zero", "refund-2", "charge-1", &ledger.Money{Currency: "USD"}, provider.ErrExceedsCharge},
		{"another currency", "refund-2", "charge-1", &ledger.Money{Currency: "EUR", Minor: 1}, provider.ErrCurrencyMismatch},
		{"unknown charge", "refund-2", "charge-unknown", &part, provider.ErrUnknownCharge},
		{"declined charge", "refund-2", "charge-declined", nil, provider.ErrUnknownCharge},
		{"key reused for another amount", "refund-1", "charge-1", &ledger.Money{Currency: "USD", Minor: 301}, provider.ErrKeyReused},
		{"key reused for all that is left", "refund-1", "charge-1", nil, provider.ErrKeyReused},
		{"key reused for another charge", "refund-1", "charge-declined", &part, provider.ErrKeyReused},
	}
	for _, c := range refused {
		if got, err := refund(c.key, c.charge, c.amount); !errors.Is(err, c.want) {
			t.Errorf("%s: %d, %v; want %v", c.name, got, err, c.want)
		}
	}
	for range 2 {
		if got, err := refund("refund-rest", "charge-1", nil); got != 700 || err != nil {
			t.Fatalf("refund of the rest: %d, %v; want 700", got, err)
		}
	}
	if got, err := refund("refund-more", "charge-1", nil); !errors.Is(err, provider.ErrExceedsCharge) {
		t.Fatalf("refund of a refunded charge: %d, %v; want ErrExceedsCharge", got, err)
	}
	st, err := sim.Statement(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]provider.RefundRecord{
		"refund-1":    {Key: "refund-1", ChargeKey: "charge-1", Amount: usd(300)},
		"refund-rest": {Key: "refund-rest", ChargeKey: "charge-1", Amount: usd(700)},
	}
	if len(st.Refunds) != len(want) || st.Refunds["refund-1"] != want["refund-1"] || st.Refunds["refund-rest"] != want["refund-rest"] {
		t.Errorf("books hold refunds %+v, want %+v", st.Refunds, want)
	}
	if c := st.Charges["charge-1"]; c.Refunded != 1000 {
		t.Errorf("books hold %+v, want charge-1 refunded in full", c)
	}
	if c := st.Charges["charge-declined"]; c.Refunded != 0 || c.DeclineReason != provider.ReasonAmountOverLimit {
		t.Errorf("books hold %+v for the declined charge", c)
	}
}

// TestSimulatorRefundsRaceOnOneCharge: many refunds of one charge at once,
// each key sent twice, some of all that is left: the charge is given
// back exactly once in full, and every refund a key got is in the books.
func TestSimulatorRefundsRaceOnOneCharge(t *testing.T) {
	ctx := context.Background()
	sim := newSimulator(t, provider.Rules{})
	if err := sim.Charge(ctx, "race-charge", blocked, usd(1000)); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	given := map[string]int64{}
	var wg sync.WaitGroup
	for i := range 40 {
		for range 2 {
			wg.Go(func() {
				amount := &ledger.Money{Currency: "USD", Minor: 30}
				if i%10 == 9 {
					amount = nil
				}
				key := fmt.Sprintf("race-refund-%d", i)
				got, err := sim.Refund(ctx, key, "race-charge", amount)
				switch {
				case err == nil:
					mu.Lock()
					if prev, ok := given[key]; ok && prev != got.Minor {
						t.Errorf("%s gave back %d, then %d", key, prev, got.Minor)
					}
					given[key] = got.Minor
					mu.Unlock()
				case !errors.Is(err, provider.ErrExceedsCharge):
					t.Errorf("refund %s: %v", key, err)
				}
			})
		}
	}
	wg.Wait()
	st, err := sim.Statement(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for key, minor := range given {
		if st.Refunds[key].Amount.Minor != minor {
			t.Errorf("%s gave back %d, the books say %+v", key, minor, st.Refunds[key])
		}
		sum += minor
	}
	if len(st.Refunds) != len(given) || sum != 1000 || st.Charges["race-charge"].Refunded != 1000 {
		t.Fatalf("refunds gave back %d in %d refunds (books: %d refunds, %+v), want 1000", sum, len(given), len(st.Refunds), st.Charges["race-charge"])
	}
}

// TestSimulatorBooksOutliveTheSimulator: books opened again, by another
// simulator, still hold every key, which keeps its answer; the books read
// read-only say the same.
func TestSimulatorBooksOutliveTheSimulator(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	books, err := provider.OpenBooks(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	sim := provider.NewSimulator(provider.Rules{DeclineUsers: []string{blocked}}, books)
	other := "00000000-0000-4000-8000-000000000001"
	if err := sim.Charge(ctx, "kept-charge", other, usd(500)); err != nil {
		t.Fatal(err)
	}
	if err := sim.Charge(ctx, "kept-decline", blocked, usd(500)); declineReason(err) != provider.ReasonUserBlocked {
		t.Fatalf("blocked user: %v", err)
	}
	if _, err := sim.Refund(ctx, "kept-refund", "kept-charge", nil); err != nil {
		t.Fatal(err)
	}
	before, err := sim.Statement(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := books.Close(); err != nil {
		t.Fatal(err)
	}

	books, err = provider.OpenBooks(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer books.Close()
	sim = provider.NewSimulator(provider.Rules{}, books)
	if err := sim.Charge(ctx, "kept-decline", blocked, usd(500)); declineReason(err) != provider.ReasonUserBlocked {
		t.Errorf("a declined key after a restart: %v, want the decline", err)
	}
	if got, err := sim.Refund(ctx, "kept-refund", "kept-charge", nil); err != nil || got != usd(500) {
		t.Errorf("a refund key after a restart: %+v, %v; want the 500 it gave back", got, err)
	}
	if _, err := sim.Refund(ctx, "another-refund", "kept-charge", nil); !errors.Is(err, provider.ErrExceedsCharge) {
		t.Errorf("a refund of a charge refunded before the restart: %v", err)
	}
	read, err := provider.ReadStatement(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(read, before) || len(read.Charges) != 2 || len(read.Refunds) != 1 {
		t.Fatalf("books read after a restart: %+v, want %+v", read, before)
	}
	if _, err := provider.ReadStatement(ctx, t.TempDir()); err == nil {
		t.Fatal("ReadStatement of a directory without books succeeded")
	}
}

// TestSimulatorFailuresAreDeterministic: two simulators with one rate fail
// the same attempts of the same keys, about rate of them, and every key
// gets through within a few retries.
func TestSimulatorFailuresAreDeterministic(t *testing.T) {
	const (
		rate = 0.3
		keys = 5000
	)
	a := newSimulator(t, provider.Rules{FailureRate: rate})
	b := newSimulator(t, provider.Rules{FailureRate: rate})
	var attempts, failures int
	for i := range keys {
		key := fmt.Sprintf("order-%d-charge", i)
		for try := 1; ; try++ {
			errA := a.Charge(context.Background(), key, blocked, usd(1))
			errB := b.Charge(context.Background(), key, blocked, usd(1))
			if (errA == nil) != (errB == nil) {
				t.Fatalf("key %s attempt %d: %v and %v from two simulators", key, try, errA, errB)
			}
			attempts++
			if errA == nil {
				break
			}
			if !errors.Is(errA, provider.ErrUnavailable) {
				t.Fatalf("key %s: %v, want ErrUnavailable", key, errA)
			}
			failures++
			if try == 20 {
				t.Fatalf("key %s failed 20 attempts in a row at rate %v", key, rate)
			}
		}
	}
	if share := float64(failures) / float64(attempts); share < rate-0.03 || share > rate+0.03 {
		t.Fatalf("%d of %d attempts failed (%.3f), want about %v", failures, attempts, share, rate)
	}
	if failures == 0 {
		t.Fatal("no attempt failed")
	}
}

func TestSimulatorFailureRateBounds(t *testing.T) {
	for _, c := range []struct {
		rate float64
		fail bool
	}{{0, false}, {1, true}} {
		sim := newSimulator(t, provider.Rules{FailureRate: c.rate})
		for i := range 500 {
			err := sim.Charge(context.Background(), fmt.Sprintf("k-%d", i), blocked, usd(1))
			if (err != nil) != c.fail {
				t.Fatalf("rate %v, key %d: %v", c.rate, i, err)
			}
		}
	}
}

func TestSimulatorLatencyFollowsTheCaller(t *testing.T) {
	sim := newSimulator(t, provider.Rules{Latency: 50 * time.Millisecond})
	began := time.Now()
	if err := sim.Charge(context.Background(), "slow-key", blocked, usd(1)); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took < 50*time.Millisecond {
		t.Fatalf("charge took %v, want the 50ms latency", took)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	sim.SetRules(provider.Rules{Latency: time.Minute})
	began = time.Now()
	if err := sim.Charge(ctx, "slow-key", blocked, usd(1)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("charge past the caller's deadline: %v", err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Fatalf("charge took %v past the caller's deadline", took)
	}
}
