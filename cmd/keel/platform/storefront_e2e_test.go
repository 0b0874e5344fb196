package platform_test

import (
	"encoding/json"
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
