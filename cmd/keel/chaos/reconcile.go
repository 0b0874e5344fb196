package chaos

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
)

// books are the three services' books read from their databases, and
// what they add up to.
type books struct {
	Orders struct {
		Confirmed      int            `json:"confirmed"`
		Cancelled      int            `json:"cancelled"`
		Pending        int            `json:"pending"`
		ConfirmedMinor int64          `json:"confirmed_total_minor"`
		CancelReasons  map[string]int `json:"cancel_reasons"`
	} `json:"orders"`
	Payment struct {
		Payments     int   `json:"payments"`
		ChargedMinor int64 `json:"charged_minor"`
		RefundMinor  int64 `json:"refunded_minor"`
		NetMinor     int64 `json:"net_minor"`
		Charges      int   `json:"charge_entries"`
		Refunds      int   `json:"refund_entries"`
	} `json:"payment_ledger"`
	Provider      string         `json:"provider"`
	ProviderBooks *providerSide  `json:"provider_books"`
	Stock         []stockRow     `json:"stock"`
	Sagas         map[string]int `json:"sagas"`
}

type stockRow struct {
	SKU            string `json:"sku"`
	Initial        int64  `json:"initial"`
	Available      int64  `json:"available"`
	Reserved       int64  `json:"reserved"`
	Committed      int64  `json:"committed"`
	ConfirmedLines int64  `json:"confirmed_lines"`
	HeldLines      int64  `json:"held_reservation_lines"`
}

type dbOrder struct {
	id, user, key, status, paymentID, reason string
	total                                    int64
	lines                                    []line
}

// unfinishedSagas counts the order service's sagas not yet completed or
// compensated.
func unfinishedSagas(ctx context.Context, db *sql.DB) (int, error) {
	var n int
	err := db.QueryRowContext(ctx, `SELECT count(*) FROM sagas WHERE status NOT IN ('completed', 'compensated')`).Scan(&n)
	return n, err
}

// reconcile reads the books and returns them with every discrepancy
// found between them and what the clients were told.
func (p *platform) reconcile(ctx context.Context, tr *traffic) (*books, []string, error) {
	var bad []string
	badf := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	open := func(name string) (*sql.DB, error) { return sql.Open("pgx", p.pg.dsn(name)) }
	orderDB, err := open("order")
	if err != nil {
		return nil, nil, err
	}
	defer orderDB.Close()
	payDB, err := open("payment")
	if err != nil {
		return nil, nil, err
	}
	defer payDB.Close()
	invDB, err := open("inventory")
	if err != nil {
		return nil, nil, err
	}
	defer invDB.Close()

	b := &books{Sagas: map[string]int{}}
	b.Orders.CancelReasons = map[string]int{}
	// Orders.
	rows, err := orderDB.QueryContext(ctx, `SELECT id, user_id, idempotency_key, status, total_minor, lines, payment_id, failure_reason FROM orders`)
	if err != nil {
		return nil, nil, fmt.Errorf("read orders: %w", err)
	}
	orders := map[string]*dbOrder{}
	byKey := map[string]*dbOrder{}
	for rows.Next() {
		o := &dbOrder{}
		var lines []byte
		if err := rows.Scan(&o.id, &o.user, &o.key, &o.status, &o.total, &lines, &o.paymentID, &o.reason); err != nil {
			rows.Close()
			return nil, nil, err
		}
		if err := json.Unmarshal(lines, &o.lines); err != nil {
			rows.Close()
			return nil, nil, fmt.Errorf("order %s lines: %w", o.id, err)
		}
		orders[o.id] = o
		byKey[o.user+"/"+o.key] = o
		switch o.status {
		case "confirmed":
			b.Orders.Confirmed++
			b.Orders.ConfirmedMinor += o.total
		case "cancelled":
			b.Orders.Cancelled++
			b.Orders.CancelReasons[shortReason(o.reason)]++
		default:
			b.Orders.Pending++
		}
	}
	rows.Close()
	srows, err := orderDB.QueryContext(ctx, `SELECT status, count(*) FROM sagas GROUP BY status`)
	if err != nil {
		return nil, nil, fmt.Errorf("read sagas: %w", err)
	}
	for srows.Next() {
		var s string
		var n int
		if err := srows.Scan(&s, &n); err != nil {
			srows.Close()
			return nil, nil, err
		}
		b.Sagas[s] = n
		if s != "completed" && s != "compensated" {
			badf("%d sagas still %s after the recovery window", n, s)
		}
	}
	srows.Close()
	if b.Orders.Pending > 0 {
		badf("%d orders still pending after the recovery window", b.Orders.Pending)
	}

	// What the clients were told.
	tr.mu.Lock()
	placed := append([]*orderRec(nil), tr.orders...)
	tr.mu.Unlock()
	for _, rec := range placed {
		o := byKey[rec.UserID+"/"+rec.Key]
		switch {
		case rec.Outcome == "confirmed" || rec.Outcome == "cancelled":
			if o == nil {
				badf("order %s (key %s) acknowledged %s is not in the order database: lost", rec.OrderID, rec.Key, strings.ToUpper(rec.Outcome))
				continue
			}
			if o.id != rec.OrderID {
				badf("key %s: acknowledged as order %s, the database holds %s", rec.Key, rec.OrderID, o.id)
			}
			if o.status != rec.Outcome {
				badf("order %s acknowledged %s is %s in the order database", o.id, strings.ToUpper(rec.Outcome), strings.ToUpper(o.status))
			}
		case strings.HasPrefix(rec.Outcome, "answered"):
			badf("order %s (key %s) was answered with status %s", rec.OrderID, rec.Key, rec.Outcome)
		}
	}

	// Payments and the ledger.
	type pay struct {
		id, order        string
		amount, refunded int64
		charges          int
		charged, refund  int64
	}
	pays := map[string]*pay{}
	prows, err := payDB.QueryContext(ctx, `SELECT id::text, order_id, amount_minor, refunded_minor FROM payments`)
	if err != nil {
		return nil, nil, fmt.Errorf("read payments: %w", err)
	}
	for prows.Next() {
		x := &pay{}
		if err := prows.Scan(&x.id, &x.order, &x.amount, &x.refunded); err != nil {
			prows.Close()
			return nil, nil, err
		}
		pays[x.id] = x
	}
	prows.Close()
	b.Payment.Payments = len(pays)
	lrows, err := payDB.QueryContext(ctx, `SELECT kind, amount_minor, payment_id::text FROM ledger_entries`)
	if err != nil {
		return nil, nil, fmt.Errorf("read the ledger: %w", err)
	}
	for lrows.Next() {
		var kind, pid string
		var amount int64
		if err := lrows.Scan(&kind, &amount, &pid); err != nil {
			lrows.Close()
			return nil, nil, err
		}
		x := pays[pid]
		if x == nil {
			x = &pay{id: pid}
			pays[pid] = x
			badf("ledger entry (%s %d) of payment %s, which the payments table does not hold", kind, amount, pid)
		}
		switch kind {
		case "charge":
			b.Payment.Charges++
			b.Payment.ChargedMinor += amount
			x.charges++
			x.charged += amount
		case "refund":
			b.Payment.Refunds++
			b.Payment.RefundMinor += amount
			x.refund += amount
		}
	}
	lrows.Close()
	b.Payment.NetMinor = b.Payment.ChargedMinor - b.Payment.RefundMinor
	byOrder := map[string][]*pay{}
	for _, x := range pays {
		if x.charged-x.refund != x.amount-x.refunded {
			badf("payment %s: ledger says %d net, the payment row %d", x.id, x.charged-x.refund, x.amount-x.refunded)
		}
		byOrder[x.order] = append(byOrder[x.order], x)
	}
	for orderID, ps := range byOrder {
		o := orders[orderID]
		var net int64
		for _, x := range ps {
			net += x.charged - x.refund
		}
		if o == nil && net != 0 {
			badf("%d taken for order %s, which the order database does not hold", net, orderID)
		}
	}

	// Reservations.
	type resv struct {
		state string
		lines []line
	}
	reservations := map[string]resv{}
	rrows, err := invDB.QueryContext(ctx, `SELECT id, state, lines FROM reservations`)
	if err != nil {
		return nil, nil, fmt.Errorf("read reservations: %w", err)
	}
	for rrows.Next() {
		var id, state string
		var lines []byte
		if err := rrows.Scan(&id, &state, &lines); err != nil {
			rrows.Close()
			return nil, nil, err
		}
		r := resv{state: state}
		_ = json.Unmarshal(lines, &r.lines)
		reservations[id] = r
	}
	rrows.Close()

	// Each order against the money and the stock.
	confirmedLines := map[string]int64{}
	for _, o := range orders {
		var net int64
		charges := 0
		for _, x := range byOrder[o.id] {
			net += x.charged - x.refund
			charges += x.charges
		}
		r, hasR := reservations[o.id]
		switch o.status {
		case "confirmed":
			for _, l := range o.lines {
				confirmedLines[l.SKU] += l.Quantity
			}
			if charges != 1 || net != o.total {
				badf("order %s CONFIRMED (total %d) has %d charges at the payment service, %d net", o.id, o.total, charges, net)
			}
			if !hasR || r.state != "committed" {
				badf("order %s CONFIRMED but its stock reservation is %q", o.id, r.state)
			}
		case "cancelled":
			if net != 0 {
				badf("order %s CANCELLED (%s) with %d still taken", o.id, shortReason(o.reason), net)
			}
			if hasR && r.state != "released" {
				badf("order %s CANCELLED (%s) with its stock reservation %s", o.id, shortReason(o.reason), r.state)
			}
		}
	}
	heldLines := map[string]int64{}
	for id, r := range reservations {
		if r.state == "held" {
			for _, l := range r.lines {
				heldLines[l.SKU] += l.Quantity
			}
			if orders[id] == nil {
				badf("reservation %s held for no order", id)
			}
		}
	}

	// Stock.
	for _, it := range catalogue {
		row := stockRow{SKU: it.SKU, Initial: it.Stock, ConfirmedLines: confirmedLines[it.SKU], HeldLines: heldLines[it.SKU]}
		if err := invDB.QueryRowContext(ctx, `SELECT available, reserved, committed FROM items WHERE id = $1`, it.SKU).
			Scan(&row.Available, &row.Reserved, &row.Committed); err != nil {
			return nil, nil, fmt.Errorf("read item %s: %w", it.SKU, err)
		}
		b.Stock = append(b.Stock, row)
		if row.Initial-row.ConfirmedLines != row.Available+row.HeldLines {
			badf("stock of %s: initial %d - confirmed lines %d = %d, but available %d + held %d = %d",
				it.SKU, row.Initial, row.ConfirmedLines, row.Initial-row.ConfirmedLines, row.Available, row.HeldLines, row.Available+row.HeldLines)
		}
		if row.Committed != row.ConfirmedLines || row.Reserved != row.HeldLines {
			badf("stock of %s: committed %d, reserved %d; the confirmed orders bought %d and the held reservations hold %d",
				it.SKU, row.Committed, row.Reserved, row.ConfirmedLines, row.HeldLines)
		}
		if row.HeldLines > 0 {
			badf("stock of %s: %d still held after the recovery window", it.SKU, row.HeldLines)
		}
	}
	if b.Payment.NetMinor != b.Orders.ConfirmedMinor {
		badf("books: the payment ledger holds %d net, the confirmed orders total %d", b.Payment.NetMinor, b.Orders.ConfirmedMinor)
	}
	bad = append(bad, p.providerBooks(ctx, payDB, b)...)
	return b, bad, nil
}

// checkAccounts logs in every acknowledged account: each must log in,
// into itself.
func (tr *traffic) checkAccounts(ctx context.Context) (checked int, bad []string) {
	tr.mu.Lock()
	all := append(append([]*account(nil), tr.accounts...), tr.unsure...)
	nSure := len(tr.accounts)
	tr.mu.Unlock()
	type result struct {
		i   int
		err string
	}
	results := make(chan result, len(all))
	sem := make(chan struct{}, 4)
	for i, a := range all {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			var last error
			for attempt := range 5 {
				cctx, cancel := context.WithTimeout(ctx, callTimeout)
				res, err := tr.users.Login(cctx, connect.NewRequest(&userv1.LoginRequest{Email: a.Email, Password: a.Password}))
				cancel()
				if err == nil {
					if i < nSure && res.Msg.GetUser().GetId() != a.ID {
						results <- result{i, fmt.Sprintf("account %s (%s) logs into account %s", a.ID, a.Email, res.Msg.GetUser().GetId())}
						return
					}
					if res.Msg.GetUser().GetEmail() != a.Email {
						results <- result{i, fmt.Sprintf("account %s logs into the account of %s", a.Email, res.Msg.GetUser().GetEmail())}
						return
					}
					results <- result{i, ""}
					return
				}
				last = err
				if !retryable(connect.CodeOf(err)) {
					break
				}
				time.Sleep(time.Duration(attempt+1) * 300 * time.Millisecond)
			}
			results <- result{i, fmt.Sprintf("acknowledged account %s (%s) cannot log in: %v", all[i].ID, all[i].Email, last)}
		}()
	}
	for range all {
		r := <-results
		if r.err != "" {
			bad = append(bad, r.err)
		}
	}
	sort.Strings(bad)
	return len(all), bad
}

func shortReason(r string) string {
	lower := strings.ToLower(r)
	switch {
	case strings.Contains(lower, "permission_denied"):
		step, _, _ := strings.Cut(r, ":")
		return step + ": permission_denied"
	case strings.Contains(lower, "declined"):
		return "payment declined"
	case strings.Contains(lower, "insufficient") || strings.Contains(lower, "out of stock"):
		return "out of stock"
	case r == "":
		return "(none)"
	}
	if len(r) > 60 {
		r = r[:60] + "..."
	}
	return r
}
