package depgraph_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/gen/go/shop/storefront/v1/storefrontv1connect"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/depgraph"
)

// shop is the shop's services, listed callers first, the reverse of a
// start order.
func shop() []depgraph.Service {
	return []depgraph.Service{
		{Name: "storefront", Contracts: []string{storefrontv1connect.StorefrontServiceName}},
		{Name: "order", Contracts: []string{orderv1connect.OrderServiceName}},
		{Name: "payment", Contracts: []string{paymentv1connect.PaymentServiceName}},
		{Name: "inventory", Contracts: []string{inventoryv1connect.InventoryServiceName}},
		{Name: "user", Contracts: []string{userv1connect.UserServiceName}},
	}
}

func TestShopGraphFromContracts(t *testing.T) {
	g, err := depgraph.New(shop())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := g.Deps("order"), []string{"inventory", "payment", "user"}; !slices.Equal(got, want) {
		t.Errorf("order depends on %v, want %v", got, want)
	}
	if got, want := g.Deps("storefront"), []string{"inventory", "order", "payment", "user"}; !slices.Equal(got, want) {
		t.Errorf("storefront depends on %v, want %v", got, want)
	}
	if got := g.Deps("user"); len(got) != 0 {
		t.Errorf("user depends on %v, want nothing", got)
	}
	if !g.Declares("order", "payment") || g.Declares("payment", "order") {
		t.Error("Declares: order declares payment, payment does not declare order")
	}
	if c := g.Cycle(); c != nil {
		t.Errorf("the shop has a cycle %v", c)
	}
	order, err := g.Order()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"inventory", "payment", "user", "order", "storefront"}; !slices.Equal(order, want) {
		t.Errorf("start order %v, want %v", order, want)
	}
	mermaid := g.Mermaid()
	for _, line := range []string{"flowchart LR", "  order --> payment", "  storefront --> order", "  user\n"} {
		if !strings.Contains(mermaid, line) {
			t.Errorf("Mermaid lacks %q:\n%s", line, mermaid)
		}
	}
	if dot := g.Dot(); !strings.Contains(dot, `"order" -> "inventory";`) {
		t.Errorf("dot lacks order -> inventory:\n%s", dot)
	}
	data, err := g.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services []struct {
			Name      string
			DependsOn []struct{ Name, Contract string } `json:"depends_on"`
		}
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Services) != 5 || doc.Services[1].Name != "order" || len(doc.Services[1].DependsOn) != 3 ||
		doc.Services[1].DependsOn[1].Contract != paymentv1connect.PaymentServiceName {
		t.Errorf("JSON: %s", data)
	}
}

func TestUnknownDependencyIsNamed(t *testing.T) {
	// The order contract depends on payment, which this platform lacks.
	_, err := depgraph.New([]depgraph.Service{
		{Name: "order", Contracts: []string{orderv1connect.OrderServiceName}},
		{Name: "inventory", Contracts: []string{inventoryv1connect.InventoryServiceName}},
		{Name: "user", Contracts: []string{userv1connect.UserServiceName}},
	})
	if err == nil || !strings.Contains(err.Error(), "shop.order.v1.OrderService depends on shop.payment.v1.PaymentService") {
		t.Fatalf("New without payment: %v, want the missing dependency named", err)
	}
	_, err = depgraph.New([]depgraph.Service{{Name: "ghost", Contracts: []string{"shop.ghost.v1.GhostService"}}})
	if err == nil || !strings.Contains(err.Error(), "shop.ghost.v1.GhostService is not registered") {
		t.Fatalf("New with an unknown contract: %v", err)
	}
}

func TestCycleIsFoundWithItsPath(t *testing.T) {
	services := []depgraph.Service{{Name: "user"}, {Name: "order"}, {Name: "inventory"}, {Name: "payment"}}
	g, err := depgraph.FromDeps(services, map[string][]string{
		"order":     {"user", "inventory"},
		"inventory": {"payment"},
		"payment":   {"order"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := g.Cycle(), []string{"order", "inventory", "payment", "order"}; !slices.Equal(got, want) {
		t.Fatalf("Cycle() = %v, want %v", got, want)
	}
	if _, err := g.Order(); !errors.Is(err, depgraph.ErrCycle) || !strings.Contains(err.Error(), "order -> inventory -> payment -> order") {
		t.Fatalf("Order() = %v, want the cycle's path", err)
	}
	self, err := depgraph.FromDeps([]depgraph.Service{{Name: "a"}}, map[string][]string{"a": {"a"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := self.Cycle(); !slices.Equal(got, []string{"a", "a"}) {
		t.Fatalf("a service depending on itself: Cycle() = %v", got)
	}
	if _, err := depgraph.FromDeps(services, map[string][]string{"user": {"ghost"}}); err == nil {
		t.Fatal("FromDeps accepted a dependency on no service")
	}
}

func TestOrderPutsDependenciesFirst(t *testing.T) {
	services := []depgraph.Service{{Name: "a"}, {Name: "b"}, {Name: "c"}, {Name: "d"}}
	g, err := depgraph.FromDeps(services, map[string][]string{"a": {"c"}, "c": {"d"}, "b": {"d"}})
	if err != nil {
		t.Fatal(err)
	}
	order, err := g.Order()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"d", "c", "a", "b"}; !slices.Equal(order, want) {
		t.Fatalf("Order() = %v, want %v", order, want)
	}
}
