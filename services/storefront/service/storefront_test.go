package service_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	storefrontv1 "github.com/keelplatform/keel/gen/go/shop/storefront/v1"
)

// margin is how much later than its deadline a call may answer in these
// tests: generous, for a loaded machine, and still far below how long a
// stuck peer would hold the call.
const margin = 1500 * time.Millisecond

// productPage asks the storefront for the product page of sku, and says
// how long it took.
func (s *shop) productPage(ctx context.Context, sku string) (*storefrontv1.GetProductPageResponse, time.Duration, error) {
	start := time.Now()
	res, err := s.front.GetProductPage(ctx, connect.NewRequest(&storefrontv1.GetProductPageRequest{Sku: sku}))
	if err != nil {
		return nil, time.Since(start), err
	}
	return res.Msg, time.Since(start), nil
}

// orderView asks the storefront for the view of order id, and says how
// long it took.
func (s *shop) orderView(ctx context.Context, id string) (*storefrontv1.GetOrderViewResponse, time.Duration, error) {
	start := time.Now()
	res, err := s.front.GetOrderView(ctx, connect.NewRequest(&storefrontv1.GetOrderViewRequest{OrderId: id}))
	if err != nil {
		return nil, time.Since(start), err
	}
	return res.Msg, time.Since(start), nil
}

// wantCode checks that err is a Connect error with code whose message
// holds every one of phrases and says nothing of the machinery behind
// it.
func wantCode(t *testing.T, what string, err error, code connect.Code, phrases ...string) {
	t.Helper()
	ce, ok := errors.AsType[*connect.Error](err)
	if !ok || ce.Code() != code {
		t.Fatalf("%s: %v, want %s", what, err, code)
	}
	for _, p := range phrases {
		if !strings.Contains(ce.Message(), p) {
			t.Errorf("%s: message %q does not name %q", what, ce.Message(), p)
		}
	}
	for _, leak := range []string{"127.0.0.1", "dial", "refused", "instances", "resolve", "context deadline", "http://"} {
		if strings.Contains(ce.Message(), leak) {
			t.Errorf("%s: message %q tells of the internals (%q)", what, ce.Message(), leak)
		}
	}
}

// wantWholeView checks that v is the whole view of s's order: the order,
// each line with its item, the payment and the buyer, nothing degraded.
func (s *shop) wantWholeView(v *storefrontv1.GetOrderViewResponse) {
	s.t.Helper()
	if len(v.GetDegraded()) != 0 {
		s.t.Errorf("degraded %v, want none", v.GetDegraded())
	}
	s.wantOrder(v)
	s.wantItems(v)
	s.wantPayment(v)
	if v.GetBuyerDisplayName() != "Ada" {
		s.t.Errorf("buyer %q, want Ada", v.GetBuyerDisplayName())
	}
}

// wantOrder checks that v holds s's order and one view line per order
// line, in order.
func (s *shop) wantOrder(v *storefrontv1.GetOrderViewResponse) {
	s.t.Helper()
	if !proto.Equal(v.GetOrder(), s.order) {
		s.t.Fatalf("order %v, want %v", v.GetOrder(), s.order)
	}
	if len(v.GetLines()) != len(s.order.GetLines()) {
		s.t.Fatalf("%d lines, want %d", len(v.GetLines()), len(s.order.GetLines()))
	}
	for i, l := range v.GetLines() {
		if !proto.Equal(l.GetLine(), s.order.GetLines()[i]) {
			s.t.Errorf("lines[%d].line %v, want %v", i, l.GetLine(), s.order.GetLines()[i])
		}
	}
}

// wantItems checks that every line of v has its item, as it is now.
func (s *shop) wantItems(v *storefrontv1.GetOrderViewResponse) {
	s.t.Helper()
	for i, l := range v.GetLines() {
		it := l.GetItem()
		if it.GetSku() != l.GetLine().GetSku() || it.GetName() != "The "+it.GetSku() ||
			it.GetPrice().GetAmountMinor() != l.GetLine().GetUnitPrice().GetAmountMinor() {
			s.t.Errorf("lines[%d].item %v, want the item %s", i, it, l.GetLine().GetSku())
		}
	}
}

// wantPayment checks that v has the order's payment.
func (s *shop) wantPayment(v *storefrontv1.GetOrderViewResponse) {
	s.t.Helper()
	p := v.GetPayment()
	if p.GetPaymentId() != s.order.GetPaymentId() || p.GetOrderId() != s.order.GetOrderId() ||
		!proto.Equal(p.GetAmount(), s.order.GetTotal()) {
		s.t.Errorf("payment %v, want %s of %v", p, s.order.GetPaymentId(), s.order.GetTotal())
	}
}

// TestProductPage: a product page is the item from the inventory, in
// stock when some is available; an unknown sku is not_found naming it.
func TestProductPage(t *testing.T) {
	t.Parallel()
	s := newShop(t, shopOptions{})
	ctx := t.Context()
	for _, tc := range []struct {
		sku       string
		available int64
		inStock   bool
	}{
		{"TEA", teaStock - 1, true},
		{"MUG", 0, false}, // both ordered
	} {
		page, _, err := s.productPage(ctx, tc.sku)
		if err != nil {
			t.Fatalf("%s: %v", tc.sku, err)
		}
		it := page.GetItem()
		if it.GetSku() != tc.sku || it.GetName() != "The "+tc.sku || it.GetAvailable() != tc.available ||
			page.GetInStock() != tc.inStock || len(page.GetDegraded()) != 0 {
			t.Errorf("%s: page %v, want available %d, in stock %v", tc.sku, page, tc.available, tc.inStock)
		}
	}
	_, _, err := s.productPage(ctx, "NOPE")
	wantCode(t, "GetProductPage of an unknown sku", err, connect.CodeNotFound, "NOPE")
	_, _, err = s.productPage(ctx, "")
	wantCode(t, "GetProductPage without a sku", err, connect.CodeInvalidArgument, "sku")
	_, _, err = s.productPage(ctx, strings.Repeat("X", 65))
	wantCode(t, "GetProductPage with a long sku", err, connect.CodeInvalidArgument, "sku")
}

// TestOrderView: an order view is the order with each line's item, the
// payment and the buyer's name; an unknown order is not_found naming it.
func TestOrderView(t *testing.T) {
	t.Parallel()
	s := newShop(t, shopOptions{})
	ctx := t.Context()
	v, _, err := s.orderView(ctx, s.order.GetOrderId())
	if err != nil {
		t.Fatal(err)
	}
	s.wantWholeView(v)
	if it := v.GetLines()[0].GetItem(); it.GetSku() != "MUG" || it.GetAvailable() != 0 {
		t.Errorf("MUG as it is now: %v, want none available", it)
	}

	const unknown = "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"
	_, _, err = s.orderView(ctx, unknown)
	wantCode(t, "GetOrderView of an unknown order", err, connect.CodeNotFound, "order "+unknown)
	_, _, err = s.orderView(ctx, "")
	wantCode(t, "GetOrderView without an order id", err, connect.CodeInvalidArgument, "order_id")
}

// failure is how a dependency fails.
type failure struct {
	name string
	// apply makes the service fail in s.
	apply func(s *shop, service string)
	// slow: the calls hang until their deadline, rather than fail at once.
	slow bool
}

var failures = []failure{
	{name: "stopped", apply: func(s *shop, service string) { s.kill(service) }},
	{name: "crashed", apply: func(s *shop, service string) { s.peers[service].gate.crash() }},
	{name: "stuck", apply: func(s *shop, service string) { s.peers[service].gate.stuck() }, slow: true},
}

// TestDependencyFails fails each service the storefront reads from in
// turn (stopped and out of discovery, crashed while still registered,
// up but never answering) and checks both reads: an essential part that
// fails fails the call with unavailable, an optional one is left out and
// named in degraded while the call succeeds; either way the answer comes
// by the dependency's deadline, plus a margin, and for a stuck peer not
// before it.
func TestDependencyFails(t *testing.T) {
	t.Parallel()
	const deadline = time.Second
	vars := map[string]string{
		"KEEL_DEPENDENCIES_INVENTORY_TIMEOUT": deadline.String(),
		"KEEL_DEPENDENCIES_ORDER_TIMEOUT":     deadline.String(),
		"KEEL_DEPENDENCIES_PAYMENT_TIMEOUT":   deadline.String(),
		"KEEL_DEPENDENCIES_USER_TIMEOUT":      deadline.String(),
	}
	// timely checks how long a call that met the failing service took.
	timely := func(t *testing.T, what string, f failure, took time.Duration) {
		t.Helper()
		if took > deadline+margin {
			t.Errorf("%s took %v, past the dependency's deadline %v (+ %v)", what, took, deadline, margin)
		}
		if f.slow && took < deadline {
			t.Errorf("%s took %v, before the dependency's deadline %v: it did not wait for the peer", what, took, deadline)
		}
	}
	for _, service := range []string{"inventory", "order", "payment", "user"} {
		for _, f := range failures {
			t.Run(service+"/"+f.name, func(t *testing.T) {
				t.Parallel()
				s := newShop(t, shopOptions{storefront: vars})
				ctx := t.Context()
				f.apply(s, service)

				page, took, err := s.productPage(ctx, "TEA")
				if service == "inventory" {
					wantCode(t, "GetProductPage", err, connect.CodeUnavailable, "item TEA", "inventory")
					timely(t, "GetProductPage", f, took)
				} else if err != nil || page.GetItem().GetSku() != "TEA" || len(page.GetDegraded()) != 0 {
					t.Errorf("GetProductPage with %s %s: %v, %v; want the page, whole", service, f.name, page, err)
				}

				v, took, err := s.orderView(ctx, s.order.GetOrderId())
				if service == "order" {
					wantCode(t, "GetOrderView", err, connect.CodeUnavailable, "order "+s.order.GetOrderId(), "order service")
					timely(t, "GetOrderView", f, took)
					return
				}
				if err != nil {
					t.Fatalf("GetOrderView with %s %s: %v; want a degraded view", service, f.name, err)
				}
				timely(t, "GetOrderView", f, took)
				s.wantOrder(v)
				part := map[string]string{"inventory": "items", "payment": "payment", "user": "buyer"}[service]
				if !slices.Equal(v.GetDegraded(), []string{part}) {
					t.Errorf("degraded %v, want [%s]", v.GetDegraded(), part)
				}
				switch service {
				case "inventory":
					for i, l := range v.GetLines() {
						if l.GetItem() != nil {
							t.Errorf("lines[%d].item %v, want none", i, l.GetItem())
						}
					}
				default:
					s.wantItems(v)
				}
				if service == "payment" {
					if v.GetPayment() != nil {
						t.Errorf("payment %v, want none", v.GetPayment())
					}
				} else {
					s.wantPayment(v)
				}
				if want := map[bool]string{true: "", false: "Ada"}[service == "user"]; v.GetBuyerDisplayName() != want {
					t.Errorf("buyer %q, want %q", v.GetBuyerDisplayName(), want)
				}
			})
		}
	}
}

// TestOrderViewFansOut: the optional parts are read at once, not one
// after the other: with the inventory, the payment and the user service
// each slowed to well within its deadline, the view takes about the time
// of one, far less than their sum, and is whole.
func TestOrderViewFansOut(t *testing.T) {
	const (
		delay    = 1500 * time.Millisecond
		deadline = 4 * time.Second
	)
	s := newShop(t, shopOptions{storefront: map[string]string{
		"KEEL_DEPENDENCIES_INVENTORY_TIMEOUT": deadline.String(),
		"KEEL_DEPENDENCIES_PAYMENT_TIMEOUT":   deadline.String(),
		"KEEL_DEPENDENCIES_USER_TIMEOUT":      deadline.String(),
	}})
	for _, service := range []string{"inventory", "payment", "user"} {
		s.peers[service].gate.slow(delay)
	}
	v, took, err := s.orderView(t.Context(), s.order.GetOrderId())
	if err != nil {
		t.Fatal(err)
	}
	s.wantWholeView(v)
	if took < delay {
		t.Fatalf("the view took %v, less than one slowed read (%v): were the gates slow?", took, delay)
	}
	// In sequence the three parts would take 3 x 1.5s = 4.5s; at once,
	// 1.5s and a little.
	if limit := 2 * delay; took >= limit {
		t.Errorf("the view took %v, at least %v: the parts were not read in parallel", took, limit)
	}
	if n := s.peers["inventory"].gate.peak.Load(); n != int64(len(s.order.GetLines())) {
		t.Errorf("%d item reads at once, want the %d lines' at once", n, len(s.order.GetLines()))
	}
}

// TestItemLookupsBounded: an order view of a long order reads its items
// at most item_lookups/max_concurrent at once, and all of them within
// the inventory's one deadline: held at the inventory, only that many
// reads are made, and the view comes by the deadline without items.
func TestItemLookupsBounded(t *testing.T) {
	t.Parallel()
	const (
		lookups  = 3
		lines    = 12
		deadline = 2 * time.Second
	)
	s := newShop(t, shopOptions{extraItems: skus(lines), storefront: map[string]string{
		"KEEL_ITEM_LOOKUPS_MAX_CONCURRENT":    fmt.Sprint(lookups),
		"KEEL_DEPENDENCIES_INVENTORY_TIMEOUT": deadline.String(),
	}})
	var order []any
	for _, sku := range skus(lines) {
		order = append(order, sku, 1)
	}
	long := s.place("order-long-one", order...)
	inventory := s.peers["inventory"].gate

	// Held first: its reads end at the storefront's deadline, which says
	// how long the storefront waits, not that the inventory is failing,
	// so the call policy's throttle (one per method) does not count them
	// and the reads of the slowed view that follows are all sent.
	t.Run("held", func(t *testing.T) {
		inventory.reset(t)
		inventory.hold()
		v, took, err := s.orderView(t.Context(), long.GetOrderId())
		inventory.release()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(v.GetDegraded(), []string{"items"}) {
			t.Errorf("degraded %v, want [items]", v.GetDegraded())
		}
		for i, l := range v.GetLines() {
			if l.GetItem() != nil {
				t.Errorf("lines[%d] has its item %v, want none", i, l.GetItem())
			}
		}
		if took < deadline || took > deadline+margin {
			t.Errorf("the view took %v, want the inventory's deadline %v (+ %v)", took, deadline, margin)
		}
		if calls, peak := inventory.calls.Load(), inventory.peak.Load(); calls != lookups || peak != lookups {
			t.Errorf("the inventory got %d item reads, %d at once; want %d, all at once", calls, peak, lookups)
		}
	})
	t.Run("slowed", func(t *testing.T) {
		inventory.reset(t)
		inventory.slow(20 * time.Millisecond)
		v, _, err := s.orderView(t.Context(), long.GetOrderId())
		inventory.slow(0)
		if err != nil {
			t.Fatal(err)
		}
		if len(v.GetDegraded()) != 0 || len(v.GetLines()) != lines {
			t.Fatalf("degraded %v, %d lines; want %d, whole", v.GetDegraded(), len(v.GetLines()), lines)
		}
		for i, l := range v.GetLines() {
			if l.GetItem().GetSku() != skus(lines)[i] {
				t.Errorf("lines[%d].item %v, want %s", i, l.GetItem(), skus(lines)[i])
			}
		}
		if calls, peak := inventory.calls.Load(), inventory.peak.Load(); calls != lines || peak > lookups {
			t.Errorf("the inventory got %d item reads, %d at once; want %d, at most %d at once", calls, peak, lines, lookups)
		}
	})
}

// TestCallerDeadlineComesFirst: when the caller's deadline comes before a
// part's, the part is given up in time for the caller to get the view
// without it, rather than nothing.
func TestCallerDeadlineComesFirst(t *testing.T) {
	const callerDeadline = 2 * time.Second
	s := newShop(t, shopOptions{storefront: map[string]string{"KEEL_DEPENDENCIES_PAYMENT_TIMEOUT": "30s"}})
	s.peers["payment"].gate.stuck()
	ctx, cancel := context.WithTimeout(t.Context(), callerDeadline)
	defer cancel()
	v, took, err := s.orderView(ctx, s.order.GetOrderId())
	if err != nil {
		t.Fatalf("GetOrderView within %v: %v (after %v); want the view without its payment", callerDeadline, err, took)
	}
	if !slices.Equal(v.GetDegraded(), []string{"payment"}) || v.GetPayment() != nil {
		t.Errorf("degraded %v, payment %v; want the payment degraded", v.GetDegraded(), v.GetPayment())
	}
	s.wantItems(v)
	if took < callerDeadline*9/10 {
		t.Errorf("the view came after %v, long before the caller's deadline %v: the payment was given up too early", took, callerDeadline)
	}
}

// TestDeadlinesFollowKV: a dependency's deadline changed in KV applies to
// the next calls, without a restart, both ways.
func TestDeadlinesFollowKV(t *testing.T) {
	t.Parallel()
	const delay = time.Second
	// KV holds the payment's deadline: the environment would override it.
	s := newShop(t, shopOptions{
		storefront: map[string]string{"KEEL_DEPENDENCIES_PAYMENT_TIMEOUT": ""},
		kv:         map[string]string{"dependencies/payment/timeout": "5s"},
	})
	s.peers["payment"].gate.slow(delay)
	ctx := t.Context()

	v, _, err := s.orderView(ctx, s.order.GetOrderId())
	if err != nil {
		t.Fatal(err)
	}
	s.wantWholeView(v) // 1s is within the 5s deadline

	before := s.configVersion()
	s.kv.Set("dependencies/payment/timeout", "100ms")
	eventually(t, "the storefront applies the KV change", func() error {
		if v := s.configVersion(); v == before {
			return fmt.Errorf("configuration version still %d", v)
		}
		return nil
	})
	// The subscriber runs a moment after the status shows the change.
	eventually(t, "the payment is given up after the new deadline", func() error {
		v, took, err := s.orderView(ctx, s.order.GetOrderId())
		switch {
		case err != nil:
			return err
		case !slices.Equal(v.GetDegraded(), []string{"payment"}):
			return fmt.Errorf("degraded %v, want [payment]", v.GetDegraded())
		case took >= delay:
			return fmt.Errorf("took %v, as long as the payment", took)
		}
		return nil
	})

	s.kv.Set("dependencies/payment/timeout", "5s")
	eventually(t, "the payment is waited for again", func() error {
		v, _, err := s.orderView(ctx, s.order.GetOrderId())
		if err != nil {
			return err
		}
		if len(v.GetDegraded()) != 0 {
			return fmt.Errorf("degraded %v", v.GetDegraded())
		}
		return nil
	})
}
