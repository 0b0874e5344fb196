package platform

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/client"
	"github.com/keelplatform/keel/internal/discovery"
)

// DemoItem is an item `keel up` puts in the catalogue.
type DemoItem struct {
	SKU, Name, Description string
	// PriceMinor is in euro cents.
	PriceMinor int64
	Stock      int64
}

// DemoItems is the catalogue `keel up` starts with.
func DemoItems() []DemoItem {
	return []DemoItem{
		{"KEEL-MUG", "Keel mug", "A mug for the long builds.", 1200, 100},
		{"KEEL-TEE", "Keel t-shirt", "Cotton, with the Keel on the front.", 2500, 50},
		{"KEEL-CAP", "Keel cap", "Keeps the sun off while the tests run.", 1800, 30},
		{"KEEL-STICKERS", "Sticker pack", "Ten stickers for your laptop.", 400, 500},
		{"KEEL-HOODIE", "Keel hoodie", "For cold server rooms.", 5500, 5},
	}
}

// SeedDemo puts [DemoItems] in the catalogue through the inventory
// service that resolver finds, as a process of the platform: its calls
// carry the identity identityKey signs (CreateItem is internal). Each
// item's request id is fixed, so seeding a platform that already has
// them changes nothing.
func SeedDemo(ctx context.Context, resolver discovery.Resolver, identityKey []byte) error {
	ids, err := auth.NewIdentities(identityKey, "keel-up")
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	peers, err := client.New(resolver, client.Options{Interceptors: []connect.Interceptor{ids}})
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	defer peers.CloseIdleConnections()
	inventory := client.Connect(peers, "inventory", inventoryv1connect.NewInventoryServiceClient)
	for _, it := range DemoItems() {
		_, err := inventory.CreateItem(ctx, connect.NewRequest(&inventoryv1.CreateItemRequest{
			RequestId:    "demo-" + it.SKU,
			Sku:          it.SKU,
			Name:         it.Name,
			Description:  it.Description,
			Price:        &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: it.PriceMinor},
			InitialStock: it.Stock,
		}))
		var cerr *connect.Error
		if errors.As(err, &cerr) && cerr.Code() == connect.CodeAlreadyExists {
			continue // created by an earlier platform under another request id
		}
		if err != nil {
			return fmt.Errorf("seed %s: %w", it.SKU, err)
		}
	}
	return nil
}
