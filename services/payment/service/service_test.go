package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	paymentv1 "github.com/keelplatform/keel/gen/go/shop/payment/v1"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/pgtest"
	paymentservice "github.com/keelplatform/keel/services/payment/service"
)

// memoryBackend is the static backend with a KV layer held in memory.
type memoryBackend struct {
	boot.Static
	kv *config.MemorySource
}

func (b memoryBackend) ConfigSource(config.Env, string) config.Source { return b.kv }

// running is a payment service booted as its binary boots it.
type running struct {
	client paymentv1connect.PaymentServiceClient
	base   string
	kv     *config.MemorySource
}

// start boots the service in the test environment with the KV layer kv,
// the environment variables vars and a fresh data directory.
func start(t *testing.T, kv *config.MemorySource, vars map[string]string) (*running, error) {
	t.Helper()
	env := map[string]string{"KEEL_DATABASE_DATA_DIR": t.TempDir()}
	for k, v := range vars {
		env[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := boot.Start(ctx, paymentservice.Service(), boot.Options{
		Env:       config.EnvTest,
		ConfigDir: seedDir,
		Backend:   memoryBackend{Static: boot.Static{Discovery: discovery.NewStatic()}, kv: kv},
		Log:       io.Discard,
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	})
	if err != nil {
		cancel()
		return nil, err
	}
	t.Cleanup(func() {
		cancel()
		if err := r.Wait(); err != nil {
			t.Error(err)
		}
	})
	base := "http://" + r.Instance.Addr
	return &running{client: paymentv1connect.NewPaymentServiceClient(http.DefaultClient, base), base: base, kv: kv}, nil
}

// status returns the configuration status the process serves.
func (r *running) status(t *testing.T) boot.ConfigStatus {
	t.Helper()
	res, err := http.Get(r.base + boot.ConfigStatusPath)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var st boot.ConfigStatus
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// set changes KV and waits until the process has taken the new version
// in: applied, or rejected when reject is set.
func (r *running) set(t *testing.T, pairs map[string]string, reject bool) {
	t.Helper()
	before := r.status(t)
	r.kv.SetAll(pairs)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st := r.status(t)
		if (reject && st.Rejected > before.Rejected) || (!reject && st.Version > before.Version) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("KV change %v not taken in: status %+v", pairs, st)
		}
	}
}

const (
	alice = "5c1d9b6e-7f2a-4b3c-8d4e-1f2a3b4c5d6e"
	bob   = "9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b"
)

var seq atomic.Int64

// charge charges with a fresh key.
func (r *running) charge(user string, minor int64) error {
	key := fmt.Sprintf("service-test-%d", seq.Add(1))
	_, err := r.client.Charge(context.Background(), connect.NewRequest(&paymentv1.ChargeRequest{
		IdempotencyKey: key, OrderId: "order-" + key, UserId: user,
		Amount: &moneyv1.Money{CurrencyCode: "USD", AmountMinor: minor},
	}))
	return err
}

// eventually retries check until it passes: a subscriber of a
// configuration change runs a moment after the status shows it.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if err = check(); err == nil {
			return
		}
	}
	t.Fatalf("%s: %v", what, err)
}

func wantDecline(reason string, err error) error {
	ce, ok := errors.AsType[*connect.Error](err)
	if !ok || ce.Code() != connect.CodeFailedPrecondition {
		return fmt.Errorf("got %v, want a decline", err)
	}
	for _, d := range ce.Details() {
		if v, _ := d.Value(); v != nil {
			if pd, ok := v.(*paymentv1.PaymentDeclined); ok && pd.GetReason() == reason {
				return nil
			}
		}
	}
	return fmt.Errorf("got %v, want a decline for %s", err, reason)
}

// TestSimulatorFollowsSettingsAtRuntime changes the simulator's keys in
// KV while the service runs: each change applies to the next charges
// without a restart, and a bad value is rejected as a whole.
func TestSimulatorFollowsSettingsAtRuntime(t *testing.T) {
	r, err := start(t, config.NewMemorySource(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.charge(alice, 1_000_000); err != nil {
		t.Fatalf("charge with the seed file's rules: %v", err)
	}

	r.set(t, map[string]string{"simulator/decline_over_minor": "1000"}, false)
	eventually(t, "over the limit", func() error { return wantDecline("amount_over_limit", r.charge(alice, 1001)) })
	if err := r.charge(alice, 1000); err != nil {
		t.Fatalf("charge at the limit: %v", err)
	}

	r.set(t, map[string]string{"simulator/decline_users": `["` + alice + `"]`}, false)
	eventually(t, "blocked user", func() error { return wantDecline("user_blocked", r.charge(alice, 1)) })
	if err := r.charge(bob, 1); err != nil {
		t.Fatalf("charge of a user not blocked: %v", err)
	}

	r.set(t, map[string]string{"simulator/failure_rate": "1"}, false)
	unavailable := func() error {
		if err := r.charge(bob, 1); connect.CodeOf(err) != connect.CodeUnavailable {
			return fmt.Errorf("got %v, want unavailable", err)
		}
		return nil
	}
	eventually(t, "failure rate 1", unavailable)

	// A failure rate out of range is rejected: the rules in effect stay.
	r.set(t, map[string]string{"simulator/failure_rate": "2"}, true)
	if st := r.status(t); st.LastRejection == nil || strings.Join(st.LastRejection.Keys, ",") != "simulator/failure_rate" {
		t.Fatalf("rejection does not name simulator/failure_rate: %+v", st)
	}
	if err := unavailable(); err != nil {
		t.Fatalf("after a rejected change: %v", err)
	}

	r.set(t, map[string]string{
		"simulator/failure_rate": "0", "simulator/decline_users": "[]",
		"simulator/decline_over_minor": "0", "simulator/latency": "150ms",
	}, false)
	eventually(t, "latency", func() error {
		began := time.Now()
		if err := r.charge(alice, 5000); err != nil {
			return err
		}
		if took := time.Since(began); took < 150*time.Millisecond {
			return fmt.Errorf("charge took %v, want the 150ms latency", took)
		}
		return nil
	})
}

// TestContractValidation: booted, the service validates requests against
// the contract before the handler sees them.
func TestContractValidation(t *testing.T) {
	r, err := start(t, config.NewMemorySource(nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = r.charge(alice, 0)
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "amount") {
		t.Fatalf("zero charge: %v, want invalid_argument naming amount", err)
	}
}

// TestServiceOnPostgres boots the service on PostgreSQL, as in prod.
func TestServiceOnPostgres(t *testing.T) {
	vars := map[string]string{"KEEL_DATABASE_DRIVER": "postgres"}
	if _, err := start(t, config.NewMemorySource(nil), vars); err == nil || !strings.Contains(err.Error(), paymentservice.DatabaseDSNVar) {
		t.Fatalf("start on postgres without a DSN: %v, want an error naming %s", err, paymentservice.DatabaseDSNVar)
	}
	vars[paymentservice.DatabaseDSNVar] = pgtest.Start(t)
	r, err := start(t, config.NewMemorySource(nil), vars)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := r.client.Charge(context.Background(), connect.NewRequest(&paymentv1.ChargeRequest{
		IdempotencyKey: "on-postgres", OrderId: "order-pg", UserId: alice,
		Amount: &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: 4200},
	}))
	if err != nil {
		t.Fatalf("Charge: %v", err)
	}
	got, err := r.client.GetPayment(context.Background(), connect.NewRequest(&paymentv1.GetPaymentRequest{PaymentId: resp.Msg.GetPayment().GetPaymentId()}))
	if err != nil || got.Msg.GetPayment().GetAmount().GetAmountMinor() != 4200 {
		t.Fatalf("GetPayment: %v, %v", got, err)
	}
}
