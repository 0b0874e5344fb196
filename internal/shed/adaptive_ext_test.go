package shed_test

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/config"
)

// scrape reads the value of series (a metric's name and labels) from the
// metrics of the server at url, as an operator's scrape does.
func scrape(t *testing.T, url, series string) float64 {
	t.Helper()
	res, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	lines := bufio.NewScanner(res.Body)
	for lines.Scan() {
		if v, ok := strings.CutPrefix(lines.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no %s on %s/metrics", series, url)
	return 0
}

// TestConcurrencyLimitFollowsLatency: the concurrency limit adapts to the
// latency of the calls the server answers. Under a steady load of 10
// callers it climbs to its maximum (50) while calls take 10ms; it falls
// when they take 300ms, which is what a saturated server looks like; and
// it climbs again once they are fast again. The limiter revises the limit
// once a second at most, so this takes some seconds; it runs alone, as
// other tests' load would blur the latencies it compares (on a loaded
// machine a 10ms call takes several times that already).
func TestConcurrencyLimitFollowsLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("the limit moves once a second at most: seconds of load")
	}
	const fast, slow = 10 * time.Millisecond, 300 * time.Millisecond
	var latency atomic.Int64
	latency.Store(int64(fast))
	_, c, url := serveHeld(t, config.Shedding{Enabled: true, MinLimit: 1, MaxLimit: 50, InitialLimit: 47, LowPriorityShare: 0.5, RetryAfter: time.Second},
		func(ctx context.Context) {
			select { // the work, as long as the latency of the moment
			case <-time.After(time.Duration(latency.Load())):
			case <-ctx.Done():
			}
		})
	// The load: 10 callers, each calling again as soon as answered.
	stop := make(chan struct{})
	var callers sync.WaitGroup
	var failed atomic.Int64
	for range 10 {
		callers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := getUser(c, false); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	defer func() { close(stop); callers.Wait() }()

	// waitLimit polls the limit until ok(limit) holds, within a minute
	// (each revision takes a second or more, and a loaded machine slows
	// the callers down), and returns it.
	waitLimit := func(what string, ok func(int) bool) int {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			limit := int(scrape(t, url, "keel_server_concurrency_limit"))
			if ok(limit) {
				return limit
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s; the limit is %d (%d calls failed)", what, limit, failed.Load())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	start := time.Now()
	top := waitLimit("the limit climbs to its maximum while calls are fast", func(l int) bool { return l == 50 })
	t.Logf("%v: limit %d with calls of %v", time.Since(start).Round(time.Millisecond), top, fast)

	latency.Store(int64(slow))
	fell := waitLimit("the limit falls as calls slow down", func(l int) bool { return l <= top-3 })
	t.Logf("%v: limit %d with calls of %v", time.Since(start).Round(time.Millisecond), fell, slow)

	latency.Store(int64(fast))
	low := fell
	recovered := waitLimit("the limit climbs again once calls are fast", func(l int) bool {
		low = min(low, l)
		return l >= low+2
	})
	t.Logf("%v: limit %d (down to %d) with calls of %v again", time.Since(start).Round(time.Millisecond), recovered, low, fast)
	if n := failed.Load(); n != 0 {
		t.Errorf("%d calls failed: the limit never fell below the 10 callers", n)
	}
}
