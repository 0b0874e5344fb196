package consul_test

import (
	"context"
	"fmt"
	"log"

	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/internal/discovery"
)

// A Keel process connects with the CONSUL_HTTP_* environment, registers
// its own instance and resolves its peers from memory.
func Example_discovery() {
	client, err := consul.NewClient(consul.ConfigFromEnv())
	if err != nil {
		log.Fatal(err) // a wrong address or token stops the process here
	}
	registry := consul.NewRegistry(client, consul.RegistryConfig{})
	defer registry.Close()
	resolver := consul.NewResolver(client, consul.ResolverConfig{})
	defer resolver.Close()

	ctx := context.Background()
	self := discovery.Instance{ID: "order-1", Service: "order", Addr: "127.0.0.1:8084"}
	if err := registry.Register(ctx, self); err != nil {
		log.Fatal(err)
	}
	// On shutdown, before the server stops serving:
	defer registry.Deregister(ctx, self.ID)

	users, err := resolver.Instances("user")
	if err != nil {
		log.Print(err) // wraps discovery.ErrNoInstances
		return
	}
	fmt.Println(users[0].Addr)
}
