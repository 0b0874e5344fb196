package platform_test

import (
	"context"
	"encoding/json"
	"errors"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/testkit"
)

// webDir is the browser client's package (web/), relative to this package.
const webDir = "../../../web"

// browserSummary is the JSON the browser client (web/src/main.ts) writes
// into its page.
type browserSummary struct {
	PageOrigin string       `json:"pageOrigin"`
	Edge       string       `json:"edge"`
	Email      string       `json:"email"`
	Registered *browserUser `json:"registered"`
	GetUser    struct {
		GRPCWeb *browserUser `json:"grpcWeb"`
		Connect *browserUser `json:"connect"`
	} `json:"getUser"`
	InvalidEmail struct {
		GRPCWeb *browserError `json:"grpcWeb"`
		Connect *browserError `json:"connect"`
	} `json:"invalidEmail"`
	Error *browserError `json:"error"`
}

type browserUser struct {
	ID          string `json:"id"`
	Email       string `json:"email"`
	DisplayName string `json:"displayName"`
	CreateTime  string `json:"createTime"`
}

type browserError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func TestBrowserCallsTheUserServiceAcrossOrigins(t *testing.T) {
	chromium := findChromium(t)
	page := servePage(t)
	r := up(t, nil)
	before := testkit.Scrape(t, r.url+"/metrics")

	title, summary := openPage(t, chromium, page, r.url)
	if title != "done" {
		t.Fatalf("page title %q, summary %+v", title, summary)
	}
	if summary.PageOrigin == summary.Edge || summary.Edge != r.url {
		t.Fatalf("page at %s called %s: not the edge on another origin", summary.PageOrigin, summary.Edge)
	}
	reg := summary.Registered
	if reg == nil || reg.ID == "" || reg.Email != summary.Email || reg.DisplayName != "Browser" || reg.CreateTime == "" {
		t.Fatalf("register over gRPC-Web returned %+v for %s", reg, summary.Email)
	}
	for protocol, got := range map[string]*browserUser{"gRPC-Web": summary.GetUser.GRPCWeb, "Connect": summary.GetUser.Connect} {
		if got == nil || *got != *reg {
			t.Errorf("GetUser over %s returned %+v, want %+v", protocol, got, reg)
		}
	}
	for protocol, got := range map[string]*browserError{"gRPC-Web": summary.InvalidEmail.GRPCWeb, "Connect": summary.InvalidEmail.Connect} {
		if got == nil || got.Code != "invalid_argument" || !strings.Contains(got.Message, "email") {
			t.Errorf("Register with an invalid email over %s failed with %+v, want invalid_argument naming email", protocol, got)
		}
	}

	// The calls went through the edge: 1 register, 1 login and 2 gets
	// (with the login's token) succeeded, 2 registers were refused (CORS
	// preflights are not calls).
	// The edge counts a call once it has sent the whole answer, a moment
	// after the browser has it: poll briefly.
	rise := map[string]float64{"ok": 4, "invalid_argument": 2}
	var after map[string]float64
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		after = testkit.Scrape(t, r.url+"/metrics")
		settled := true
		for code, want := range rise {
			series := `keel_edge_requests_total{code="` + code + `",service="user"}`
			settled = settled && after[series]-before[series] == want
		}
		if settled || time.Now().After(deadline) {
			break
		}
	}
	for code, want := range rise {
		series := `keel_edge_requests_total{code="` + code + `",service="user"}`
		if got := after[series] - before[series]; got != want {
			t.Errorf("%s rose by %v, want %v", series, got, want)
		}
	}
}

// The control for the test above: from an origin the edge does not allow,
// the browser refuses to hand over the answers, so its success there is
// the CORS exchange working, not the browser skipping it.
func TestBrowserIsRefusedFromAnOriginTheEdgeDoesNotAllow(t *testing.T) {
	chromium := findChromium(t)
	page := servePage(t)
	r := up(t, map[string]string{"KEEL_ALLOWED_ORIGINS": `["https://shop.example"]`})

	title, summary := openPage(t, chromium, page, r.url)
	if title != "failed" || summary.Registered != nil || summary.Error == nil {
		t.Fatalf("page title %q, summary %+v: want the first call refused", title, summary)
	}
	if !strings.Contains(summary.Error.Message, "fetch") {
		t.Fatalf("first call failed with %+v, want a failed fetch", summary.Error)
	}
	t.Logf("refused as it should be: %+v", *summary.Error)
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

// servePage serves the browser client's page and bundle, and nothing else
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

var (
	titleElement  = regexp.MustCompile(`<title>([^<]*)</title>`)
	resultElement = regexp.MustCompile(`(?s)<pre id="result">(.*?)</pre>`)
)

// openPage loads page in headless Chromium with the edge at edgeURL and
// returns the title and summary the page ended with. --dump-dom prints the
// DOM once the page has loaded and the virtual time budget has run out;
// virtual time does not advance while fetches are in flight, so the
// budget covers every call however long the network takes.
func openPage(t *testing.T, chromium, page, edgeURL string) (string, browserSummary) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium,
		"--headless",
		"--no-sandbox", // tests run as root, where the sandbox refuses to start
		"--disable-gpu",
		"--disable-quic",
		"--disable-dev-shm-usage",
		"--no-first-run",
		"--disable-background-networking",
		"--disable-component-update",
		"--disable-sync",
		"--user-data-dir="+t.TempDir(),
		"--virtual-time-budget=15000",
		"--dump-dom",
		page+"?edge="+url.QueryEscape(edgeURL),
	)
	// Chromium's helper processes may hold its output open after a kill.
	cmd.WaitDelay = 5 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	dom, err := cmd.Output()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("chromium did not finish within a minute; stderr:\n%s", stderr.String())
	}
	if err != nil {
		t.Fatalf("chromium: %v; stderr:\n%s", err, stderr.String())
	}
	t.Logf("chromium rendered the page in %v", time.Since(start).Round(time.Millisecond))

	title := titleElement.FindSubmatch(dom)
	result := resultElement.FindSubmatch(dom)
	if title == nil || result == nil {
		t.Fatalf("page has no title or result:\n%s\nstderr:\n%s", dom, stderr.String())
	}
	var summary browserSummary
	if err := json.Unmarshal([]byte(html.UnescapeString(string(result[1]))), &summary); err != nil {
		t.Fatalf("result is not the summary (%v):\n%s\nstderr:\n%s", err, dom, stderr.String())
	}
	return string(title[1]), summary
}
