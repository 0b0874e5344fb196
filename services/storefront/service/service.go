// Package service assembles the storefront service, the shop's
// backend-for-frontend: its settings, the clients of the services it reads
// from (inventory, order, payment, user), its handler, and a server that
// speaks every protocol on one port. It stores nothing. The storefront
// binary (services/storefront) and `keel up` both boot it through
// [Service].
package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/gen/go/shop/storefront/v1/storefrontv1connect"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/client"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/services/storefront/internal/handler"
)

// Name is the storefront service's logical name in discovery and
// configuration.
const Name = "storefront"

// Bounds of the settings.
const (
	minTimeout     = time.Millisecond
	maxTimeout     = time.Minute
	maxItemLookups = 100
)

// Settings are the storefront service's configuration, the keys of
// consul/kv/<env>/storefront.yaml and of keel/<env>/storefront/ in Consul
// KV.
type Settings struct {
	config.Process `yaml:",inline"`
	// Dependencies bounds the calls to each service the storefront reads
	// from.
	Dependencies Dependencies `yaml:"dependencies"`
	// ItemLookups bounds the item reads of one order view.
	ItemLookups ItemLookups `yaml:"item_lookups"`
}

// Dependencies holds the settings of each service the storefront reads
// from, by its logical name: dependencies/<service>/...
type Dependencies struct {
	// Inventory serves items: a product page's, essential, and an order
	// view's, optional. Default timeout 500ms.
	Inventory Dependency `yaml:"inventory"`
	// Order serves orders, essential to an order view. Default timeout 1s.
	Order Dependency `yaml:"order"`
	// Payment serves an order view's payment, optional. Default timeout
	// 500ms.
	Payment Dependency `yaml:"payment"`
	// User serves an order view's buyer name, optional. Default timeout
	// 500ms.
	User Dependency `yaml:"user"`
}

// Dependency bounds the calls to one service.
type Dependency struct {
	// Timeout is the deadline of a read from the service, within the
	// caller's own; for the inventory, of all the item reads of one order
	// view together. An essential read past it fails the call with
	// unavailable, an optional one leaves its part out, named in degraded.
	// 1ms to 1m. Dynamic.
	Timeout time.Duration `yaml:"timeout"`
}

// ItemLookups bounds the item reads of one order view.
type ItemLookups struct {
	// MaxConcurrent is how many item reads one order view makes at once,
	// 1 to 100. Dynamic. Default 8.
	MaxConcurrent int `yaml:"max_concurrent"`
}

// DefaultSettings returns the documented defaults.
func DefaultSettings() Settings {
	return Settings{
		Process: config.DefaultProcess(),
		Dependencies: Dependencies{
			Inventory: Dependency{Timeout: 500 * time.Millisecond},
			Order:     Dependency{Timeout: time.Second},
			Payment:   Dependency{Timeout: 500 * time.Millisecond},
			User:      Dependency{Timeout: 500 * time.Millisecond},
		},
		ItemLookups: ItemLookups{MaxConcurrent: 8},
	}
}

// Validate reports every setting out of range, naming its key.
func (s Settings) Validate() error {
	errs := []error{s.Process.Validate()}
	bad := func(key, format string, args ...any) {
		errs = append(errs, &config.KeyError{Key: key, Err: fmt.Errorf(format, args...)})
	}
	for _, d := range []struct {
		name string
		dep  Dependency
	}{
		{"inventory", s.Dependencies.Inventory},
		{"order", s.Dependencies.Order},
		{"payment", s.Dependencies.Payment},
		{"user", s.Dependencies.User},
	} {
		if t := d.dep.Timeout; t < minTimeout || t > maxTimeout {
			bad("dependencies/"+d.name+"/timeout", "must be %s to %s, got %s", minTimeout, maxTimeout, t)
		}
	}
	if n := s.ItemLookups.MaxConcurrent; n < 1 || n > maxItemLookups {
		bad("item_lookups/max_concurrent", "must be 1 to %d, got %d", maxItemLookups, n)
	}
	return errors.Join(errs...)
}

// limits are the handler's limits under the settings.
func (s Settings) limits() handler.Limits {
	return handler.Limits{
		Inventory:      s.Dependencies.Inventory.Timeout,
		Order:          s.Dependencies.Order.Timeout,
		Payment:        s.Dependencies.Payment.Timeout,
		User:           s.Dependencies.User.Timeout,
		MaxItemLookups: s.ItemLookups.MaxConcurrent,
	}
}

// Service describes the storefront service to [boot].
func Service() boot.Service[Settings] {
	return boot.Service[Settings]{
		Name:     Name,
		Meta:     map[string]string{"contract": "shop.storefront.v1", "services": storefrontv1connect.StorefrontServiceName},
		Defaults: DefaultSettings(),
		Build:    build,
	}
}

// build makes the storefront: a server and the handler, whose peers are
// called under the platform's call policy and whose limits follow the
// settings. It holds nothing but the server, so the server is the process.
func build(_ context.Context, env boot.Env[Settings]) (boot.Process, error) {
	peers := handler.Peers{
		Inventory: client.Connect(env.Peers, "inventory", inventoryv1connect.NewInventoryServiceClient),
		Orders:    client.Connect(env.Peers, "order", orderv1connect.NewOrderServiceClient),
		Payments:  client.Connect(env.Peers, "payment", paymentv1connect.NewPaymentServiceClient),
		Users:     client.Connect(env.Peers, "user", userv1connect.NewUserServiceClient),
	}
	h := handler.New(peers, env.Config.Current().limits(), env.Logger)
	env.Config.OnChange(func(_, s Settings) { h.SetLimits(s.limits()) })
	srv := env.Server()
	srv.Handle(storefrontv1connect.NewStorefrontServiceHandler(h, srv.HandlerOptions()...))
	return srv, nil
}
