package ledger_test

import (
	"testing"

	"github.com/google/uuid"

	"github.com/keelplatform/keel/services/payment/internal/ledger"
)

// TestHashesTellRequestsApart: requests that differ in any field but the
// key hash differently, and the key does not count.
func TestHashesTellRequestsApart(t *testing.T) {
	user := uuid.MustParse("5c1d9b6e-7f2a-4b3c-8d4e-1f2a3b4c5d6e")
	base := ledger.Charge{Key: "k-00000001", OrderID: "o1", UserID: user, Amount: ledger.Money{Currency: "USD", Minor: 100}}
	same := base
	same.Key = "k-00000002"
	if base.Hash() != same.Hash() {
		t.Fatal("the key changed a charge's hash")
	}
	variants := []func(c *ledger.Charge){
		func(c *ledger.Charge) { c.OrderID = "o2" },
		func(c *ledger.Charge) { c.UserID = uuid.New() },
		func(c *ledger.Charge) { c.Amount.Currency = "EUR" },
		func(c *ledger.Charge) { c.Amount.Minor = 101 },
	}
	for i, change := range variants {
		c := base
		change(&c)
		if c.Hash() == base.Hash() {
			t.Errorf("charge variant %d hashes like the original", i)
		}
	}

	payment := uuid.New()
	all := ledger.RefundRequest{Key: "r-00000001", PaymentID: payment, Reason: "r"}
	some := all
	some.Amount = &ledger.Money{Currency: "USD", Minor: 100}
	other := some
	other.Reason = "s"
	// Field boundaries count: reason "r" and currency "USD" are not reason
	// "rUSD" and currency "".
	shifted := some
	shifted.Reason = "rUSD"
	shifted.Amount = &ledger.Money{Currency: "", Minor: 100}
	hashes := map[string]bool{all.Hash(): true, some.Hash(): true, other.Hash(): true, shifted.Hash(): true}
	if len(hashes) != 4 {
		t.Fatal("refunds of all, of an amount, with another reason, or with a shifted field boundary hash alike")
	}
}

func TestStatus(t *testing.T) {
	for refunded, want := range map[int64]ledger.Status{0: ledger.Captured, 1: ledger.PartiallyRefunded, 99: ledger.PartiallyRefunded, 100: ledger.Refunded} {
		p := ledger.Payment{Amount: ledger.Money{Currency: "USD", Minor: 100}, Refunded: refunded}
		if got := p.Status(); got != want {
			t.Errorf("refunded %d of 100: status %v, want %v", refunded, got, want)
		}
	}
}
