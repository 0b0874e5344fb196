package provider_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keelplatform/keel/services/payment/internal/ledger"
	"github.com/keelplatform/keel/services/payment/internal/provider"
)

const blocked = "3b8a1c2d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

func usd(minor int64) ledger.Money { return ledger.Money{Currency: "USD", Minor: minor} }

func declineReason(err error) string {
	if d, ok := errors.AsType[*provider.Declined](err); ok {
		return d.Reason
	}
	return ""
}

func TestSimulatorTakesEveryChargeByDefault(t *testing.T) {
	sim := provider.NewSimulator(provider.Rules{})
	for i := range 1000 {
		if err := sim.Charge(context.Background(), fmt.Sprintf("key-%d", i), blocked, usd(1<<40)); err != nil {
			t.Fatalf("charge %d: %v", i, err)
		}
	}
}

func TestSimulatorDeclines(t *testing.T) {
	sim := provider.NewSimulator(provider.Rules{DeclineOverMinor: 1000, DeclineUsers: []string{blocked}})
	other := "00000000-0000-4000-8000-000000000001"
	cases := []struct {
		user   string
		amount int64
		want   string
	}{
		{other, 1000, ""},
		{other, 1001, provider.ReasonAmountOverLimit},
		{blocked, 1, provider.ReasonUserBlocked},
	}
	for _, c := range cases {
		err := sim.Charge(context.Background(), "decline-key", c.user, usd(c.amount))
		if got := declineReason(err); got != c.want || (c.want == "" && err != nil) {
			t.Errorf("charge of %d by %s: %v, want decline reason %q", c.amount, c.user, err, c.want)
		}
	}
	sim.SetRules(provider.Rules{})
	if err := sim.Charge(context.Background(), "decline-key", blocked, usd(5000)); err != nil {
		t.Fatalf("after the rules were lifted: %v", err)
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
	a := provider.NewSimulator(provider.Rules{FailureRate: rate})
	b := provider.NewSimulator(provider.Rules{FailureRate: rate})
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
		sim := provider.NewSimulator(provider.Rules{FailureRate: c.rate})
		for i := range 500 {
			err := sim.Charge(context.Background(), fmt.Sprintf("k-%d", i), blocked, usd(1))
			if (err != nil) != c.fail {
				t.Fatalf("rate %v, key %d: %v", c.rate, i, err)
			}
		}
	}
}

func TestSimulatorLatencyFollowsTheCaller(t *testing.T) {
	sim := provider.NewSimulator(provider.Rules{Latency: 50 * time.Millisecond})
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
