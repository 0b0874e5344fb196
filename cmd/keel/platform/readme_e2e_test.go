package platform_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keelplatform/keel/cmd/keel/platform"
	"github.com/keelplatform/keel/internal/config"
)

// readmePath is the README whose "Try the shop" walkthrough
// TestReadmeShopWalkthrough runs.
const readmePath = "../../../README.md"

// walkthroughStep is one shell block of the README's walkthrough: the
// commands a reader pastes, tagged in the README by an HTML comment
// "<!-- walkthrough: NAME ... -->" on the lines before its ```sh fence.
type walkthroughStep struct {
	name string
	// code is the block as the reader sees it, comments included.
	code string
	// line is where the block's fence opens in the README, for messages.
	line int
}

// walkthroughTag opens the HTML comment that tags a walkthrough block.
var walkthroughTag = regexp.MustCompile(`^<!-- walkthrough: ([a-z0-9-]+)`)

// readWalkthrough returns the tagged shell blocks of the README, in the
// order they appear. Every fenced block between the first tagged one and
// the last must be tagged, and every tag must be followed by a ```sh
// block, so that no command a reader is shown escapes the test.
func readWalkthrough(r io.Reader) ([]walkthroughStep, error) {
	type fence struct {
		step walkthroughStep
		// tagged says whether a walkthrough tag preceded the block.
		tagged bool
		lang   string
	}
	var (
		fences  []fence
		pending string // the tag waiting for its block
		open    *fence
		body    strings.Builder
		n       int
	)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		n++
		line := sc.Text()
		if open != nil {
			if strings.HasPrefix(line, "```") {
				open.step.code = body.String()
				fences = append(fences, *open)
				open = nil
				continue
			}
			body.WriteString(line + "\n")
			continue
		}
		if m := walkthroughTag.FindStringSubmatch(line); m != nil {
			if pending != "" {
				return nil, fmt.Errorf("README line %d: walkthrough tag %q follows tag %q, which has no ```sh block", n, m[1], pending)
			}
			pending = m[1]
			continue
		}
		if lang, ok := strings.CutPrefix(line, "```"); ok {
			open = &fence{step: walkthroughStep{name: pending, line: n}, tagged: pending != "", lang: strings.TrimSpace(lang)}
			if open.tagged && open.lang != "sh" {
				return nil, fmt.Errorf("README line %d: the block tagged %q is ```%s, want ```sh", n, pending, open.lang)
			}
			pending = ""
			body.Reset()
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if open != nil {
		return nil, fmt.Errorf("README line %d: unclosed code block", open.step.line)
	}
	if pending != "" {
		return nil, fmt.Errorf("README: walkthrough tag %q has no ```sh block", pending)
	}
	var steps []walkthroughStep
	var untagged *fence // the first untagged block after a tagged one
	for _, f := range fences {
		switch {
		case f.tagged && untagged != nil:
			return nil, fmt.Errorf("README line %d: a ```%s block inside the walkthrough has no <!-- walkthrough: NAME --> tag, so no test runs it", untagged.step.line, untagged.lang)
		case f.tagged:
			steps = append(steps, f.step)
		case len(steps) > 0 && untagged == nil:
			untagged = &f
		}
	}
	if len(steps) == 0 {
		return nil, fmt.Errorf("README: no block tagged <!-- walkthrough: NAME -->")
	}
	return steps, nil
}

// runWalkthrough runs steps, and then a last block that prints the
// variables named by vars as NAME=value lines, in one bash -euo pipefail
// with env added to the environment, and returns each step's output
// (stdout and stderr together, as a terminal shows them) by name, the
// last block's under "variables".
func runWalkthrough(t *testing.T, steps []walkthroughStep, vars []string, env ...string) map[string]string {
	t.Helper()
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	marker := "@@walkthrough-" + hex.EncodeToString(nonce)
	var script strings.Builder
	for _, s := range append(steps, walkthroughStep{name: "variables", code: printVariables(vars)}) {
		// The leading newline puts the marker on a line of its own even
		// after an answer that does not end in one.
		fmt.Fprintf(&script, "printf '\\n%s %s\\n'\n%s\n", marker, s.name, s.code)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script.String())
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out // one pipe: the order a terminal shows
	err := cmd.Run()

	outputs := map[string]string{}
	var current string
	var transcript strings.Builder // the steps' outputs, each under its name
	for line := range strings.Lines(out.String()) {
		if name, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), marker+" "); ok {
			current = name
			outputs[current] = ""
			fmt.Fprintf(&transcript, "--- %s\n", name)
			continue
		}
		outputs[current] += line
		transcript.WriteString(line)
	}
	for name, o := range outputs {
		outputs[name] = strings.TrimSpace(o)
	}
	if err != nil {
		t.Fatalf("the README walkthrough failed in step %q: %v\noutput of every step so far:\n%s", current, err, transcript.String())
	}
	return outputs
}

// printVariables is a shell block that prints each of vars as NAME=value.
func printVariables(vars []string) string {
	var b strings.Builder
	for _, v := range vars {
		fmt.Fprintf(&b, "printf '%%s=%%s\\n' %s \"$%s\"\n", v, v)
	}
	return b.String()
}

// sampleString is a quoted string in a README comment; a key when a colon
// follows it.
var sampleString = regexp.MustCompile(`"([^"]*)"(:?)`)

// checkSamples checks the answers a step shows in its comment lines
// against the output the step printed: every quoted key ("name":) and
// every quoted value the comments show must be in the output, except the
// values abbreviated with "…" (ids, times, tokens).
func checkSamples(t *testing.T, s walkthroughStep, output string) {
	t.Helper()
	for line := range strings.Lines(s.code) {
		comment, ok := strings.CutPrefix(strings.TrimSpace(line), "#")
		if !ok {
			continue
		}
		for _, m := range sampleString.FindAllStringSubmatch(comment, -1) {
			if strings.Contains(m[1], "…") {
				continue
			}
			if !strings.Contains(output, m[0]) {
				t.Errorf("README line %d, step %q shows %s, which its output lacks:\n%s", s.line, s.name, m[0], output)
			}
		}
	}
}

// jsonLines decodes output, one JSON object a line, into values of T.
func jsonLines[T any](t *testing.T, step, output string) []T {
	t.Helper()
	var vs []T
	for line := range strings.Lines(output) {
		var v T
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("step %q printed %q, not a JSON object: %v", step, line, err)
		}
		vs = append(vs, v)
	}
	return vs
}

// The JSON shapes the walkthrough prints, as protojson writes them.
type (
	money struct {
		CurrencyCode string `json:"currencyCode"`
		AmountMinor  string `json:"amountMinor"`
	}
	orderJSON struct {
		OrderID       string `json:"orderId"`
		UserID        string `json:"userId"`
		Status        string `json:"status"`
		PaymentID     string `json:"paymentId"`
		FailureReason string `json:"failureReason"`
		Total         money  `json:"total"`
		Lines         []struct {
			SKU       string `json:"sku"`
			Quantity  string `json:"quantity"`
			UnitPrice money  `json:"unitPrice"`
		} `json:"lines"`
		History []struct {
			Status string `json:"status"`
			Reason string `json:"reason"`
		} `json:"history"`
	}
)

// TestReadmeShopWalkthrough runs the README's "Try the shop" section as a
// reader does: the ```sh blocks tagged <!-- walkthrough: NAME --> are run,
// exactly as written and in order, in one bash -euo pipefail with real
// curl and jq, against a platform started as `keel up` starts it (demo
// catalogue, embedded registry, SQLite) with KEEL set to its edge. Each
// step's output is checked against what the step claims: the answers its
// comments show and the facts the prose states (the order is confirmed;
// too many hoodies are refused with failed_precondition naming the sku
// and leave a cancelled order with the reason; a retry with the same key
// gives the same order, paid and reserved once).
func TestReadmeShopWalkthrough(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the README walkthrough needs %s: %v (./scripts/test-deps.sh installs it)", tool, err)
		}
	}
	f, err := os.Open(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	steps, err := readWalkthrough(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	checks := walkthroughChecks()
	var names, want []string
	for _, s := range steps {
		names = append(names, s.name)
	}
	for _, c := range checks {
		want = append(want, c.name)
	}
	if !slices.Equal(names, want) {
		t.Fatalf("the README walkthrough has steps %v, this test checks %v: change them together", names, want)
	}

	// The platform `keel up` starts, on free ports of the test environment.
	p, _ := startPlatform(t, platform.Options{Demo: true})
	edgeURL := "http://" + p.EdgeAddr()

	w := &walk{edgeURL: edgeURL, steps: map[string]walkthroughStep{}}
	for _, s := range steps {
		w.steps[s.name] = s
	}
	w.out = runWalkthrough(t, steps, []string{"KEEL", "USER_ID", "TOKEN", "ORDER_ID"}, "KEEL="+edgeURL)
	w.vars = map[string]string{}
	for line := range strings.Lines(w.out["variables"]) {
		name, value, _ := strings.Cut(strings.TrimSpace(line), "=")
		w.vars[name] = value
	}
	if w.vars["KEEL"] != edgeURL {
		t.Fatalf("the walkthrough called %q, not the edge of this platform %q: the README must take KEEL from the environment", w.vars["KEEL"], edgeURL)
	}
	for i, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			checkSamples(t, steps[i], w.out[c.name])
			c.check(t, w)
		})
	}
}

// walk is what one run of the walkthrough printed and left behind.
type walk struct {
	edgeURL string
	// steps are the README's steps by name.
	steps map[string]walkthroughStep
	// out is each step's output by name.
	out map[string]string
	// vars are the shell variables the steps set: USER_ID, TOKEN, ORDER_ID.
	vars map[string]string
}

// placed returns the order the place-order step printed.
func (w *walk) placed(t *testing.T) orderJSON {
	t.Helper()
	var res struct{ Order orderJSON }
	if err := json.Unmarshal([]byte(w.out["place-order"]), &res); err != nil {
		t.Fatalf("PlaceOrder printed %q: %v", w.out["place-order"], err)
	}
	return res.Order
}

// walkthroughCheck checks the output of the README step named name.
type walkthroughCheck struct {
	name  string
	check func(t *testing.T, w *walk)
}

// demoItem returns the demo catalogue's item sku.
func demoItem(t *testing.T, sku string) platform.DemoItem {
	t.Helper()
	i := slices.IndexFunc(platform.DemoItems(), func(it platform.DemoItem) bool { return it.SKU == sku })
	if i < 0 {
		t.Fatalf("%s is not a demo item", sku)
	}
	return platform.DemoItems()[i]
}

// walkthroughChecks lists the README's walkthrough steps in order, with
// what each must have printed.
func walkthroughChecks() []walkthroughCheck {
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	return []walkthroughCheck{
		{"setup", func(t *testing.T, w *walk) {
			// The default the README gives KEEL is where `make run` puts the
			// edge: server/addr of the local environment.
			local, err := platform.Edge().Settings(context.Background(), config.EnvLocal, "../../../consul/kv")
			if err != nil {
				t.Fatal(err)
			}
			m := regexp.MustCompile(`KEEL=\$\{KEEL:-([^}]*)\}`).FindStringSubmatch(w.steps["setup"].code)
			if m == nil || m[1] != "http://"+local.Server.Addr {
				t.Fatalf("the setup step sets no default KEEL of http://%s, where the local edge listens:\n%s", local.Server.Addr, w.steps["setup"].code)
			}
		}},
		{"register", func(t *testing.T, w *walk) {
			var res struct {
				User struct{ ID, Email, DisplayName string }
			}
			if err := json.Unmarshal([]byte(w.out["register"]), &res); err != nil {
				t.Fatalf("Register printed %q: %v", w.out["register"], err)
			}
			if !uuid.MatchString(res.User.ID) || res.User.ID != w.vars["USER_ID"] {
				t.Fatalf("Register answered user id %q, USER_ID is %q", res.User.ID, w.vars["USER_ID"])
			}
		}},
		{"login", func(t *testing.T, w *walk) {
			var res struct {
				AccessToken string `json:"accessToken"`
				User        struct{ ID string }
			}
			if err := json.Unmarshal([]byte(w.out["login"]), &res); err != nil {
				t.Fatalf("Login printed %q: %v", w.out["login"], err)
			}
			if res.AccessToken == "" || res.AccessToken != w.vars["TOKEN"] || res.User.ID != w.vars["USER_ID"] {
				t.Fatalf("Login answered %q for user %q; TOKEN is %q", res.AccessToken, res.User.ID, w.vars["TOKEN"])
			}
			// A JWT whose subject is the user, as the README says.
			parts := strings.Split(res.AccessToken, ".")
			if len(parts) != 3 {
				t.Fatalf("the token %q is not a JWT", res.AccessToken)
			}
			payload, err := base64.RawURLEncoding.DecodeString(parts[1])
			var claims struct{ Sub string }
			if err != nil || json.Unmarshal(payload, &claims) != nil || claims.Sub != w.vars["USER_ID"] {
				t.Fatalf("the token's claims %s (%v) do not name user %s", payload, err, w.vars["USER_ID"])
			}
		}},
		{"items", func(t *testing.T, w *walk) {
			type item struct {
				SKU       string `json:"sku"`
				Price     money  `json:"price"`
				Available string `json:"available"`
			}
			got := jsonLines[item](t, "items", w.out["items"])
			var want []item
			for _, it := range platform.DemoItems() {
				want = append(want, item{it.SKU, money{"EUR", strconv.FormatInt(it.PriceMinor, 10)}, strconv.FormatInt(it.Stock, 10)})
			}
			slices.SortFunc(want, func(a, b item) int { return strings.Compare(a.SKU, b.SKU) })
			if !slices.Equal(got, want) {
				t.Fatalf("ListItems printed %+v, the demo catalogue is %+v", got, want)
			}
		}},
		{"place-order", func(t *testing.T, w *walk) {
			placed := w.placed(t)
			mug, tee := demoItem(t, "KEEL-MUG"), demoItem(t, "KEEL-TEE")
			total := strconv.FormatInt(2*mug.PriceMinor+tee.PriceMinor, 10)
			if placed.Status != "ORDER_STATUS_CONFIRMED" || placed.PaymentID == "" || placed.Total != (money{"EUR", total}) {
				t.Fatalf("PlaceOrder answered %+v, want CONFIRMED, paid, %s EUR cents", placed, total)
			}
			if placed.OrderID == "" || placed.OrderID != w.vars["ORDER_ID"] || placed.UserID != w.vars["USER_ID"] {
				t.Fatalf("PlaceOrder answered order %q of user %q; ORDER_ID is %q", placed.OrderID, placed.UserID, w.vars["ORDER_ID"])
			}
		}},
		{"get-order", func(t *testing.T, w *walk) {
			placed := w.placed(t)
			got := jsonLines[struct {
				Status  string   `json:"status"`
				Total   money    `json:"total"`
				History []string `json:"history"`
			}](t, "get-order", w.out["get-order"])
			if len(got) != 1 || got[0].Status != "ORDER_STATUS_CONFIRMED" || got[0].Total != placed.Total ||
				!slices.Equal(got[0].History, []string{"ORDER_STATUS_PENDING", "ORDER_STATUS_CONFIRMED"}) {
				t.Fatalf("GetOrder printed %+v", got)
			}
		}},
		{"out-of-stock", func(t *testing.T, w *walk) {
			got := jsonLines[struct{ Code, Message, Detail string }](t, "out-of-stock", w.out["out-of-stock"])
			if len(got) != 1 || got[0].Code != "failed_precondition" || got[0].Detail != "shop.order.v1.Order" ||
				!strings.Contains(got[0].Message, "out of stock") || !strings.Contains(got[0].Message, "KEEL-HOODIE") {
				t.Fatalf("PlaceOrder of too many hoodies printed %+v, want failed_precondition naming KEEL-HOODIE with the order as detail", got)
			}
		}},
		{"retry", func(t *testing.T, w *walk) {
			placed := w.placed(t)
			lines := strings.SplitN(w.out["retry"], "\n", 2)
			if len(lines) != 2 {
				t.Fatalf("the retry step printed %q, want the order and the mug", w.out["retry"])
			}
			again := jsonLines[orderJSON](t, "retry", lines[0])
			if again[0].OrderID != placed.OrderID || again[0].PaymentID != placed.PaymentID || again[0].Status != "ORDER_STATUS_CONFIRMED" {
				t.Fatalf("the retry answered %+v, the first call %+v", again[0], placed)
			}
			mug := jsonLines[struct{ SKU, Available string }](t, "retry", lines[1])
			if want := strconv.FormatInt(demoItem(t, "KEEL-MUG").Stock-2, 10); mug[0].SKU != "KEEL-MUG" || mug[0].Available != want {
				t.Fatalf("after the retry the mug is %+v, want %s available: reserved once", mug[0], want)
			}
			// As the README says, the same key with another request is refused.
			body := fmt.Sprintf(`{"idempotencyKey":"grace-order-1","userId":%q,"lines":[{"sku":"KEEL-MUG","quantity":3}]}`, w.vars["USER_ID"])
			status, res := postJSON(t, w.edgeURL+"/shop.order.v1.OrderService/PlaceOrder", body, "Authorization", "Bearer "+w.vars["TOKEN"])
			if status != http.StatusBadRequest || res["code"] != "invalid_argument" {
				t.Fatalf("the key of the first order with other lines: %d %v, want invalid_argument", status, res)
			}
		}},
		{"list-orders", func(t *testing.T, w *walk) {
			placed := w.placed(t)
			got := jsonLines[orderJSON](t, "list-orders", w.out["list-orders"])
			if len(got) != 2 {
				t.Fatalf("ListOrders printed %d orders, want 2:\n%s", len(got), w.out["list-orders"])
			}
			cancelled, confirmed := got[0], got[1]
			if cancelled.Status != "ORDER_STATUS_CANCELLED" || !strings.Contains(cancelled.FailureReason, "KEEL-HOODIE") {
				t.Fatalf("the newest order is %+v, want CANCELLED with a reason naming KEEL-HOODIE", cancelled)
			}
			if confirmed.OrderID != placed.OrderID || confirmed.Status != "ORDER_STATUS_CONFIRMED" || confirmed.FailureReason != "" {
				t.Fatalf("the older order is %+v, want %s CONFIRMED", confirmed, placed.OrderID)
			}
		}},
		{"list-orders-rest", func(t *testing.T, w *walk) {
			overConnect := jsonLines[orderJSON](t, "list-orders", w.out["list-orders"])
			overREST := jsonLines[orderJSON](t, "list-orders-rest", w.out["list-orders-rest"])
			if len(overREST) != len(overConnect) {
				t.Fatalf("GET /v1/orders printed %d orders, ListOrders %d:\n%s", len(overREST), len(overConnect), w.out["list-orders-rest"])
			}
			for i, o := range overREST {
				if o.OrderID != overConnect[i].OrderID || o.Status != overConnect[i].Status {
					t.Fatalf("GET /v1/orders order %d is %+v, ListOrders said %+v", i, o, overConnect[i])
				}
			}
		}},
	}
}
