package platform_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/keelplatform/keel/cmd/keel/platform"
)

// TestProductPageThroughTheEdge: the platform runs the storefront and the
// edge routes to it: a product page of the demo catalogue read the way
// the README's curl line reads it (Connect JSON, no token: the method is
// public), and an unknown sku answered not_found naming it.
func TestProductPageThroughTheEdge(t *testing.T) {
	p, _ := startPlatform(t, platform.Options{Demo: true})
	url := "http://" + p.EdgeAddr() + "/shop.storefront.v1.StorefrontService/GetProductPage"
	post := func(body string, out any) int {
		t.Helper()
		res, err := http.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		data, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%d %q is not JSON: %v", res.StatusCode, data, err)
		}
		return res.StatusCode
	}

	var mug platform.DemoItem
	for _, it := range platform.DemoItems() {
		if it.SKU == "KEEL-MUG" {
			mug = it
		}
	}
	var page struct {
		Item struct {
			SKU   string `json:"sku"`
			Price struct {
				CurrencyCode string `json:"currencyCode"`
				AmountMinor  string `json:"amountMinor"`
			} `json:"price"`
			Available string `json:"available"`
		} `json:"item"`
		InStock  bool     `json:"inStock"`
		Degraded []string `json:"degraded"`
	}
	if code := post(`{"sku":"KEEL-MUG"}`, &page); code != http.StatusOK {
		t.Fatalf("GetProductPage: HTTP %d, %+v", code, page)
	}
	if page.Item.SKU != mug.SKU || page.Item.Price.CurrencyCode != "EUR" || page.Item.Price.AmountMinor != strconv.FormatInt(mug.PriceMinor, 10) ||
		page.Item.Available != strconv.FormatInt(mug.Stock, 10) || !page.InStock || len(page.Degraded) != 0 {
		t.Errorf("GetProductPage: %+v, want %+v, in stock, whole", page, mug)
	}

	var failed struct{ Code, Message string }
	if code := post(`{"sku":"KEEL-NOPE"}`, &failed); code != http.StatusNotFound || failed.Code != "not_found" ||
		!strings.Contains(failed.Message, "KEEL-NOPE") {
		t.Errorf("GetProductPage of an unknown sku: HTTP %d, %+v; want 404 not_found naming it", code, failed)
	}
}

// TestOrderOutageLeavesProductPagesAlone: with the order service down,
// the storefront rightly answers unavailable for order views, and the
// edge must not hold those answers against the storefront instance:
// product pages, which never touch the order service, all succeed
// through the edge while order views keep failing, and after.
func TestOrderOutageLeavesProductPagesAlone(t *testing.T) {
	p, _ := startPlatform(t, platform.Options{Demo: true})
	url := "http://" + p.EdgeAddr()
	if status, body := postJSON(t, url+"/shop.user.v1.UserService/Register",
		`{"email":"olga@example.com","password":"correct horse","displayName":"Olga"}`); status != http.StatusOK {
		t.Fatalf("register: %d %v", status, body)
	}
	auth := "Bearer " + login(t, url, "olga@example.com")
	if err := p.StopService("order"); err != nil {
		t.Fatal(err)
	}

	// Order views flow during the outage, each answered unavailable.
	views := make(chan error, 1)
	go func() {
		for i := range 40 {
			status, body := postJSON(t, url+"/shop.storefront.v1.StorefrontService/GetOrderView",
				`{"orderId":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}`, "Authorization", auth)
			if status != http.StatusServiceUnavailable || body["code"] != "unavailable" {
				views <- fmt.Errorf("order view %d with the order service down: %d %v, want 503 unavailable", i, status, body)
				return
			}
		}
		views <- nil
	}()
	pages, failed := 0, 0
	product := func() {
		status, body := postJSON(t, url+"/shop.storefront.v1.StorefrontService/GetProductPage", `{"sku":"KEEL-MUG"}`)
		pages++
		if status != http.StatusOK {
			failed++
			t.Errorf("product page %d during the order outage: %d %v", pages, status, body)
		}
	}
	for done := false; !done; {
		select {
		case err := <-views:
			if err != nil {
				t.Fatal(err)
			}
			done = true
		default:
			product()
		}
	}
	for range 20 {
		product() // and right after the order views stopped
	}
	if failed > 0 {
		t.Fatalf("%d of %d product pages failed while only the order service was down", failed, pages)
	}
}

// TestStartOrderFollowsTheGraph: `keel up` starts every service after
// the services its contract depends on.
func TestStartOrderFollowsTheGraph(t *testing.T) {
	g, err := platform.Graph()
	if err != nil {
		t.Fatal(err)
	}
	order, err := platform.InStartOrder()
	if err != nil {
		t.Fatal(err)
	}
	if len(order) != len(platform.Services()) {
		t.Fatalf("%d services in start order, %d in the platform", len(order), len(platform.Services()))
	}
	started := map[string]bool{}
	for _, p := range order {
		for _, dep := range g.Deps(p.Name) {
			if !started[dep] {
				t.Errorf("%s starts before %s, which it depends on", p.Name, dep)
			}
		}
		started[p.Name] = true
	}
}
