// Package chaos is `keel drill`: a Jepsen-style chaos drill of the whole
// platform. It brings Keel up the production way on loopback (a Consul
// agent, PostgreSQL with a database per service, Redis, several instances
// of every service as separate processes, the edge), drives open-loop
// client traffic through the edge, injects faults on a schedule drawn
// from a seed (SIGKILLs, a service down, Redis killed and paused, Consul
// stopped, network latency, resets and a blackhole through toxiproxy,
// the edge's own fault injection through Consul KV), waits for the
// platform to recover and reconciles what clients were told with the
// books of every service. Any discrepancy fails the drill.
package chaos

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Options say how a drill runs.
type Options struct {
	// Duration of the traffic, faults included (the start-up and the
	// recovery come on top).
	Duration time.Duration
	// Seed draws the fault schedule and the traffic.
	Seed uint64
	// Rate is orders placed per second; reads, logins and registrations
	// follow in proportion.
	Rate float64
	// Instances of every service (at least 2).
	Instances int
	// MaxFaults bounds the schedule (0: as many as fit).
	MaxFaults int
	// Recovery is how long the platform may take, once the faults and
	// the traffic have stopped, to finish every saga and close every
	// breaker.
	Recovery time.Duration
	// Dir keeps the drill's files (binaries, logs, data) when set;
	// otherwise they go to a temporary directory removed at the end.
	Dir string
	// Log receives progress lines.
	Log io.Writer
	// Sabotage, for checking the drill itself, breaks the books in the
	// databases before the reconciliation: lost-order, double-charge or
	// lost-account, or several separated by commas (see sabotage).
	Sabotage string
}

func (o *Options) defaults() {
	if o.Duration <= 0 {
		o.Duration = 90 * time.Second
	}
	if o.Rate <= 0 {
		o.Rate = 5
	}
	if o.Instances < 2 {
		o.Instances = 2
	}
	if o.Recovery <= 0 {
		o.Recovery = 60 * time.Second
	}
	if o.MaxFaults <= 0 {
		o.MaxFaults = 1000
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
}

// Run runs a drill and returns its report. The report's Discrepancies
// say whether it passed; an error means the drill itself could not run.
func Run(ctx context.Context, opts Options) (*Report, error) {
	opts.defaults()
	dir, keep := opts.Dir, opts.Dir != ""
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "keel-drill-"); err != nil {
			return nil, err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	p, err := bringUp(ctx, opts, dir, opts.Log)
	defer func() {
		if p != nil {
			p.tearDown(keep)
		}
	}()
	if err != nil {
		return nil, err
	}

	rep := &Report{Seed: opts.Seed, Rate: opts.Rate, Instances: opts.Instances, DurationS: opts.Duration.Seconds(), Dir: dir}
	tr := newTraffic(p.edge.addr, opts.Seed, opts.Rate)
	if err := tr.setupUsers(ctx, 12); err != nil {
		return nil, err
	}

	// Metrics of every process, every few seconds, for the report.
	sc := newScraper(p)
	scrapeCtx, stopScrape := context.WithCancel(ctx)
	var scrapeWG sync.WaitGroup
	scrapeWG.Add(1)
	go func() { defer scrapeWG.Done(); sc.loop(scrapeCtx, 2*time.Second) }()
	defer func() { stopScrape(); scrapeWG.Wait() }()

	warm := max(8*time.Second, opts.Duration/10)
	after := max(10*time.Second, opts.Duration/10)
	schedule := plan(opts.Seed, warm, opts.Duration-after, opts.MaxFaults, opts.Instances)
	rep.Start = time.Now()
	rep.LoadAvg = append(rep.LoadAvg, loadAvg())
	p.logf("traffic at %.1f orders/s for %v; %d faults planned (seed %d)", opts.Rate, opts.Duration, len(schedule), opts.Seed)

	trafficCtx, stopTraffic := context.WithTimeout(ctx, opts.Duration)
	defer stopTraffic()
	var trafficWG sync.WaitGroup
	trafficWG.Add(1)
	go func() { defer trafficWG.Done(); tr.run(trafficCtx) }()

	for i := range schedule {
		f := &schedule[i]
		select {
		case <-trafficCtx.Done():
		case <-time.After(time.Until(rep.Start.Add(f.At))):
		}
		if trafficCtx.Err() != nil {
			break
		}
		p.inject(ctx, f)
		f.StartS, f.EndS = f.Start.Sub(rep.Start).Seconds(), f.End.Sub(rep.Start).Seconds()
		p.logf("t=%5.1fs..%5.1fs %-15s %s%s", f.StartS, f.EndS, f.Kind, f.Detail, errSuffix(f.Error))
		rep.Faults = append(rep.Faults, *f)
	}
	trafficWG.Wait()
	rep.TrafficEnd = time.Now()
	rep.LoadAvg = append(rep.LoadAvg, loadAvg())
	p.logf("traffic stopped; waiting for the calls in flight")
	tr.wait()

	// Recovery: a light probe load (so breakers can probe and close)
	// while the sagas finish.
	p.logf("waiting up to %v for recovery (sagas finished, breakers closed)", opts.Recovery)
	recBegan := time.Now()
	probe := newTraffic(p.edge.addr, opts.Seed+1, max(1, opts.Rate/5))
	probe.accounts = tr.accounts
	probe.acked = tr.acked
	probeCtx, stopProbe := context.WithCancel(ctx)
	var probeWG sync.WaitGroup
	probeWG.Add(1)
	go func() { defer probeWG.Done(); probe.run(probeCtx) }()
	orderDB, err := openDB(p, "order")
	if err != nil {
		stopProbe()
		return nil, err
	}
	defer orderDB.Close()
	var open []string
	unfinished := -1
	for time.Since(recBegan) < opts.Recovery {
		unfinished, _ = unfinishedSagas(ctx, orderDB)
		open = sc.openBreakers(ctx)
		if unfinished == 0 && len(open) == 0 {
			break
		}
		time.Sleep(time.Second)
	}
	stopProbe()
	probeWG.Wait()
	probe.wait()
	// The probe's own orders finish too.
	for settle := time.Now(); time.Since(settle) < 20*time.Second; time.Sleep(500 * time.Millisecond) {
		if unfinished, _ = unfinishedSagas(ctx, orderDB); unfinished == 0 {
			break
		}
	}
	rep.RecoveryS = time.Since(recBegan).Seconds()
	rep.LoadAvg = append(rep.LoadAvg, loadAvg())
	rep.BreakersOpenAtEnd = open
	if len(open) > 0 {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("breakers still not closed after the recovery window: %s", strings.Join(open, ", ")))
	}
	p.logf("recovery: %.1fs, %d sagas unfinished, %d breakers not closed", rep.RecoveryS, unfinished, len(open))
	stopScrape()
	scrapeWG.Wait()
	sc.final(ctx)

	// Probe traffic joins the books (its orders are real orders).
	tr.mu.Lock()
	tr.orders = append(tr.orders, probe.orders...)
	tr.wrongs = append(tr.wrongs, probe.wrongs...)
	tr.accounts = append(tr.accounts[:len(tr.accounts):len(tr.accounts)], probe.accounts[len(tr.accounts):]...)
	tr.mu.Unlock()
	for _, kind := range strings.FieldsFunc(opts.Sabotage, func(r rune) bool { return r == ',' }) {
		if err := sabotage(ctx, kind, p); err != nil {
			return nil, err
		}
	}

	b, bad, err := p.reconcile(ctx, tr)
	if err != nil {
		return nil, err
	}
	rep.Books = b
	rep.Discrepancies = append(rep.Discrepancies, bad...)
	rep.Discrepancies = append(rep.Discrepancies, tr.wrongs...)
	n, accBad := tr.checkAccounts(ctx)
	rep.AccountsChecked = n
	rep.Discrepancies = append(rep.Discrepancies, accBad...)
	rep.build(tr, sc)
	rep.Discrepancies = append(rep.Discrepancies, rep.spreadFailures()...)
	sort.Strings(rep.Warnings)
	if tr.saturated.Load() > 0 {
		rep.Warnings = append(rep.Warnings, fmt.Sprintf("%d arrivals dropped: %d calls were already in flight", tr.saturated.Load(), maxInflight))
	}
	return rep, nil
}

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	return " (error: " + e + ")"
}

// sabotage breaks the platform's books on purpose, in its databases,
// after the drill and before the reconciliation, to show that the
// reconciler catches what it should:
//   - lost-order: one order acknowledged CONFIRMED is turned CANCELLED;
//   - double-charge: one charge is written to the ledger twice;
//   - lost-account: one acknowledged account is deleted;
//   - provider-charge: the payment provider's books get a charge the
//     ledger does not hold (money taken and never recorded).
func sabotage(ctx context.Context, kind string, p *platform) error {
	var db, q string
	switch kind {
	case "lost-order":
		db, q = "order", `UPDATE orders SET status = 'cancelled' WHERE id = (SELECT id FROM orders WHERE status = 'confirmed' ORDER BY id LIMIT 1)`
	case "double-charge":
		db, q = "payment", `INSERT INTO ledger_entries (id, kind, idempotency_key, payment_id, amount_minor, currency, reason, request_hash, create_time)
			SELECT gen_random_uuid(), kind, idempotency_key || '-again', payment_id, amount_minor, currency, reason, request_hash, create_time
			FROM ledger_entries WHERE kind = 'charge' ORDER BY idempotency_key LIMIT 1`
	case "lost-account":
		db, q = "user", `DELETE FROM users WHERE id = (SELECT id FROM users ORDER BY email DESC LIMIT 1)`
	case "provider-charge":
		return sabotageProvider(ctx, p)
	default:
		return fmt.Errorf("unknown sabotage %q (lost-order, double-charge, lost-account, provider-charge)", kind)
	}
	conn, err := openDB(p, db)
	if err != nil {
		return err
	}
	defer conn.Close()
	res, err := conn.ExecContext(ctx, q)
	if err != nil {
		return fmt.Errorf("sabotage %s: %w", kind, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("sabotage %s changed %d rows", kind, n)
	}
	p.logf("sabotage %s: done in the %s database", kind, db)
	return nil
}
