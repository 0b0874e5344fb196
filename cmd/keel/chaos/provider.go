package chaos

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"sort"

	_ "modernc.org/sqlite" // the "sqlite" driver, for the provider's books

	paymentservice "github.com/keelplatform/keel/services/payment/service"
)

// providerSide is the payment provider's own books, summed.
type providerSide struct {
	Charges       int   `json:"charges"`
	Declined      int   `json:"declined"`
	TakenMinor    int64 `json:"taken_minor"`
	RefundedMinor int64 `json:"refunded_minor"`
	NetMinor      int64 `json:"net_minor"`
	Refunds       int   `json:"refunds"`
}

// providerBooks reconciles the payment provider's books (the
// simulator's own, kept apart from the ledger, in the payment service's
// shared data_dir) with the payment service's ledger: every charge the
// provider took is in the ledger under its key, for the same amount, and
// the other way round; each payment's net is the same in both; the
// provider's net is the ledger's.
func (p *platform) providerBooks(ctx context.Context, payDB *sql.DB, b *books) []string {
	var bad []string
	badf := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	st, err := paymentservice.ReadProviderBooks(ctx, filepath.Join(p.dir, "data", "payment"))
	if err != nil {
		return []string{fmt.Sprintf("the payment provider's books cannot be read: %v", err)}
	}
	type entry struct {
		payment string
		amount  int64
	}
	charges := map[string]entry{} // by key
	paymentNet := map[string]int64{}
	rows, err := payDB.QueryContext(ctx, `SELECT kind, idempotency_key, payment_id::text, amount_minor FROM ledger_entries`)
	if err != nil {
		return []string{fmt.Sprintf("read the ledger: %v", err)}
	}
	for rows.Next() {
		var kind, key, payment string
		var amount int64
		if err := rows.Scan(&kind, &key, &payment, &amount); err != nil {
			rows.Close()
			return []string{err.Error()}
		}
		if kind == "charge" {
			charges[key] = entry{payment, amount}
			paymentNet[payment] += amount
		} else {
			paymentNet[payment] -= amount
		}
	}
	rows.Close()

	side := &providerSide{Refunds: len(st.Refunds)}
	keys := make([]string, 0, len(st.Charges))
	for k := range st.Charges {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		c := st.Charges[key]
		if c.DeclineReason != "" {
			side.Declined++
			if e, ok := charges[key]; ok {
				badf("key %s: the provider declined it (%s), the ledger holds a charge of %d", key, c.DeclineReason, e.amount)
			}
			continue
		}
		side.Charges++
		side.TakenMinor += c.Amount.Minor
		side.RefundedMinor += c.Refunded
		e, ok := charges[key]
		switch {
		case !ok:
			badf("the provider took %d under key %s (%d refunded), which the payment ledger does not hold", c.Amount.Minor, key, c.Refunded)
		case e.amount != c.Amount.Minor:
			badf("key %s: the provider took %d, the ledger charged %d", key, c.Amount.Minor, e.amount)
		case paymentNet[e.payment] != c.Amount.Minor-c.Refunded:
			badf("payment %s (key %s): the provider holds %d net, the ledger %d", e.payment, key, c.Amount.Minor-c.Refunded, paymentNet[e.payment])
		}
	}
	for key, e := range charges {
		if c, ok := st.Charges[key]; !ok {
			badf("the ledger charged %d under key %s (payment %s), which the provider never took", e.amount, key, e.payment)
		} else if c.DeclineReason != "" {
			continue // named above
		}
	}
	side.NetMinor = side.TakenMinor - side.RefundedMinor
	b.ProviderBooks = side
	b.Provider = fmt.Sprintf("%d charges %d - refunded %d (%d refunds) = net %d; %d declined",
		side.Charges, side.TakenMinor, side.RefundedMinor, side.Refunds, side.NetMinor, side.Declined)
	if side.NetMinor != b.Payment.NetMinor {
		badf("books: the provider holds %d net, the payment ledger %d", side.NetMinor, b.Payment.NetMinor)
	}
	if side.NetMinor != b.Orders.ConfirmedMinor {
		badf("books: the provider holds %d net, the confirmed orders total %d", side.NetMinor, b.Orders.ConfirmedMinor)
	}
	return bad
}

// sabotageProvider writes into the provider's books a charge that the
// ledger never recorded: money taken from a user that nothing accounts
// for.
func sabotageProvider(ctx context.Context, p *platform) error {
	path := filepath.Join(p.dir, "data", "payment", "payment-provider.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.ExecContext(ctx, `INSERT INTO charges (key, user_id, currency, amount_minor, decline_reason, refunded_minor, create_time)
		VALUES ('sabotage-provider-charge', '00000000-0000-4000-8000-000000000001', 'EUR', 450, '', 0, '2026-01-01T00:00:00Z')`)
	if err != nil {
		return fmt.Errorf("sabotage provider-charge: %w", err)
	}
	p.logf("sabotage provider-charge: done in the provider's books (%s)", path)
	return nil
}
