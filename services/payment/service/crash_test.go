//go:build unix

package service_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	paymentv1 "github.com/keelplatform/keel/gen/go/shop/payment/v1"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/internal/database"
	"github.com/keelplatform/keel/internal/drill"
	"github.com/keelplatform/keel/internal/pgtest"
	"github.com/keelplatform/keel/internal/testkit"
	"github.com/keelplatform/keel/services/payment/internal/store"
	paymentservice "github.com/keelplatform/keel/services/payment/service"
)

// binary is the payment service built as its own binary, for the crash
// tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keel-payment-bin-")
	if err == nil {
		binary, err = testkit.Build(dir, "github.com/keelplatform/keel/services/payment")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	pgtest.Main(m)
}

// TestChargeSurvivesACrash kills the payment process (SIGKILL) in the
// middle of a charge, at each point where the money and the ledger could
// part, restarts it on the same database and retries the charge with its
// key, as the order saga does: the ledger ends with the charge exactly
// once, and every retry answers with the same payment.
func TestChargeSurvivesACrash(t *testing.T) {
	for _, point := range paymentservice.CrashPoints {
		t.Run(point, func(t *testing.T) {
			data := t.TempDir()
			env := []string{
				"KEEL_ENV=test",
				"KEEL_CONFIG_DIR=" + filepath.Join("..", "..", "..", "consul", "kv"),
				"KEEL_SERVER_ADDR=127.0.0.1:0",
				"KEEL_DATABASE_DATA_DIR=" + data,
			}
			req := &paymentv1.ChargeRequest{
				IdempotencyKey: "crash-" + point, OrderId: "order-crash", UserId: alice,
				Amount: &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: 4200},
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()

			first := testkit.Start(t, binary, append(env, drill.Var+"="+point)...)
			client := paymentv1connect.NewPaymentServiceClient(testkit.H2CClient(), "http://"+first.Addr(), connect.WithGRPC())
			if _, err := client.Charge(ctx, connect.NewRequest(req)); err == nil {
				t.Fatal("the charge was answered; the drill should have killed the process first")
			}
			if !first.Killed(10 * time.Second) {
				t.Fatalf("the process was not killed at %s\n%s", point, first.Logs())
			}

			second := testkit.Start(t, binary, env...)
			client = paymentv1connect.NewPaymentServiceClient(testkit.H2CClient(), "http://"+second.Addr(), connect.WithGRPC())
			var ids []string
			for range 3 {
				res, err := client.Charge(ctx, connect.NewRequest(req))
				if err != nil {
					t.Fatalf("retry after the crash: %v", err)
				}
				ids = append(ids, res.Msg.GetPayment().GetPaymentId())
			}
			if ids[0] == "" || ids[1] != ids[0] || ids[2] != ids[0] {
				t.Errorf("retries answered with payments %q, want one payment", ids)
			}
			if err := second.Stop(10 * time.Second); err != nil {
				t.Fatal(err)
			}

			st, err := store.Open(ctx, database.Config{Driver: database.DriverSQLite, DataDir: data, Name: "payment"})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			totals, err := st.Totals(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := totals["EUR"]; got.Charges != 1 || got.Charged != 4200 || got.Refunds != 0 {
				t.Errorf("ledger %+v, want one charge of 4200", got)
			}
			books, err := paymentservice.ReadProviderBooks(ctx, data)
			if err != nil {
				t.Fatal(err)
			}
			if c, ok := books.Charges[req.IdempotencyKey]; len(books.Charges) != 1 || !ok || c.Amount.Minor != 4200 || c.DeclineReason != "" || c.Refunded != 0 {
				t.Errorf("provider books %+v, want one charge of 4200 under the request's key", books.Charges)
			}
		})
	}
}

// TestRefundSurvivesACrash kills the payment process (SIGKILL) in the
// middle of a refund, at each point where the provider's books and the
// ledger could part, restarts it on the same database and retries the
// refund with its key, as the order saga's compensation does: the
// provider gives the money back once, the ledger records it once, every
// retry answers the same, and the provider's books and the ledger agree.
func TestRefundSurvivesACrash(t *testing.T) {
	for _, point := range paymentservice.RefundCrashPoints {
		t.Run(point, func(t *testing.T) {
			data := t.TempDir()
			env := []string{
				"KEEL_ENV=test",
				"KEEL_CONFIG_DIR=" + filepath.Join("..", "..", "..", "consul", "kv"),
				"KEEL_SERVER_ADDR=127.0.0.1:0",
				"KEEL_DATABASE_DATA_DIR=" + data,
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()

			first := testkit.Start(t, binary, append(env, drill.Var+"="+point)...)
			client := paymentv1connect.NewPaymentServiceClient(testkit.H2CClient(), "http://"+first.Addr(), connect.WithGRPC())
			charged, err := client.Charge(ctx, connect.NewRequest(&paymentv1.ChargeRequest{
				IdempotencyKey: "crash-charge", OrderId: "order-crash", UserId: alice,
				Amount: &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: 4200},
			}))
			if err != nil {
				t.Fatal(err)
			}
			// A refund of all that is left: the provider works out how
			// much, and a retry must get the same amount from it.
			req := &paymentv1.RefundRequest{IdempotencyKey: "crash-" + point, PaymentId: charged.Msg.GetPayment().GetPaymentId(), Reason: "crash"}
			if _, err := client.Refund(ctx, connect.NewRequest(req)); err == nil {
				t.Fatal("the refund was answered; the drill should have killed the process first")
			}
			if !first.Killed(10 * time.Second) {
				t.Fatalf("the process was not killed at %s\n%s", point, first.Logs())
			}

			second := testkit.Start(t, binary, env...)
			client = paymentv1connect.NewPaymentServiceClient(testkit.H2CClient(), "http://"+second.Addr(), connect.WithGRPC())
			for i := range 3 {
				res, err := client.Refund(ctx, connect.NewRequest(req))
				if err != nil {
					t.Fatalf("retry after the crash: %v", err)
				}
				if p := res.Msg.GetPayment(); p.GetRefunded().GetAmountMinor() != 4200 || len(p.GetRefunds()) != 1 {
					t.Errorf("retry %d answered %v, want one refund of 4200", i, p)
				}
			}
			if err := second.Stop(10 * time.Second); err != nil {
				t.Fatal(err)
			}

			st, err := store.Open(ctx, database.Config{Driver: database.DriverSQLite, DataDir: data, Name: "payment"})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			totals, err := st.Totals(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := totals["EUR"]; got.Charges != 1 || got.Charged != 4200 || got.Refunds != 1 || got.Refunded != 4200 {
				t.Errorf("ledger %+v, want one charge of 4200 and one refund of it", got)
			}
			books, err := paymentservice.ReadProviderBooks(ctx, data)
			if err != nil {
				t.Fatal(err)
			}
			r, ok := books.Refunds[paymentservice.ProviderRefundKey(req.IdempotencyKey)]
			if len(books.Refunds) != 1 || !ok || r.ChargeKey != "crash-charge" || r.Amount.Minor != 4200 || books.Charges["crash-charge"].Refunded != 4200 {
				t.Errorf("provider books %+v, want the charge refunded once, in full, under the refund's key", books)
			}
		})
	}
}
