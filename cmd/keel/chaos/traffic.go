package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	storefrontv1 "github.com/keelplatform/keel/gen/go/shop/storefront/v1"
	"github.com/keelplatform/keel/gen/go/shop/storefront/v1/storefrontv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
)

// Call kinds the drill's clients make through the edge.
const (
	kindRegister  = "register"
	kindLogin     = "login"
	kindCatalogue = "catalogue"
	kindProduct   = "product_page"
	kindOrder     = "place_order"
	kindOrderView = "order_view"
)

var kinds = []string{kindRegister, kindLogin, kindCatalogue, kindProduct, kindOrder, kindOrderView}

// needs lists, per call kind, the services it cannot succeed without
// (the edge aside). An order view degrades without payment, user or
// inventory, so it needs only the storefront and the order service.
var needs = map[string][]string{
	kindRegister:  {"user"},
	kindLogin:     {"user"},
	kindCatalogue: {"inventory"},
	kindProduct:   {"storefront", "inventory"},
	kindOrder:     {"order", "inventory", "payment", "user"},
	kindOrderView: {"storefront", "order"},
}

// perOrder is each kind's rate as a share of the order rate.
var perOrder = map[string]float64{
	kindProduct:   3,
	kindCatalogue: 1,
	kindOrderView: 0.5,
	kindLogin:     0.25,
	kindRegister:  0.125,
	kindOrder:     1,
}

// call is one attempt a client made, as the client saw it.
type call struct {
	Kind    string
	Start   time.Time
	Latency time.Duration
	Code    string // "ok" or a Connect code
	Attempt int    // 1 for a first attempt
}

// account is a registration the platform acknowledged.
type account struct {
	ID, Email, Password string
	Token               string
}

// orderRec is one order a client placed, retried under one key.
type orderRec struct {
	Key      string   `json:"key"`
	UserID   string   `json:"user_id"`
	Lines    []line   `json:"lines"`
	Attempts int      `json:"attempts"`
	Outcome  string   `json:"outcome"` // confirmed, cancelled, or "unknown: <last code>"
	OrderID  string   `json:"order_id,omitempty"`
	Reason   string   `json:"reason,omitempty"`
	Codes    []string `json:"codes,omitempty"`
	token    string
}

type line struct {
	SKU      string `json:"sku"`
	Quantity int64  `json:"quantity"`
}

// traffic is the drill's client population: open-loop arrivals at fixed
// rates, whatever the platform's answers.
type traffic struct {
	edgeURL string
	http    *http.Client
	seed    uint64
	rate    float64
	wrongs  []string // wrong answers seen (a login reaching another account, ...)

	mu       sync.Mutex
	calls    []call
	accounts []*account
	unsure   []*account // registrations answered only by already_exists on a retry
	orders   []*orderRec
	acked    []*orderRec // orders acknowledged, for order views

	inflight  atomic.Int64
	saturated atomic.Int64
	seq       atomic.Int64
	wg        sync.WaitGroup

	users   userv1connect.UserServiceClient
	inv     inventoryv1connect.InventoryServiceClient
	front   storefrontv1connect.StorefrontServiceClient
	orders_ orderv1connect.OrderServiceClient
}

// maxInflight bounds the calls in flight; past it an arrival is dropped
// and counted, so a stuck platform cannot make the drill itself run out
// of memory.
const maxInflight = 3000

func newTraffic(edgeAddr string, seed uint64, rate float64) *traffic {
	t := &traffic{
		edgeURL: "http://" + edgeAddr, seed: seed, rate: rate,
		http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 512, MaxIdleConns: 512, IdleConnTimeout: 30 * time.Second}},
	}
	t.users = userv1connect.NewUserServiceClient(t.http, t.edgeURL)
	t.inv = inventoryv1connect.NewInventoryServiceClient(t.http, t.edgeURL)
	t.front = storefrontv1connect.NewStorefrontServiceClient(t.http, t.edgeURL)
	t.orders_ = orderv1connect.NewOrderServiceClient(t.http, t.edgeURL)
	return t
}

func codeOf(err error) string {
	if err == nil {
		return "ok"
	}
	return connect.CodeOf(err).String()
}

func (t *traffic) record(kind string, start time.Time, err error, attempt int) string {
	c := call{Kind: kind, Start: start, Latency: time.Since(start), Code: codeOf(err), Attempt: attempt}
	t.mu.Lock()
	t.calls = append(t.calls, c)
	t.mu.Unlock()
	return c.Code
}

func (t *traffic) wrong(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.wrongs = append(t.wrongs, fmt.Sprintf(format, args...))
}

// callTimeout is every client call's deadline.
const callTimeout = 5 * time.Second

func withBearer[T any](req *connect.Request[T], token string) *connect.Request[T] {
	if token != "" {
		req.Header().Set("Authorization", "Bearer "+token)
	}
	return req
}

// setupUsers registers and logs in n users before the drill, whose
// tokens place the orders.
func (t *traffic) setupUsers(ctx context.Context, n int) error {
	for i := range n {
		a := &account{Email: fmt.Sprintf("buyer-%d-%d@drill.example.com", t.seed, i), Password: fmt.Sprintf("correct horse %d", i)}
		res, err := t.users.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{Email: a.Email, Password: a.Password, DisplayName: fmt.Sprintf("Buyer %d", i)}))
		if err != nil {
			return fmt.Errorf("register buyer %d: %w", i, err)
		}
		a.ID = res.Msg.GetUser().GetId()
		login, err := t.users.Login(ctx, connect.NewRequest(&userv1.LoginRequest{Email: a.Email, Password: a.Password}))
		if err != nil {
			return fmt.Errorf("log buyer %d in: %w", i, err)
		}
		a.Token = login.Msg.GetAccessToken()
		t.accounts = append(t.accounts, a)
	}
	return nil
}

// run drives traffic until ctx is done: one goroutine of arrivals per
// kind, each arrival a call of its own (open loop).
func (t *traffic) run(ctx context.Context) {
	var gens sync.WaitGroup
	for i, kind := range kinds {
		rate := t.rate * perOrder[kind]
		if rate <= 0 {
			continue
		}
		gens.Add(1)
		go func() {
			defer gens.Done()
			rng := rand.New(rand.NewPCG(t.seed, uint64(i)+100))
			next := time.Now()
			for {
				// Poisson arrivals at the kind's rate.
				next = next.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Until(next)):
				}
				if t.inflight.Load() >= maxInflight {
					t.saturated.Add(1)
					continue
				}
				r := rng.Uint64()
				t.inflight.Add(1)
				t.wg.Add(1)
				go func() {
					defer t.wg.Done()
					defer t.inflight.Add(-1)
					t.one(kind, rand.New(rand.NewPCG(r, 7)))
				}()
			}
		}()
	}
	gens.Wait()
}

// wait waits for the calls in flight (an order's retries included).
func (t *traffic) wait() { t.wg.Wait() }

func (t *traffic) pickAccount(rng *rand.Rand) *account {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.accounts[rng.IntN(len(t.accounts))]
}

func (t *traffic) one(kind string, rng *rand.Rand) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	switch kind {
	case kindProduct:
		sku := catalogue[rng.IntN(len(catalogue))].SKU
		start := time.Now()
		res, err := t.front.GetProductPage(ctx, connect.NewRequest(&storefrontv1.GetProductPageRequest{Sku: sku}))
		t.record(kind, start, err, 1)
		if err == nil && res.Msg.GetItem().GetSku() != sku {
			t.wrong("product page of %s answered with item %q", sku, res.Msg.GetItem().GetSku())
		}
	case kindCatalogue:
		start := time.Now()
		_, err := t.inv.ListItems(ctx, connect.NewRequest(&inventoryv1.ListItemsRequest{PageSize: 10}))
		t.record(kind, start, err, 1)
	case kindLogin:
		a := t.pickAccount(rng)
		start := time.Now()
		res, err := t.users.Login(ctx, connect.NewRequest(&userv1.LoginRequest{Email: a.Email, Password: a.Password}))
		t.record(kind, start, err, 1)
		if err == nil && res.Msg.GetUser().GetId() != a.ID {
			t.wrong("login of %s (account %s) reached account %s (%s)", a.Email, a.ID, res.Msg.GetUser().GetId(), res.Msg.GetUser().GetEmail())
		}
	case kindRegister:
		t.register(rng)
	case kindOrder:
		t.placeOrder(rng)
	case kindOrderView:
		t.mu.Lock()
		if len(t.acked) == 0 {
			t.mu.Unlock()
			return
		}
		o := t.acked[rng.IntN(len(t.acked))]
		t.mu.Unlock()
		start := time.Now()
		res, err := t.front.GetOrderView(ctx, withBearer(connect.NewRequest(&storefrontv1.GetOrderViewRequest{OrderId: o.OrderID}), o.token))
		t.record(kind, start, err, 1)
		if err == nil && res.Msg.GetOrder().GetOrderId() != o.OrderID {
			t.wrong("order view of %s answered with order %q", o.OrderID, res.Msg.GetOrder().GetOrderId())
		}
	}
}

// retryable reports whether a client retries after code: the answer
// may not have been the platform's last word.
func retryable(code connect.Code) bool {
	switch code {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeUnknown, connect.CodeInternal,
		connect.CodeResourceExhausted, connect.CodeAborted, connect.CodeCanceled:
		return true
	}
	return false
}

// register registers a new account, retrying the same registration as
// a client would after an ambiguous failure.
func (t *traffic) register(rng *rand.Rand) {
	n := t.seq.Add(1)
	a := &account{Email: fmt.Sprintf("user-%d-%d@drill.example.com", t.seed, n), Password: fmt.Sprintf("pw %d %d", n, rng.IntN(1e6))}
	for attempt := 1; attempt <= 4; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		start := time.Now()
		res, err := t.users.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{Email: a.Email, Password: a.Password, DisplayName: "Drill user"}))
		cancel()
		t.record(kindRegister, start, err, attempt)
		if err == nil {
			a.ID = res.Msg.GetUser().GetId()
			t.mu.Lock()
			t.accounts = append(t.accounts, a)
			t.mu.Unlock()
			return
		}
		code := connect.CodeOf(err)
		if code == connect.CodeAlreadyExists && attempt > 1 {
			// An earlier attempt went through: the account exists; which
			// id it has only a login tells.
			t.mu.Lock()
			t.unsure = append(t.unsure, a)
			t.mu.Unlock()
			return
		}
		if !retryable(code) {
			return
		}
		time.Sleep(time.Duration(200*attempt) * time.Millisecond)
	}
}

// orderAttempts and orderRetryFor bound a client's retries of one order.
const (
	orderAttempts = 8
	orderRetryFor = 25 * time.Second
)

// placeOrder places an order and retries it under the same idempotency
// key until the platform answers for good, as a real client does.
func (t *traffic) placeOrder(rng *rand.Rand) {
	a := t.pickAccount(rng)
	for a.Token == "" {
		a = t.pickAccount(rng)
	}
	rec := &orderRec{Key: fmt.Sprintf("drill-%d-%d", t.seed, t.seq.Add(1)), UserID: a.ID, token: a.Token}
	switch r := rng.IntN(100); {
	case r < 8:
		rec.Lines = []line{{"DRILL-RARE", 1}}
	case r < 14:
		rec.Lines = []line{{"DRILL-GOLD", 1}, {"DRILL-TEA", 1}}
	case r < 60:
		rec.Lines = []line{{"DRILL-TEA", int64(1 + rng.IntN(3))}}
	default:
		rec.Lines = []line{{"DRILL-TEA", 1}, {"DRILL-MUG", int64(1 + rng.IntN(2))}}
	}
	req := &orderv1.PlaceOrderRequest{IdempotencyKey: rec.Key, UserId: rec.UserID}
	for _, l := range rec.Lines {
		req.Lines = append(req.Lines, &orderv1.OrderLine{Sku: l.SKU, Quantity: l.Quantity})
	}
	t.mu.Lock()
	t.orders = append(t.orders, rec)
	t.mu.Unlock()
	began := time.Now()
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		start := time.Now()
		res, err := t.orders_.PlaceOrder(ctx, withBearer(connect.NewRequest(req), rec.token))
		cancel()
		code := t.record(kindOrder, start, err, attempt)
		rec.Attempts = attempt
		rec.Codes = append(rec.Codes, code)
		if err == nil {
			t.ack(rec, res.Msg.GetOrder())
			return
		}
		if connect.CodeOf(err) == connect.CodeFailedPrecondition {
			if o := orderInError(err); o != nil {
				t.ack(rec, o)
				return
			}
		}
		if !retryable(connect.CodeOf(err)) || attempt >= orderAttempts || time.Since(began) > orderRetryFor {
			t.mu.Lock()
			rec.Outcome = "unknown: " + code
			t.mu.Unlock()
			return
		}
		time.Sleep(backoff/2 + time.Duration(rng.Int64N(int64(backoff))))
		backoff = min(2*backoff, 3*time.Second)
	}
}

func (t *traffic) ack(rec *orderRec, o *orderv1.Order) {
	t.mu.Lock()
	defer t.mu.Unlock()
	rec.OrderID, rec.Reason = o.GetOrderId(), o.GetFailureReason()
	switch o.GetStatus() {
	case orderv1.OrderStatus_ORDER_STATUS_CONFIRMED:
		rec.Outcome = "confirmed"
	case orderv1.OrderStatus_ORDER_STATUS_CANCELLED:
		rec.Outcome = "cancelled"
	default:
		rec.Outcome = "answered " + o.GetStatus().String()
	}
	t.acked = append(t.acked, rec)
}

// orderInError returns the order a failed_precondition carries.
func orderInError(err error) *orderv1.Order {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return nil
	}
	for _, d := range ce.Details() {
		if v, _ := d.Value(); v != nil {
			if o, ok := v.(*orderv1.Order); ok {
				return o
			}
		}
	}
	return nil
}

// snapshot returns a copy of the calls so far.
func (t *traffic) snapshot() []call {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]call(nil), t.calls...)
}
