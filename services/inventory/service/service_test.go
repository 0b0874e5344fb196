package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/cache/redistest"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	inventoryservice "github.com/keelplatform/keel/services/inventory/service"
)

// seedDir holds the seed files, consul/kv/<env>/inventory.yaml.
const seedDir = "../../../consul/kv"

// memoryBackend is the static backend with a KV layer held in memory.
type memoryBackend struct {
	boot.Static
	kv *config.MemorySource
}

func (b memoryBackend) ConfigSource(config.Env, string) config.Source { return b.kv }

// start boots the inventory service as its binary boots it, in the test
// environment, with the environment variables vars, a KV layer and a
// fresh data directory, and returns a client of it and the KV layer.
func start(t *testing.T, vars map[string]string) (inventoryv1connect.InventoryServiceClient, *config.MemorySource, string) {
	t.Helper()
	env := map[string]string{"KEEL_DATABASE_DATA_DIR": t.TempDir(), "KEEL_SERVER_ADDR": "127.0.0.1:0"}
	for k, v := range vars {
		env[k] = v
	}
	kv := config.NewMemorySource(nil)
	ctx, cancel := context.WithCancel(context.Background())
	r, err := boot.Start(ctx, inventoryservice.Service(), boot.Options{
		Env:       config.EnvTest,
		ConfigDir: seedDir,
		Backend:   memoryBackend{Static: boot.Static{Discovery: discovery.NewStatic()}, kv: kv},
		Log:       io.Discard,
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := r.Wait(); err != nil {
			t.Error(err)
		}
	})
	base := "http://" + r.Instance.Addr
	return inventoryv1connect.NewInventoryServiceClient(http.DefaultClient, base), kv, base
}

// configVersion returns the version of the configuration the process at
// base has applied.
func configVersion(t *testing.T, base string) uint64 {
	t.Helper()
	res, err := http.Get(base + boot.ConfigStatusPath)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var st boot.ConfigStatus
	if err := json.NewDecoder(res.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.Version
}

// caches are the two ways the service caches items: in its own memory
// (no Redis configured, the default) and in a real redis-server.
var caches = []struct {
	name string
	vars func(t *testing.T) map[string]string
}{
	{"memory", func(*testing.T) map[string]string { return nil }},
	{"redis", func(t *testing.T) map[string]string {
		return map[string]string{"KEEL_CACHE_REDIS_ADDR": redistest.Start(t).Addr()}
	}},
}

func eur(minor int64) *moneyv1.Money { return &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: minor} }

// wantCode fails t unless err is a Connect error with code whose message
// contains each of words.
func wantCode(t *testing.T, what string, err error, code connect.Code, words ...string) *connect.Error {
	t.Helper()
	ce, ok := errors.AsType[*connect.Error](err)
	if !ok || ce.Code() != code {
		t.Fatalf("%s: got %v, want %s", what, err, code)
	}
	for _, w := range words {
		if !strings.Contains(ce.Message(), w) {
			t.Errorf("%s: message %q does not name %q", what, ce.Message(), w)
		}
	}
	return ce
}

func TestInventoryService(t *testing.T) {
	for _, c := range caches {
		t.Run(c.name, func(t *testing.T) {
			client, _, _ := start(t, c.vars(t))
			ctx := t.Context()
			create := func(requestID, sku string, stock int64) (*inventoryv1.Item, error) {
				res, err := client.CreateItem(ctx, connect.NewRequest(&inventoryv1.CreateItemRequest{
					RequestId: requestID, Sku: sku, Name: "Item " + sku, Price: eur(1250), InitialStock: stock,
				}))
				if err != nil {
					return nil, err
				}
				return res.Msg.GetItem(), nil
			}
			available := func(sku string) int64 {
				t.Helper()
				res, err := client.GetItem(ctx, connect.NewRequest(&inventoryv1.GetItemRequest{Sku: sku}))
				if err != nil {
					t.Fatalf("GetItem %s: %v", sku, err)
				}
				return res.Msg.GetItem().GetAvailable()
			}

			// CreateItem is idempotent by request id; a second request for
			// the sku is already_exists.
			for range 2 {
				it, err := create("create-mug-1", "MUG", 10)
				if err != nil || it.GetSku() != "MUG" || it.GetAvailable() != 10 {
					t.Fatalf("CreateItem: %v %v", it, err)
				}
			}
			_, err := create("create-mug-2", "MUG", 5)
			wantCode(t, "CreateItem of an existing sku", err, connect.CodeAlreadyExists, "MUG")
			_, err = create("short", "CAP", 5)
			wantCode(t, "CreateItem with a short request id", err, connect.CodeInvalidArgument, "request_id")

			// GetItem, read twice (the second from the cache).
			if a, b := available("MUG"), available("MUG"); a != 10 || b != 10 {
				t.Fatalf("available %d then %d, want 10", a, b)
			}
			_, err = client.GetItem(ctx, connect.NewRequest(&inventoryv1.GetItemRequest{Sku: "NOPE"}))
			wantCode(t, "GetItem of an unknown sku", err, connect.CodeNotFound, "NOPE")
			_, err = client.GetItem(ctx, connect.NewRequest(&inventoryv1.GetItemRequest{}))
			wantCode(t, "GetItem without a sku", err, connect.CodeInvalidArgument, "sku")

			// Every change to stock shows in the next GetItem: writes
			// invalidate the cached item.
			if _, err := client.RestockItem(ctx, connect.NewRequest(&inventoryv1.RestockItemRequest{RequestId: "restock-mug-1", Sku: "MUG", Quantity: 5})); err != nil {
				t.Fatal(err)
			}
			if got := available("MUG"); got != 15 {
				t.Fatalf("after restocking 5: available %d, want 15", got)
			}
			reserve := func(id string, qty int64) (*inventoryv1.Reservation, error) {
				res, err := client.ReserveStock(ctx, connect.NewRequest(&inventoryv1.ReserveStockRequest{
					ReservationId: id, Lines: []*inventoryv1.StockLine{{Sku: "MUG", Quantity: qty}},
				}))
				if err != nil {
					return nil, err
				}
				return res.Msg.GetReservation(), nil
			}
			for range 2 {
				if r, err := reserve("order-1", 4); err != nil || r.GetState() != inventoryv1.ReservationState_RESERVATION_STATE_HELD {
					t.Fatalf("ReserveStock: %v %v", r, err)
				}
			}
			if got := available("MUG"); got != 11 {
				t.Fatalf("after reserving 4 (twice, one id): available %d, want 11", got)
			}
			_, err = reserve("order-2", 12)
			ce := wantCode(t, "reserving more than available", err, connect.CodeFailedPrecondition, "MUG")
			var short *inventoryv1.InsufficientStock
			for _, d := range ce.Details() {
				if v, _ := d.Value(); v != nil {
					short, _ = v.(*inventoryv1.InsufficientStock)
				}
			}
			if short.GetSku() != "MUG" || short.GetRequested() != 12 || short.GetAvailable() != 11 {
				t.Errorf("InsufficientStock detail %v, want MUG requested 12 available 11", short)
			}
			_, err = reserve("order-1", 5)
			wantCode(t, "the reservation id reused with other lines", err, connect.CodeInvalidArgument, "order-1")
			_, err = client.ReserveStock(ctx, connect.NewRequest(&inventoryv1.ReserveStockRequest{
				ReservationId: "order-3", Lines: []*inventoryv1.StockLine{{Sku: "NOPE", Quantity: 1}},
			}))
			wantCode(t, "reserving an unknown sku", err, connect.CodeNotFound, "NOPE")

			if _, err := client.CommitReservation(ctx, connect.NewRequest(&inventoryv1.CommitReservationRequest{ReservationId: "order-1"})); err != nil {
				t.Fatal(err)
			}
			_, err = client.ReleaseReservation(ctx, connect.NewRequest(&inventoryv1.ReleaseReservationRequest{ReservationId: "order-1"}))
			wantCode(t, "releasing a committed reservation", err, connect.CodeFailedPrecondition)
			_, err = client.CommitReservation(ctx, connect.NewRequest(&inventoryv1.CommitReservationRequest{ReservationId: "order-9"}))
			wantCode(t, "committing an unknown reservation", err, connect.CodeNotFound, "order-9")

			// Releasing an unknown id succeeds and fences it.
			res, err := client.ReleaseReservation(ctx, connect.NewRequest(&inventoryv1.ReleaseReservationRequest{ReservationId: "order-4"}))
			if err != nil || res.Msg.GetReservation() != nil {
				t.Fatalf("releasing an unknown id: %v %v", res, err)
			}
			_, err = reserve("order-4", 1)
			wantCode(t, "reserving a fenced id", err, connect.CodeInvalidArgument, "order-4")
			if got := available("MUG"); got != 11 {
				t.Fatalf("at the end: available %d, want 11", got)
			}
		})
	}
}

// TestListItemsPages walks the catalogue page by page.
func TestListItemsPages(t *testing.T) {
	client, _, _ := start(t, nil)
	ctx := t.Context()
	for i := range 7 {
		if _, err := client.CreateItem(ctx, connect.NewRequest(&inventoryv1.CreateItemRequest{
			RequestId: fmt.Sprintf("create-item-%d", i), Sku: fmt.Sprintf("SKU-%d", i), Name: "x", Price: eur(100),
		})); err != nil {
			t.Fatal(err)
		}
	}
	var skus []string
	token, pages := "", 0
	for {
		res, err := client.ListItems(ctx, connect.NewRequest(&inventoryv1.ListItemsRequest{PageSize: 3, PageToken: token}))
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, it := range res.Msg.GetItems() {
			skus = append(skus, it.GetSku())
		}
		if token = res.Msg.GetNextPageToken(); token == "" {
			break
		}
	}
	if want := "SKU-0 SKU-1 SKU-2 SKU-3 SKU-4 SKU-5 SKU-6"; strings.Join(skus, " ") != want || pages != 3 {
		t.Errorf("listed %q in %d pages, want %q in 3", skus, pages, want)
	}
	_, err := client.ListItems(ctx, connect.NewRequest(&inventoryv1.ListItemsRequest{PageToken: "garbage!"}))
	wantCode(t, "ListItems with a bad token", err, connect.CodeInvalidArgument, "page_token")
}

// TestReservationsExpire shortens hold_for in KV while the service runs:
// a reservation neither committed nor released gives its stock back.
func TestReservationsExpire(t *testing.T) {
	client, kv, base := start(t, nil)
	ctx := t.Context()
	if _, err := client.CreateItem(ctx, connect.NewRequest(&inventoryv1.CreateItemRequest{
		RequestId: "create-tee-1", Sku: "TEE", Name: "Tee", Price: eur(2000), InitialStock: 3,
	})); err != nil {
		t.Fatal(err)
	}
	before := configVersion(t, base)
	kv.SetAll(map[string]string{"reservations/hold_for": "1s", "reservations/sweep_every": "100ms"})
	deadline := time.Now().Add(10 * time.Second)
	for configVersion(t, base) == before {
		if time.Now().After(deadline) {
			t.Fatal("the KV change was never applied")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A subscriber runs a moment after the status shows the change;
	// reservations made under the old hold_for (15m) would never expire
	// in time, so release each until one expires.
	for i := 0; ; i++ {
		id := fmt.Sprintf("order-%d", i)
		if _, err := client.ReserveStock(ctx, connect.NewRequest(&inventoryv1.ReserveStockRequest{
			ReservationId: id, Lines: []*inventoryv1.StockLine{{Sku: "TEE", Quantity: 1}},
		})); err != nil {
			t.Fatal(err)
		}
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			res, err := client.GetItem(ctx, connect.NewRequest(&inventoryv1.GetItemRequest{Sku: "TEE"}))
			if err != nil {
				t.Fatal(err)
			}
			if res.Msg.GetItem().GetAvailable() == 3 {
				return // expired and given back
			}
		}
		if _, err := client.ReleaseReservation(ctx, connect.NewRequest(&inventoryv1.ReleaseReservationRequest{ReservationId: id})); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("no reservation expired: reservations/hold_for never applied")
		}
	}
}
