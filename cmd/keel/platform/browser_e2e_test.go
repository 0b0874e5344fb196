package platform_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/keelplatform/keel/cmd/keel/platform"
)

// webDir is the storefront page's package (web/), relative to this package.
const webDir = "../../../web"

// browserWait bounds each wait for the page to reach a state: generous, for
// a loaded machine; a page that works gets there in well under a second.
const browserWait = 30 * time.Second

// TestBrowserStorefrontPlacesAnOrder drives the storefront page (web/) in
// headless Chromium the way a shopper does: the page, served from an
// origin of its own, lists the demo catalogue through the edge over
// gRPC-Web (cross-origin, so through the edge's CORS answers); the
// shopper registers through the form, picks two mugs and a t-shirt by
// clicking, places the order, and the page shows the storefront's order
// view: confirmed, the lines with their items' names, the total, the
// payment and the buyer's name, nothing degraded. A login with a wrong
// password then shows unauthenticated on the page. Screenshots go to the
// test artifacts folder.
func TestBrowserStorefrontPlacesAnOrder(t *testing.T) {
	chromium := findChromium(t)
	page := servePage(t)
	edge, shop := startBrowserShop(t, nil)
	b := openBrowser(t, chromium)
	pageURL := page + "?edge=" + url.QueryEscape(edge)
	start := time.Now()
	b.do("load the page", chromedp.Navigate(pageURL))
	if got := b.text("#edge"); got != edge {
		t.Fatalf("page calls %q, want the edge %q", got, edge)
	}

	// The catalogue: every demo item, with its price and stock.
	b.await("the catalogue", "#items:not([hidden]) [data-testid=item]")
	prices := map[string]int64{}
	for _, it := range platform.DemoItems() {
		prices[it.SKU] = it.PriceMinor
		row := fmt.Sprintf(`[data-testid=item][data-sku=%q] `, it.SKU)
		got := [3]string{b.text(row + "[data-testid=item-name]"), b.text(row + "[data-testid=item-price]"), b.text(row + "[data-testid=item-available]")}
		want := [3]string{it.Name, pageMoney(it.PriceMinor), strconv.FormatInt(it.Stock, 10)}
		if got != want {
			t.Errorf("catalogue row %s: %q, want %q", it.SKU, got, want)
		}
	}
	if n := b.count("[data-testid=item]"); n != len(prices) {
		t.Errorf("catalogue lists %d items, want the %d demo items", n, len(prices))
	}

	// Register and log in through the form.
	email := fmt.Sprintf("shopper-%d@example.com", time.Now().UnixNano())
	b.do("fill in the account form",
		chromedp.SendKeys(chromedp.ID("email"), email),
		chromedp.SendKeys(chromedp.ID("password"), "correct horse"),
		chromedp.SendKeys(chromedp.ID("display-name"), "Browser Shopper"),
		chromedp.Click(chromedp.ID("register")),
	)
	b.await("the login", "#session[data-user-id]")
	if got := b.text("#session"); got != "Logged in as Browser Shopper ("+email+")." {
		t.Errorf("session shows %q", got)
	}

	// Pick two mugs and a t-shirt, and place the order.
	basket := map[string]int64{"KEEL-MUG": 2, "KEEL-TEE": 1}
	var total int64
	for sku, n := range basket {
		total += prices[sku] * n
		for range n {
			b.do("pick "+sku, chromedp.Click(chromedp.CSS(fmt.Sprintf("[data-testid=more-%s]", sku))))
		}
		b.await("the quantity of "+sku, fmt.Sprintf("#qty-%s", sku), textIs(strconv.FormatInt(n, 10)))
	}
	b.await("the basket's total", "#basket-total", textIs(pageMoney(total)))
	b.do("place the order",
		chromedp.WaitEnabled(chromedp.ID("place-order")),
		chromedp.Click(chromedp.ID("place-order")),
	)
	b.await("the order view", `#order-view[data-status=CONFIRMED]`)
	// A part the storefront could not fetch within its deadline (a loaded
	// machine) is marked degraded on the page; the shopper may refresh,
	// and the test does until the view is whole.
	for attempt := 1; b.attr("#order-view", "data-degraded") != ""; attempt++ {
		t.Logf("order view degraded %q (badges: %q); refreshing", b.attr("#order-view", "data-degraded"), b.text("#degraded"))
		if attempt == 5 {
			b.fail("order view still degraded after %d refreshes", attempt-1)
		}
		renders := b.attr("#order-view", "data-renders")
		b.do("refresh the order view", chromedp.Click(chromedp.ID("order-refresh")))
		b.await("the refreshed order view", fmt.Sprintf(`#order-view:not([data-renders=%q])`, renders))
	}

	// The order view, as the storefront returned it.
	if got := b.attr("#order-total", "data-amount-minor") + " " + b.attr("#order-total", "data-currency"); got != fmt.Sprintf("%d EUR", total) {
		t.Errorf("order total %q, want %d EUR", got, total)
	}
	if got := b.text("#order-total"); got != pageMoney(total) {
		t.Errorf("order total shows %q, want %q", got, pageMoney(total))
	}
	if b.text("#order-id") == "" {
		t.Error("order view shows no order id")
	}
	for sku, n := range basket {
		line := fmt.Sprintf(`[data-testid=order-line][data-sku=%q] `, sku)
		got := [2]string{b.text(line + "[data-testid=order-line-name]"), b.text(line + "[data-testid=order-line-quantity]")}
		if want := [2]string{demoItem(t, sku).Name, strconv.FormatInt(n, 10)}; got != want {
			t.Errorf("order line %s: %q, want %q", sku, got, want)
		}
	}
	if n := b.count("[data-testid=order-line]"); n != len(basket) {
		t.Errorf("order view has %d lines, want %d", n, len(basket))
	}
	if got := b.text("#payment"); !strings.HasPrefix(got, pageMoney(total)+", CAPTURED (") {
		t.Errorf("payment shows %q, want %s captured", got, pageMoney(total))
	}
	if got := b.text("#buyer"); got != "Browser Shopper" {
		t.Errorf("buyer shows %q", got)
	}
	// The page lists the catalogue again: the stock went down.
	for sku, n := range basket {
		b.await("the new stock of "+sku, fmt.Sprintf(`[data-sku=%q] [data-testid=item-available]`, sku), textIs(strconv.FormatInt(demoItem(t, sku).Stock-n, 10)))
	}
	b.screenshot("storefront-order.png")

	// The payment service goes away: the order view still comes, with
	// its payment marked unavailable and the rest whole.
	if err := shop.StopService("payment"); err != nil {
		t.Fatalf("stop the payment service: %v", err)
	}
	renders := b.attr("#order-view", "data-renders")
	b.do("refresh the order view", chromedp.Click(chromedp.ID("order-refresh")))
	b.await("the order view without its payment", fmt.Sprintf(`#order-view[data-degraded~=payment]:not([data-renders=%q])`, renders))
	if got := b.text("[data-testid=degraded-payment]"); !strings.Contains(got, "payment") {
		t.Errorf("the degraded payment is marked %q, want a badge naming the payment", got)
	}
	if got := b.attr("#order-view", "data-status"); got != "CONFIRMED" {
		t.Errorf("degraded order view shows status %q, want CONFIRMED", got)
	}
	if got := b.text("#order-total"); got != pageMoney(total) {
		t.Errorf("degraded order view shows total %q, want %q", got, pageMoney(total))
	}
	b.screenshot("storefront-order-degraded.png")

	// A wrong password: the page shows the code and the message.
	b.do("log in with a wrong password",
		chromedp.SetValue(chromedp.ID("password"), "wrong horse"),
		chromedp.Click(chromedp.ID("login")),
	)
	b.awaitError("unauthenticated")
	b.screenshot("storefront-login-error.png")
	t.Logf("order placed and shown in %v", time.Since(start).Round(time.Millisecond))

	// Every call went to the edge over gRPC-Web, the token with those that
	// need a login.
	calls := b.callsTo(edge)
	for _, want := range []string{
		"shop.inventory.v1.InventoryService/ListItems", "shop.user.v1.UserService/Register",
		"shop.user.v1.UserService/Login", "shop.order.v1.OrderService/PlaceOrder",
		"shop.storefront.v1.StorefrontService/GetOrderView",
	} {
		if !slices.ContainsFunc(calls, func(c pageCall) bool { return c.procedure == want }) {
			t.Errorf("the page never called %s; calls: %+v", want, calls)
		}
	}
	for _, c := range calls {
		if c.contentType != "application/grpc-web+proto" {
			t.Errorf("%s sent as %q, want gRPC-Web", c.procedure, c.contentType)
		}
		needsLogin := strings.HasPrefix(c.procedure, "shop.order.") || strings.HasPrefix(c.procedure, "shop.storefront.")
		if needsLogin != c.bearer {
			t.Errorf("%s sent a bearer token: %v, want %v", c.procedure, c.bearer, needsLogin)
		}
	}
}

// The control for the test above: from an origin the edge does not allow,
// the browser refuses to hand over the answers, so the page's success
// there is the CORS exchange working, not the browser skipping it.
func TestBrowserIsRefusedFromAnOriginTheEdgeDoesNotAllow(t *testing.T) {
	chromium := findChromium(t)
	page := servePage(t)
	edge, _ := startBrowserShop(t, map[string]string{"KEEL_ALLOWED_ORIGINS": `["https://shop.example"]`})
	b := openBrowser(t, chromium)
	b.do("load the page", chromedp.Navigate(page+"?edge="+url.QueryEscape(edge)))
	msg := b.awaitError("")
	if !strings.Contains(msg, "fetch") {
		t.Fatalf("listing the catalogue failed with %q, want a failed fetch", msg)
	}
	if got := b.text("#catalogue-status"); got != "The catalogue could not be listed." || b.count("[data-testid=item]") != 0 {
		t.Fatalf("catalogue status %q with %d items", got, b.count("[data-testid=item]"))
	}
	t.Logf("refused as it should be: %s", msg)
}

// startBrowserShop starts the platform with the demo catalogue and the test
// environment's settings, overridden by settings (environment variables),
// and returns the edge's URL.
func startBrowserShop(t *testing.T, settings map[string]string) (string, *platform.Platform) {
	t.Helper()
	for k, v := range settings {
		t.Setenv(k, v)
	}
	p, _ := startPlatform(t, platform.Options{Demo: true})
	return "http://" + p.EdgeAddr(), p
}

// findChromium returns the Chromium binary: $KEEL_CHROMIUM, or chromium on
// the PATH. Missing, the test fails: the gate installs it.
func findChromium(t *testing.T) string {
	t.Helper()
	name := os.Getenv("KEEL_CHROMIUM")
	if name == "" {
		name = "chromium"
	}
	bin, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("no Chromium (%v): run scripts/test-deps.sh, which installs Debian's chromium, or set KEEL_CHROMIUM", err)
	}
	return bin
}

// servePage serves the storefront page and its bundle, and nothing else
// of web/, on a loopback port of its own: an origin other than the edge's.
func servePage(t *testing.T) string {
	t.Helper()
	bundle := filepath.Join(webDir, "dist", "app.js")
	if _, err := os.Stat(bundle); err != nil {
		t.Fatalf("no browser bundle (%v): run `npm ci && npm run build` in web/ (scripts/test.sh does)", err)
	}
	files := http.FileServerFS(os.DirFS(webDir)) // "/" is index.html
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", files)
	mux.Handle("GET /dist/", files)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL + "/"
}

// testArtifactsDir is where the tests leave screenshots: $KEEL_TEST_ARTIFACTS,
// or test-artifacts/ at the repository's root (not committed).
func testArtifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("KEEL_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "..", "test-artifacts")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pageMoney writes cents as the page does: "49.00 EUR".
func pageMoney(minor int64) string { return fmt.Sprintf("%d.%02d EUR", minor/100, minor%100) }

// browserTab is one tab of a headless Chromium, with what the page logged
// and the requests it sent, for the test's checks and its failure
// reports.
type browserTab struct {
	t   *testing.T
	ctx context.Context

	mu       sync.Mutex
	logs     []string
	requests []*network.Request
}

// pageCall is one call the page sent.
type pageCall struct {
	procedure   string
	contentType string
	bearer      bool
}

// openBrowser starts Chromium headless and opens a tab; both close when
// the test ends.
func openBrowser(t *testing.T, chromium string) *browserTab {
	t.Helper()
	b := &browserTab{t: t}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // tests run as root, where the sandbox refuses to start
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.WindowSize(1000, 800),
	)
	// The whole session is bounded, on top of each wait's own bound.
	ctx, cancelTimeout := context.WithTimeout(context.Background(), 3*time.Minute)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	tabCtx, cancelTab := chromedp.NewContext(allocCtx,
		chromedp.WithErrorf(b.logf),
		chromedp.WithListener(b.listen),
	)
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		cancelTimeout()
	})
	b.ctx = tabCtx
	// The first action starts the browser, under the tab's own context:
	// the tab lives as long as the context of its first action.
	began := time.Now()
	if err := chromedp.Do(tabCtx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	t.Logf("chromium started in %v", time.Since(began).Round(time.Millisecond))
	return b
}

// logf keeps chromedp's own error reports with the page's log.
func (b *browserTab) logf(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.logs = append(b.logs, "chromedp: "+fmt.Sprintf(format, args...))
}

// listen keeps the page's console output, uncaught exceptions and
// requests; it runs on the tab's reading goroutine and must be quick.
func (b *browserTab) listen(ev any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		var parts []string
		for _, a := range ev.Args {
			if a.Value != nil {
				parts = append(parts, string(a.Value))
			} else {
				parts = append(parts, a.Description)
			}
		}
		b.logs = append(b.logs, "console."+string(ev.Type)+": "+strings.Join(parts, " "))
	case *runtime.EventExceptionThrown:
		msg := ev.ExceptionDetails.Text
		if ev.ExceptionDetails.Exception != nil {
			msg += " " + ev.ExceptionDetails.Exception.Description
		}
		b.logs = append(b.logs, "exception: "+msg)
	case *network.EventRequestWillBeSent:
		b.requests = append(b.requests, ev.Request)
	}
}

// callsTo returns the calls the page sent to the edge at edge, preflights
// left out.
func (b *browserTab) callsTo(edge string) []pageCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	var calls []pageCall
	for _, r := range b.requests {
		procedure, ok := strings.CutPrefix(r.URL, edge+"/")
		if !ok || r.Method != http.MethodPost {
			continue
		}
		c := pageCall{procedure: procedure}
		for k, v := range r.Headers {
			s, _ := v.(string)
			switch strings.ToLower(k) {
			case "content-type":
				c.contentType = s
			case "authorization":
				c.bearer = strings.HasPrefix(s, "Bearer ") && len(s) > len("Bearer ")
			}
		}
		calls = append(calls, c)
	}
	return calls
}

// fail ends the test on a step that did not happen, with a screenshot of
// the page and what it logged.
func (b *browserTab) fail(format string, args ...any) {
	b.t.Helper()
	b.mu.Lock()
	logs := strings.Join(b.logs, "\n")
	b.mu.Unlock()
	if logs == "" {
		logs = "(nothing)"
	}
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		name := filepath.Join(testArtifactsDir(b.t), strings.ReplaceAll(b.t.Name(), "/", "_")+"-failure.png")
		if err := os.WriteFile(name, png, 0o644); err == nil {
			b.t.Logf("screenshot of the page at the failure: %s", name)
		}
	}
	b.t.Fatalf(format+"\npage log:\n%s", append(args, logs)...)
}

// do runs actions, each step bounded by browserWait.
func (b *browserTab) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.fail("%s: %v", what, err)
	}
}

// pageCond narrows what await waits for.
type pageCond func(cond string) string

// textIs waits for the element's text to be text, too.
func textIs(text string) pageCond {
	return func(cond string) string {
		return fmt.Sprintf("%s && e.textContent.trim() === %q", cond, text)
	}
}

// await waits until an element matches the CSS selector sel (and opts),
// and fails the test at once with the page's message when the page shows
// an error instead.
func (b *browserTab) await(what, sel string, opts ...pageCond) {
	b.t.Helper()
	cond := "e !== null"
	for _, o := range opts {
		cond = o(cond)
	}
	expr := fmt.Sprintf(`(() => {
		const err = document.getElementById("error");
		if (err && !err.hidden) return "error: " + err.textContent;
		const e = document.querySelector(%q);
		return (%s) ? "ok" : null;
	})()`, sel, cond)
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	got, err := chromedp.Run(ctx, chromedp.Poll[string](expr,
		chromedp.WithPollingInterval(25*time.Millisecond), chromedp.WithPollingTimeout(browserWait)))
	switch {
	case err != nil:
		b.fail("waiting for %s (%s): %v", what, sel, err)
	case got != "ok":
		b.fail("waiting for %s (%s), the page showed %s", what, sel, got)
	}
}

// awaitError waits until the page shows an error, with the code code when
// not empty, and returns its text.
func (b *browserTab) awaitError(code string) string {
	b.t.Helper()
	sel := "#error:not([hidden])"
	if code != "" {
		sel = fmt.Sprintf("#error:not([hidden])[data-code=%q]", code)
	}
	b.do("wait for the error "+code, chromedp.WaitVisible(chromedp.CSS(sel)))
	text := b.text("#error")
	if code != "" && !strings.HasPrefix(text, code+" ") {
		b.fail("error shows %q, want the code %s first", text, code)
	}
	return text
}

// text returns the trimmed text of the first element matching sel, or
// "" when none does.
func (b *browserTab) text(sel string) string {
	b.t.Helper()
	return b.eval(fmt.Sprintf(`document.querySelector(%q)?.textContent.trim() ?? ""`, sel))
}

// attr returns the attribute name of the first element matching sel, or
// "" when it has none.
func (b *browserTab) attr(sel, name string) string {
	b.t.Helper()
	return b.eval(fmt.Sprintf(`document.querySelector(%q)?.getAttribute(%q) ?? ""`, sel, name))
}

// count returns how many elements match sel.
func (b *browserTab) count(sel string) int {
	b.t.Helper()
	n, err := strconv.Atoi(b.eval(fmt.Sprintf(`String(document.querySelectorAll(%q).length)`, sel)))
	if err != nil {
		b.fail("count %s: %v", sel, err)
	}
	return n
}

func (b *browserTab) eval(expr string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](expr))
	if err != nil {
		b.fail("evaluate %s: %v", expr, err)
	}
	return s
}

// screenshot saves a full-page PNG of the page into the artifacts folder.
func (b *browserTab) screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, browserWait)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.fail("screenshot: %v", err)
	}
	path := filepath.Join(testArtifactsDir(b.t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
}
