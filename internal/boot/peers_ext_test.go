package boot_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/gen/go/shop/storefront/v1/storefrontv1connect"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/client"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/testkit"
)

// peerService is a process serving contract that builds clients for
// peers, as a service's Build does.
func peerService(contract string, connect func(*client.Peers)) boot.Service[tinySettings] {
	return boot.Service[tinySettings]{
		Name:     "tiny",
		Meta:     map[string]string{"services": contract},
		Defaults: tinySettings{Process: config.DefaultProcess()},
		Build: func(_ context.Context, env boot.Env[tinySettings]) (boot.Process, error) {
			connect(env.Peers)
			return env.Server(), nil
		},
	}
}

func startPeerService(t *testing.T, svc boot.Service[tinySettings], log io.Writer) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r, err := boot.Start(ctx, svc, boot.Options{
		Env:       config.EnvLocal,
		ConfigDir: t.TempDir() + "/none",
		Backend:   boot.Static{Discovery: discovery.NewStatic()},
		Log:       log,
		LookupEnv: func(string) (string, bool) { return "", false },
	})
	if err != nil {
		cancel()
		return err
	}
	cancel()
	return r.Wait()
}

// TestUndeclaredPeerFailsTheStart: a service whose code builds a client
// for a peer its contract does not list in depends_on does not start,
// and the error names the contract line to add; declared peers start.
func TestUndeclaredPeerFailsTheStart(t *testing.T) {
	t.Parallel()
	// The order contract declares inventory, payment and user, not
	// storefront.
	err := startPeerService(t, peerService(orderv1connect.OrderServiceName, func(p *client.Peers) {
		client.Connect(p, "inventory", inventoryv1connect.NewInventoryServiceClient)
		client.Connect(p, "storefront", storefrontv1connect.NewStorefrontServiceClient)
	}), io.Discard)
	if err == nil {
		t.Fatal("order started with a client for storefront, which its contract does not declare")
	}
	for _, want := range []string{`shop.order.v1.OrderService calls peer "storefront"`, `depends_on = "shop.storefront.v1.<Service>"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}

	log := &testkit.Buffer{}
	if err := startPeerService(t, peerService(orderv1connect.OrderServiceName, func(p *client.Peers) {
		client.Connect(p, "inventory", inventoryv1connect.NewInventoryServiceClient)
		client.Connect(p, "payment", paymentv1connect.NewPaymentServiceClient)
	}), log); err != nil {
		t.Fatalf("order with declared peers only: %v", err)
	}
	// user is declared but never called: started, with a warning.
	if out := log.String(); !strings.Contains(out, "declares a peer the service never calls") || !strings.Contains(out, `"peer":"user"`) {
		t.Errorf("no warning about the declared peer user that no code calls:\n%s", out)
	}
	if strings.Contains(log.String(), `"peer":"payment"`) {
		t.Error("a warning about payment, which the code calls")
	}

	// A process with no contract of its own (the edge) may call anyone.
	if err := startPeerService(t, peerService("", func(p *client.Peers) {
		client.Connect(p, "user", userv1connect.NewUserServiceClient)
	}), io.Discard); err != nil {
		t.Fatalf("a process without a contract: %v", err)
	}
}
