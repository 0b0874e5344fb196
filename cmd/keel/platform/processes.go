package platform

import (
	"context"
	"fmt"
	"slices"

	"github.com/keelplatform/keel/edge"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/gen/go/shop/storefront/v1/storefrontv1connect"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/depgraph"
	inventoryservice "github.com/keelplatform/keel/services/inventory/service"
	orderservice "github.com/keelplatform/keel/services/order/service"
	paymentservice "github.com/keelplatform/keel/services/payment/service"
	storefrontservice "github.com/keelplatform/keel/services/storefront/service"
	userservice "github.com/keelplatform/keel/services/user/service"
)

// Process is one process of the platform, a shop service or the edge, as
// `keel up` starts it, the edge routes to it, `keel config` checks its
// settings and the tests find it. The list of them, [Services], is the one
// place a new service is added.
type Process struct {
	// Name is the logical name: in discovery, in configuration
	// (consul/kv/<env>/<name>.yaml, keel/<env>/<name>/), in logs.
	Name string
	// Contracts are the protobuf services the process serves; the edge
	// routes each to Name.
	Contracts []string

	start func(ctx context.Context, opts boot.Options) (*boot.Running, error)
	check func(path string, data []byte) error
	load  func(ctx context.Context, env config.Env, dir string) (config.Process, error)
}

// process describes a booted service: svc as internal/boot starts it,
// serving contracts.
func process[T boot.Settings](svc boot.Service[T], contracts ...string) Process {
	return Process{
		Name:      svc.Name,
		Contracts: contracts,
		start: func(ctx context.Context, opts boot.Options) (*boot.Running, error) {
			return boot.Start(ctx, svc, opts)
		},
		check: func(path string, data []byte) error { return config.CheckFile(path, data, svc.Defaults) },
		load: func(ctx context.Context, env config.Env, dir string) (config.Process, error) {
			cfg, err := config.Load(ctx, config.Options[T]{
				Service: svc.Name, Env: env, Dir: dir, Defaults: svc.Defaults,
				LookupEnv: func(string) (string, bool) { return "", false },
			})
			return cfg.ProcessConfig(), err
		},
	}
}

// Services lists the shop's services. Adding a service to the platform
// is adding it here; `keel up` starts them in the order of their
// contracts' dependency graph ([InStartOrder]), whatever their order
// here.
func Services() []Process {
	return []Process{
		process(userservice.Service(), userv1connect.UserServiceName),
		process(inventoryservice.Service(), inventoryv1connect.InventoryServiceName),
		process(paymentservice.Service(), paymentv1connect.PaymentServiceName),
		process(orderservice.Service(), orderv1connect.OrderServiceName),
		process(storefrontservice.Service(), storefrontv1connect.StorefrontServiceName),
	}
}

// Contracts lists every protobuf service of [Services], which the edge
// routes.
func Contracts() []string {
	var names []string
	for _, p := range Services() {
		names = append(names, p.Contracts...)
	}
	return names
}

// Edge is the edge as the platform runs it, routing [Contracts].
func Edge() Process { return process(edge.Service(Contracts())) }

// All lists [Services] and the [Edge]: every process with settings.
func All() []Process { return append(Services(), Edge()) }

// Find returns the process named name among [All].
func Find(name string) (Process, bool) {
	i := slices.IndexFunc(All(), func(p Process) bool { return p.Name == name })
	if i < 0 {
		return Process{}, false
	}
	return All()[i], true
}

// Start boots the process with opts; see [boot.Start].
func (p Process) Start(ctx context.Context, opts boot.Options) (*boot.Running, error) {
	return p.start(ctx, opts)
}

// CheckSeed reports every problem with data as the process's seed file
// (path names it in errors): unknown keys, wrong types, values its settings
// refuse. `keel config push` runs it before writing anything.
func (p Process) CheckSeed(path string, data []byte) error {
	if err := p.check(path, data); err != nil {
		return fmt.Errorf("%s: %w", p.Name, err)
	}
	return nil
}

// Settings loads the process's common settings as it would from the seed
// files in dir for env, without Consul or the environment.
func (p Process) Settings(ctx context.Context, env config.Env, dir string) (config.Process, error) {
	return p.load(ctx, env, dir)
}

// Graph is the dependency graph of [Services] as their contracts declare
// it ((keel.options.v1.service).depends_on).
func Graph() (*depgraph.Graph, error) {
	var services []depgraph.Service
	for _, p := range Services() {
		services = append(services, depgraph.Service{Name: p.Name, Contracts: p.Contracts})
	}
	return depgraph.New(services)
}

// InStartOrder lists [Services] with every service after the services it
// depends on: the order `keel up` starts them in. It fails on a
// dependency cycle, naming its path.
func InStartOrder() ([]Process, error) {
	g, err := Graph()
	if err != nil {
		return nil, err
	}
	order, err := g.Order()
	if err != nil {
		return nil, err
	}
	byName := map[string]Process{}
	for _, p := range Services() {
		byName[p.Name] = p
	}
	out := make([]Process, 0, len(order))
	for _, name := range order {
		out = append(out, byName[name])
	}
	return out, nil
}
