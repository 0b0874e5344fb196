package service_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	"github.com/keelplatform/keel/gen/go/shop/storefront/v1/storefrontv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/testkit"
	inventoryservice "github.com/keelplatform/keel/services/inventory/service"
	orderservice "github.com/keelplatform/keel/services/order/service"
	paymentservice "github.com/keelplatform/keel/services/payment/service"
	storefrontservice "github.com/keelplatform/keel/services/storefront/service"
	userservice "github.com/keelplatform/keel/services/user/service"
)

// The shop these tests run: the real inventory, user, payment and order
// services, booted in-process as their binaries boot them, on SQLite, and
// the storefront under test, all on loopback. Each real service sits
// behind a gate, a reverse proxy registered under the service's name:
// the storefront and the order service reach their peers only through
// the gates, which can slow calls down, hold them, or crash.
//
// Catalogue: TEA (plenty), MUG (two, both ordered, so none left).
const (
	teaPrice = 450
	mugPrice = 1200
	teaStock = 100
	mugStock = 2
)

// shop is a running shop with one confirmed order.
type shop struct {
	t *testing.T
	// registry is where the storefront and the order service find their
	// peers: the gates.
	registry *discovery.Static
	peers    map[string]*peer
	// kv is the storefront's KV layer; front is a client of it, at base.
	kv    *config.MemorySource
	front storefrontv1connect.StorefrontServiceClient
	base  string
	logs  *testkit.Buffer

	items  inventoryv1connect.InventoryServiceClient // straight to the inventory
	orders orderv1connect.OrderServiceClient         // straight to the order service
	userID string
	// order is the confirmed order: two MUGs and a TEA.
	order *orderv1.Order
}

// shopOptions shape a shop.
type shopOptions struct {
	// storefront are the storefront's environment variables, over
	// storefrontDefaults; an empty value unsets one.
	storefront map[string]string
	// kv is the storefront's KV layer at start.
	kv map[string]string
	// extraItems are added to the catalogue (10 of each, priced 100 EUR
	// cents), for long orders.
	extraItems []string
}

// storefrontDefaults are the storefront's settings in these tests:
// generous deadlines, so that a healthy peer is never too slow even on a
// loaded machine, and a calls/timeout far beyond every deadline under
// test, so that only the storefront's own deadlines can end a call early.
var storefrontDefaults = map[string]string{
	"KEEL_DEPENDENCIES_INVENTORY_TIMEOUT": "5s",
	"KEEL_DEPENDENCIES_ORDER_TIMEOUT":     "5s",
	"KEEL_DEPENDENCIES_PAYMENT_TIMEOUT":   "5s",
	"KEEL_DEPENDENCIES_USER_TIMEOUT":      "5s",
	"KEEL_CALLS_TIMEOUT":                  "1m",
}

// newShop starts the peers behind their gates, fills the catalogue,
// registers a user, places an order, and starts the storefront.
func newShop(t *testing.T, opts shopOptions) *shop {
	t.Helper()
	s := &shop{t: t, registry: discovery.NewStatic(), peers: map[string]*peer{}, logs: &testkit.Buffer{}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("storefront logs:\n%s", s.logs.String())
		}
	})
	startPeer(s, inventoryservice.Service(), nil)
	startPeer(s, userservice.Service(), map[string]string{
		userservice.TokenKeyVar:                "storefront-service-test-signing-key-0123456789",
		"KEEL_PASSWORD_HASHING_TIME":           "1",
		"KEEL_PASSWORD_HASHING_MEMORY_KIB":     "8192",
		"KEEL_PASSWORD_HASHING_MAX_CONCURRENT": "4",
	})
	startPeer(s, paymentservice.Service(), nil)
	startPeer(s, orderservice.Service(), map[string]string{"KEEL_SAGA_POLL_INTERVAL": "20ms"})

	ctx := t.Context()
	s.items = inventoryv1connect.NewInventoryServiceClient(http.DefaultClient, "http://"+s.peers["inventory"].addr)
	type item struct {
		sku          string
		price, stock int64
	}
	catalogue := []item{{"TEA", teaPrice, teaStock}, {"MUG", mugPrice, mugStock}}
	for _, sku := range opts.extraItems {
		catalogue = append(catalogue, item{sku, 100, 10})
	}
	for _, it := range catalogue {
		if _, err := s.items.CreateItem(ctx, connect.NewRequest(&inventoryv1.CreateItemRequest{
			Sku: it.sku, Name: "The " + it.sku, Price: &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: it.price},
			InitialStock: it.stock, RequestId: "create-item-" + it.sku,
		})); err != nil {
			t.Fatal(err)
		}
	}
	users := userv1connect.NewUserServiceClient(http.DefaultClient, "http://"+s.peers["user"].addr)
	res, err := users.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{
		Email: "ada@example.com", Password: "correct horse battery", DisplayName: "Ada",
	}))
	if err != nil {
		t.Fatal(err)
	}
	s.userID = res.Msg.GetUser().GetId()
	s.orders = orderv1connect.NewOrderServiceClient(http.DefaultClient, "http://"+s.peers["order"].addr)
	s.order = s.place("order-mugs-and-tea", "MUG", mugStock, "TEA", 1)

	s.startStorefront(opts.storefront, opts.kv)
	for _, p := range s.peers {
		p.gate.reset(t)
	}
	return s
}

// place places an order of lines ("SKU", quantity pairs) under key and
// checks it is confirmed.
func (s *shop) place(key string, lines ...any) *orderv1.Order {
	s.t.Helper()
	req := &orderv1.PlaceOrderRequest{IdempotencyKey: key, UserId: s.userID}
	for i := 0; i < len(lines); i += 2 {
		req.Lines = append(req.Lines, &orderv1.OrderLine{Sku: lines[i].(string), Quantity: int64(lines[i+1].(int))})
	}
	res, err := s.orders.PlaceOrder(s.t.Context(), connect.NewRequest(req))
	if err != nil {
		s.t.Fatalf("PlaceOrder: %v", err)
	}
	o := res.Msg.GetOrder()
	if o.GetStatus() != orderv1.OrderStatus_ORDER_STATUS_CONFIRMED || o.GetPaymentId() == "" {
		s.t.Fatalf("order %v, want it confirmed and paid", o)
	}
	return o
}

// peer is a real service behind its gate.
type peer struct {
	addr string // the service's own
	gate *gate
	// stop stops the service, once, and waits until it has.
	stop func()
}

// backstage is where the real services run: each registers in a
// registry nobody reads, and finds its peers in the shop's registry,
// through their gates.
type backstage struct {
	boot.Static
	peers *discovery.Static
}

// Resolver implements [boot.Backend].
func (b backstage) Resolver() discovery.Resolver { return b.peers }

// startPeer boots svc backstage with a fresh data directory and the
// environment variables vars, and registers a gate in front of it.
func startPeer[T boot.Settings](s *shop, svc boot.Service[T], vars map[string]string) {
	s.t.Helper()
	env := map[string]string{"KEEL_DATABASE_DATA_DIR": s.t.TempDir()}
	maps.Copy(env, vars)
	ctx, cancel := context.WithCancel(context.Background())
	r, err := boot.Start(ctx, svc, boot.Options{
		Env:       config.EnvTest,
		ConfigDir: seedDir,
		Backend:   backstage{Static: boot.Static{Discovery: discovery.NewStatic()}, peers: s.registry},
		Log:       io.Discard,
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	})
	if err != nil {
		cancel()
		s.t.Fatalf("start %s: %v", svc.Name, err)
	}
	p := &peer{addr: r.Instance.Addr}
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			if err := r.Wait(); err != nil {
				s.t.Errorf("%s: %v", svc.Name, err)
			}
		})
	}
	s.t.Cleanup(p.stop)
	p.gate = newGate(s.t, svc.Name, p.addr, s.registry)
	s.peers[svc.Name] = p
}

// memoryBackend is the static backend with a KV layer held in memory.
type memoryBackend struct {
	boot.Static
	kv *config.MemorySource
}

// ConfigSource implements [boot.Backend].
func (b memoryBackend) ConfigSource(config.Env, string) config.Source { return b.kv }

// startStorefront boots the storefront in the shop's registry, with
// storefrontDefaults and then vars as its environment, and kv as its KV
// layer.
func (s *shop) startStorefront(vars, kv map[string]string) {
	s.t.Helper()
	env := maps.Clone(storefrontDefaults)
	maps.Copy(env, vars)
	maps.DeleteFunc(env, func(_, v string) bool { return v == "" })
	s.kv = config.NewMemorySource(kv)
	ctx, cancel := context.WithCancel(context.Background())
	r, err := boot.Start(ctx, storefrontservice.Service(), boot.Options{
		Env:       config.EnvTest,
		ConfigDir: seedDir,
		Backend:   memoryBackend{Static: boot.Static{Discovery: s.registry}, kv: s.kv},
		Log:       s.logs,
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	})
	if err != nil {
		cancel()
		s.t.Fatalf("start storefront: %v", err)
	}
	s.t.Cleanup(func() {
		cancel()
		if err := r.Wait(); err != nil {
			s.t.Errorf("storefront: %v", err)
		}
	})
	s.base = "http://" + r.Instance.Addr
	s.front = storefrontv1connect.NewStorefrontServiceClient(http.DefaultClient, s.base)
}

// kill stops the real service name as a graceful stop does: it goes out
// of discovery (its gate too: the storefront finds no instance), and
// stops.
func (s *shop) kill(name string) {
	s.t.Helper()
	p := s.peers[name]
	if err := s.registry.Deregister(context.Background(), p.gate.id); err != nil {
		s.t.Fatal(err)
	}
	p.stop()
}

// gate is a reverse proxy in front of one real service, registered under
// the service's name. It counts the calls it gets and how many it had at
// once, and can delay every call, hold every call until released, or
// crash: stop listening while it stays registered, as a process that died
// does until its health check fails.
type gate struct {
	id    string
	proxy *httputil.ReverseProxy
	srv   *http.Server

	delay    atomic.Int64 // nanoseconds added to each call
	held     atomic.Pointer[chan struct{}]
	calls    atomic.Int64
	inflight atomic.Int64
	peak     atomic.Int64
}

// newGate serves a gate in front of the service name at addr and
// registers it in registry.
func newGate(t *testing.T, name, addr string, registry *discovery.Static) *gate {
	t.Helper()
	target := &url.URL{Scheme: "http", Host: addr}
	transport := &http.Transport{MaxIdleConnsPerHost: 64}
	g := &gate{id: name + "-gate", proxy: &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target) },
		Transport: transport,
		// A call the storefront gave up on is no news.
		ErrorLog: log.New(io.Discard, "", 0),
	}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g.srv = &http.Server{Handler: g, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = g.srv.Serve(ln) }()
	t.Cleanup(func() {
		g.release()
		_ = g.srv.Close()
		transport.CloseIdleConnections()
	})
	if err := registry.Register(context.Background(), discovery.Instance{ID: g.id, Service: name, Addr: ln.Addr().String()}); err != nil {
		t.Fatal(err)
	}
	return g
}

// ServeHTTP passes the call on, once held calls are released and after
// the delay; a caller that gives up first gets nothing.
func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.calls.Add(1)
	n := g.inflight.Add(1)
	defer g.inflight.Add(-1)
	for p := g.peak.Load(); n > p && !g.peak.CompareAndSwap(p, n); p = g.peak.Load() {
	}
	if held := g.held.Load(); held != nil {
		select {
		case <-*held:
		case <-r.Context().Done():
			return
		}
	}
	if d := time.Duration(g.delay.Load()); d > 0 {
		timer := time.NewTimer(d)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-r.Context().Done():
			return
		}
	}
	g.proxy.ServeHTTP(w, r)
}

// slow delays every call by d; 0 passes them on at once.
func (g *gate) slow(d time.Duration) { g.delay.Store(int64(d)) }

// stuck delays every call far beyond any deadline of these tests: the
// service is up but never answers in time.
func (g *gate) stuck() { g.slow(time.Hour) }

// hold makes calls wait until [gate.release].
func (g *gate) hold() {
	ch := make(chan struct{})
	g.held.Store(&ch)
}

// release lets held calls through, and calls pass from now on.
func (g *gate) release() {
	if ch := g.held.Swap(nil); ch != nil {
		close(*ch)
	}
}

// crash stops the gate listening and drops its connections; it stays
// registered.
func (g *gate) crash() { _ = g.srv.Close() }

// reset waits until no call is in flight, then zeroes the counts.
func (g *gate) reset(t *testing.T) {
	t.Helper()
	eventually(t, "calls through the gate end", func() error {
		if n := g.inflight.Load(); n != 0 {
			return fmt.Errorf("%d calls in flight", n)
		}
		return nil
	})
	g.calls.Store(0)
	g.peak.Store(0)
}

// eventually retries check until it passes or 15s have gone by.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if err = check(); err == nil {
			return
		}
	}
	t.Fatalf("%s: %v", what, err)
}

// configVersion returns the version of the configuration the storefront
// has applied.
func (s *shop) configVersion() uint64 {
	s.t.Helper()
	var st boot.ConfigStatus
	res, err := http.Get(s.base + boot.ConfigStatusPath)
	if err != nil {
		s.t.Fatal(err)
	}
	defer res.Body.Close()
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		s.t.Fatal(err)
	}
	return st.Version
}

// skus returns n skus, SKU-00, SKU-01, ...
func skus(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("SKU-%02d", i)
	}
	return out
}
