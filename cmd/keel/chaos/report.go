package chaos

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// loadAvg returns the machine's load averages, or "?".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func openDB(p *platform, name string) (*sql.DB, error) { return sql.Open("pgx", p.pg.dsn(name)) }

// Report is what a drill found, for people (Print) and machines (JSON).
type Report struct {
	Seed       uint64    `json:"seed"`
	Rate       float64   `json:"rate_orders_per_s"`
	Instances  int       `json:"instances_per_service"`
	DurationS  float64   `json:"duration_s"`
	Dir        string    `json:"dir"`
	Start      time.Time `json:"start"`
	TrafficEnd time.Time `json:"traffic_end"`

	Faults       []fault                         `json:"faults"`
	Timeline     []bucket                        `json:"timeline"`
	BucketS      float64                         `json:"bucket_s"`
	Availability map[string]map[string]*kindStat `json:"availability"` // phase -> kind
	Orders       map[string]int                  `json:"orders_by_client_outcome"`
	OrderRetries int                             `json:"order_retries"`
	Metrics      map[string]float64              `json:"metrics"`
	BreakerOpens map[string]int                  `json:"breaker_openings"` // process -> openings seen
	Spread       []spreadRow                     `json:"spread"`
	Books        *books                          `json:"books"`

	AccountsChecked   int      `json:"accounts_checked"`
	RecoveryS         float64  `json:"recovery_s"`
	BreakersOpenAtEnd []string `json:"breakers_open_at_end"`
	LoadAvg           []string `json:"load_average"` // /proc/loadavg at the start of traffic, its end, and after recovery
	Warnings          []string `json:"warnings"`
	Discrepancies     []string `json:"discrepancies"`
}

type bucket struct {
	T     float64                   `json:"t_s"`
	Codes map[string]map[string]int `json:"codes"` // kind -> code -> calls
}

type kindStat struct {
	Calls int     `json:"calls"`
	OK    int     `json:"ok"`
	Pct   float64 `json:"availability_pct"`
	P50   float64 `json:"p50_ms"`
	P99   float64 `json:"p99_ms"`
	lat   []time.Duration
}

type spreadRow struct {
	Fault string  `json:"fault"`
	Kind  string  `json:"kind"`
	Calls int     `json:"calls"`
	OK    int     `json:"ok"`
	Pct   float64 `json:"availability_pct"`
	Codes string  `json:"failed_codes,omitempty"`
	Pass  bool    `json:"pass"`
}

// spreadThreshold is the availability calls must keep while a fault
// that none of the services they need has lasts.
const spreadThreshold = 99.0

// answered reports whether a call got the platform's answer: a success,
// or a refusal that is the answer (an order cancelled, an account that
// an earlier attempt created).
func answered(c call) bool {
	switch c.Code {
	case "ok":
		return true
	case "failed_precondition":
		return c.Kind == kindOrder
	case "already_exists":
		return c.Kind == kindRegister && c.Attempt > 1
	}
	return false
}

// Passed reports whether the drill found no discrepancy.
func (r *Report) Passed() bool { return len(r.Discrepancies) == 0 }

func (r *Report) build(tr *traffic, sc *scraper) {
	calls := tr.snapshot()
	span := r.TrafficEnd.Sub(r.Start)
	step := 10 * time.Second
	if span > 5*time.Minute {
		step = time.Minute
	}
	r.BucketS = step.Seconds()
	n := int(span/step) + 1
	r.Timeline = make([]bucket, n)
	for i := range r.Timeline {
		r.Timeline[i] = bucket{T: float64(i) * step.Seconds(), Codes: map[string]map[string]int{}}
	}
	var firstFault, lastFault time.Time
	if len(r.Faults) > 0 {
		firstFault, lastFault = r.Faults[0].Start, r.Faults[len(r.Faults)-1].End
	}
	phase := func(t time.Time) string {
		switch {
		case firstFault.IsZero() || t.Before(firstFault):
			return "before"
		case t.After(lastFault):
			return "after"
		}
		return "during"
	}
	r.Availability = map[string]map[string]*kindStat{"before": {}, "during": {}, "after": {}}
	for _, c := range calls {
		if c.Start.After(r.TrafficEnd) {
			continue
		}
		i := int(c.Start.Sub(r.Start) / step)
		if i >= 0 && i < n {
			b := r.Timeline[i]
			if b.Codes[c.Kind] == nil {
				b.Codes[c.Kind] = map[string]int{}
			}
			b.Codes[c.Kind][c.Code]++
		}
		ph := r.Availability[phase(c.Start)]
		st := ph[c.Kind]
		if st == nil {
			st = &kindStat{}
			ph[c.Kind] = st
		}
		st.Calls++
		if answered(c) {
			st.OK++
		}
		st.lat = append(st.lat, c.Latency)
	}
	for _, ph := range r.Availability {
		for _, st := range ph {
			st.Pct = 100 * float64(st.OK) / float64(max(st.Calls, 1))
			slices.Sort(st.lat)
			st.P50, st.P99 = ms(quantile(st.lat, 0.5)), ms(quantile(st.lat, 0.99))
		}
	}

	r.Orders = map[string]int{}
	tr.mu.Lock()
	for _, o := range tr.orders {
		out := o.Outcome
		if out == "" {
			out = "no answer"
		}
		r.Orders[out]++
		r.OrderRetries += o.Attempts - 1
	}
	tr.mu.Unlock()

	r.Metrics, r.BreakerOpens = sc.totals()

	// Spread: calls that need none of a fault's services.
	for _, f := range r.Faults {
		for _, kind := range kinds {
			if slices.Contains(f.Kinds, kind) || slices.ContainsFunc(needs[kind], func(s string) bool { return slices.Contains(f.Affects, s) }) {
				continue
			}
			row := spreadRow{Fault: fmt.Sprintf("%s %s @%.0fs", f.Kind, f.Target, f.StartS), Kind: kind}
			codes := map[string]int{}
			for _, c := range calls {
				if c.Kind != kind || c.Start.Before(f.Start) || c.Start.After(f.End) {
					continue
				}
				row.Calls++
				if answered(c) {
					row.OK++
				} else {
					codes[c.Code]++
				}
			}
			if row.Calls == 0 {
				continue
			}
			row.Pct = 100 * float64(row.OK) / float64(row.Calls)
			row.Pass = row.Pct >= spreadThreshold
			row.Codes = codeList(codes)
			r.Spread = append(r.Spread, row)
		}
	}
}

func (r *Report) spreadFailures() []string {
	var out []string
	for _, s := range r.Spread {
		if !s.Pass {
			f := r.faultNamed(s.Fault)
			baseline := "no calls"
			if st := r.Availability["before"][s.Kind]; st != nil {
				baseline = fmt.Sprintf("%.1f%%", st.Pct)
			}
			out = append(out, fmt.Sprintf("fault spread: during %s (%s), %s calls, which need none of %v, succeeded %.1f%% (%d of %d; %s; before any fault: %s)",
				s.Fault, f.Detail, s.Kind, append(append([]string(nil), f.Affects...), f.Kinds...), s.Pct, s.OK, s.Calls, s.Codes, baseline))
		}
	}
	return out
}

func (r *Report) faultNamed(name string) fault {
	for _, f := range r.Faults {
		if fmt.Sprintf("%s %s @%.0fs", f.Kind, f.Target, f.StartS) == name {
			return f
		}
	}
	return fault{}
}

func codeList(codes map[string]int) string {
	var parts []string
	for c, n := range codes {
		parts = append(parts, fmt.Sprintf("%s %d", c, n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(q*float64(len(sorted))))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// WriteJSON writes the report as JSON to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Print writes the report for a person to read.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "\n=== Keel chaos drill: seed %d, %.0fs of traffic at %.1f orders/s, %d instances per service ===\n",
		r.Seed, r.DurationS, r.Rate, r.Instances)

	fmt.Fprintf(w, "\nFaults injected (%d; times from the start of traffic):\n", len(r.Faults))
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, f := range r.Faults {
		fmt.Fprintf(tw, "  %6.1fs\t%6.1fs\t%s\t%s%s\n", f.StartS, f.EndS, f.Kind, f.Detail, errSuffix(f.Error))
	}
	tw.Flush()

	fmt.Fprintf(w, "\nCalls per %.0fs by kind: answered/all, then the failures by code:\n", r.BucketS)
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  t\t%s\tfailures\n", strings.Join(kinds, "\t"))
	for _, b := range r.Timeline {
		var cells []string
		fails := map[string]int{}
		for _, k := range kinds {
			ok, all := 0, 0
			for code, n := range b.Codes[k] {
				all += n
				if answered(call{Kind: k, Code: code, Attempt: 2}) {
					ok += n
				} else {
					fails[k+":"+code] += n
				}
			}
			cells = append(cells, fmt.Sprintf("%d/%d", ok, all))
		}
		fmt.Fprintf(tw, "  %.0fs\t%s\t%s\n", b.T, strings.Join(cells, "\t"), codeList(fails))
	}
	tw.Flush()

	fmt.Fprintf(w, "\nAvailability and latency as clients saw them (every attempt), before / during / after the faults:\n")
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  kind\tbefore\tduring\tafter\tp50 ms b/d/a\tp99 ms b/d/a\n")
	for _, k := range kinds {
		var av, p50, p99 []string
		for _, ph := range []string{"before", "during", "after"} {
			st := r.Availability[ph][k]
			if st == nil {
				av, p50, p99 = append(av, "-"), append(p50, "-"), append(p99, "-")
				continue
			}
			av = append(av, fmt.Sprintf("%.2f%% of %d", st.Pct, st.Calls))
			p50 = append(p50, fmt.Sprintf("%.0f", st.P50))
			p99 = append(p99, fmt.Sprintf("%.0f", st.P99))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", k, av[0], av[1], av[2], strings.Join(p50, "/"), strings.Join(p99, "/"))
	}
	tw.Flush()

	fmt.Fprintf(w, "\nOrders by what the client was told: %s; client retries of orders: %d\n", mapList(r.Orders), r.OrderRetries)
	fmt.Fprintf(w, "Platform metrics (summed over processes and restarts): %s\n", mapListF(r.Metrics))
	fmt.Fprintf(w, "Breaker openings seen (scraped every 2s, per process): %s\n", mapList(r.BreakerOpens))

	fmt.Fprintf(w, "\nSpread: calls needing none of a fault's services, while it lasted (threshold %.0f%%):\n", spreadThreshold)
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, s := range r.Spread {
		mark := "ok"
		if !s.Pass {
			mark = "SPREAD"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%.1f%% of %d\t%s\t%s\n", s.Fault, s.Kind, s.Pct, s.Calls, mark, s.Codes)
	}
	tw.Flush()

	if b := r.Books; b != nil {
		fmt.Fprintf(w, "\nThe books side by side (after %.1fs of recovery):\n", r.RecoveryS)
		fmt.Fprintf(w, "  orders:          %d confirmed (total %d), %d cancelled (%s), %d pending\n",
			b.Orders.Confirmed, b.Orders.ConfirmedMinor, b.Orders.Cancelled, mapList(b.Orders.CancelReasons), b.Orders.Pending)
		fmt.Fprintf(w, "  payment ledger:  %d payments, %d charges %d - %d refunds %d = net %d\n",
			b.Payment.Payments, b.Payment.Charges, b.Payment.ChargedMinor, b.Payment.Refunds, b.Payment.RefundMinor, b.Payment.NetMinor)
		fmt.Fprintf(w, "  provider:        %s\n", b.Provider)
		fmt.Fprintf(w, "  (three books: the confirmed orders' total, the ledger's net and the provider's net must be one number)\n")
		fmt.Fprintf(w, "  sagas:           %s\n", mapList(b.Sagas))
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "  stock\tinitial\tconfirmed lines\tavailable\theld\treserved\tcommitted\n")
		for _, s := range b.Stock {
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%d\t%d\t%d\t%d\n", s.SKU, s.Initial, s.ConfirmedLines, s.Available, s.HeldLines, s.Reserved, s.Committed)
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\nAccounts acknowledged and logged into at the end: %d\n", r.AccountsChecked)
	fmt.Fprintf(w, "Machine load average (1m 5m 15m) at the start of traffic, its end, after recovery: %s\n", strings.Join(r.LoadAvg, " | "))
	for _, s := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", s)
	}
	if r.Passed() {
		fmt.Fprintf(w, "\nPASS: nothing acknowledged was lost or done twice, the books add up, no fault spread.\n")
		return
	}
	fmt.Fprintf(w, "\nFAIL: %d discrepancies:\n", len(r.Discrepancies))
	for _, d := range r.Discrepancies {
		fmt.Fprintf(w, "  - %s\n", d)
	}
}

func mapList(m map[string]int) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func mapListF(m map[string]float64) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s %.0f", k, v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// scraper keeps the last /metrics of every process incarnation.
type scraper struct {
	p     *platform
	mu    sync.Mutex
	last  map[string]map[string]float64 // "proc#incarnation" -> samples
	prevB map[string]float64            // "proc|series" -> breaker state
	opens map[string]int
}

func newScraper(p *platform) *scraper {
	return &scraper{p: p, last: map[string]map[string]float64{}, prevB: map[string]float64{}, opens: map[string]int{}}
}

func (s *scraper) loop(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		s.once(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (s *scraper) final(ctx context.Context) { s.once(ctx) }

func (s *scraper) once(ctx context.Context) {
	var wg sync.WaitGroup
	for _, pr := range s.p.allProcs() {
		if !pr.running() {
			continue
		}
		pr.mu.Lock()
		key, paused := fmt.Sprintf("%s#%d", pr.name(), pr.incarnation), pr.paused
		pr.mu.Unlock()
		if paused {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			m, err := scrape(ctx, pr.addr)
			if err != nil {
				return
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			s.last[key] = m
			for series, v := range m {
				if !strings.HasPrefix(series, "keel_client_breaker_state") {
					continue
				}
				k := pr.name() + "|" + series
				if v == 2 && s.prevB[k] != 2 {
					s.opens[pr.name()]++
				}
				s.prevB[k] = v
			}
		}()
	}
	wg.Wait()
}

// openBreakers scrapes now and lists the breakers not closed.
func (s *scraper) openBreakers(ctx context.Context) []string {
	s.once(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, pr := range s.p.allProcs() {
		pr.mu.Lock()
		key := fmt.Sprintf("%s#%d", pr.name(), pr.incarnation)
		pr.mu.Unlock()
		for series, v := range s.last[key] {
			if strings.HasPrefix(series, "keel_client_breaker_state") && v != 0 {
				out = append(out, pr.name()+" "+strings.TrimPrefix(series, "keel_client_breaker_state"))
			}
		}
	}
	sort.Strings(out)
	return out
}

// reported are the counters the report sums.
var reported = []string{
	"keel_client_retries_total", "keel_client_retry_budget_exhausted_total", "keel_client_throttled_total",
	"keel_client_panic_picks_total", "keel_client_hedges_total", "keel_server_shed_total", "keel_bulkhead_refused_total",
	"keel_edge_faults_injected_total", "keel_edge_rate_limited_total", "keel_cache_redis_errors_total",
}

func (s *scraper) totals() (map[string]float64, map[string]int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]float64{}
	for _, m := range s.last {
		for series, v := range m {
			name, _, _ := strings.Cut(series, "{")
			if slices.Contains(reported, name) {
				out[strings.TrimPrefix(strings.TrimSuffix(name, "_total"), "keel_")] += v
			}
		}
	}
	opens := map[string]int{}
	for k, v := range s.opens {
		opens[k] = v
	}
	return out, opens
}
