package handler_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	storefrontv1 "github.com/keelplatform/keel/gen/go/shop/storefront/v1"
	"github.com/keelplatform/keel/services/storefront/internal/handler"
)

// inventory answers GetItem with err, or an item.
type inventory struct {
	inventoryv1connect.InventoryServiceClient
	err error
}

func (f inventory) GetItem(_ context.Context, req *connect.Request[inventoryv1.GetItemRequest]) (*connect.Response[inventoryv1.GetItemResponse], error) {
	if f.err != nil {
		return nil, f.err
	}
	return connect.NewResponse(&inventoryv1.GetItemResponse{Item: &inventoryv1.Item{Sku: req.Msg.GetSku()}}), nil
}

// orders answers GetOrder with err, or an order with no lines.
type orders struct {
	orderv1connect.OrderServiceClient
	err error
}

func (f orders) GetOrder(_ context.Context, req *connect.Request[orderv1.GetOrderRequest]) (*connect.Response[orderv1.GetOrderResponse], error) {
	if f.err != nil {
		return nil, f.err
	}
	return connect.NewResponse(&orderv1.GetOrderResponse{Order: &orderv1.Order{OrderId: req.Msg.GetOrderId()}}), nil
}

var limits = handler.Limits{Inventory: time.Second, Order: time.Second, Payment: time.Second, User: time.Second, MaxItemLookups: 4}

// TestEssentialErrors: what a failed essential read answers, for each
// error of the peer: its code, a message that names the resource, and
// nothing of the cause, which is logged instead.
func TestEssentialErrors(t *testing.T) {
	const secret = "dial tcp 10.1.2.3:5432: db01 exploded"
	cases := []struct {
		name     string
		err      error
		code     connect.Code
		message  string // the whole message, after the resource's name
		logCause bool
	}{
		{"not found", connect.NewError(connect.CodeNotFound, errors.New(secret)), connect.CodeNotFound, "not found", false},
		{"unavailable", connect.NewError(connect.CodeUnavailable, errors.New(secret)), connect.CodeUnavailable, "service is unavailable; retry", true},
		{"shedding load", connect.NewError(connect.CodeResourceExhausted, errors.New(secret)), connect.CodeUnavailable, "service is unavailable; retry", true},
		{"its deadline", connect.NewError(connect.CodeDeadlineExceeded, errors.New(secret)), connect.CodeUnavailable, "service did not answer in time; retry", true},
		{"internal", connect.NewError(connect.CodeInternal, errors.New(secret)), connect.CodeInternal, "internal error", true},
		{"no Connect error", errors.New(secret), connect.CodeInternal, "internal error", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, read := range []struct {
				name     string
				resource string
				call     func(h *handler.Handler) error
			}{
				{"GetProductPage", "item MUG", func(h *handler.Handler) error {
					_, err := h.GetProductPage(t.Context(), connect.NewRequest(&storefrontv1.GetProductPageRequest{Sku: "MUG"}))
					return err
				}},
				{"GetOrderView", "order o-1", func(h *handler.Handler) error {
					_, err := h.GetOrderView(t.Context(), connect.NewRequest(&storefrontv1.GetOrderViewRequest{OrderId: "o-1"}))
					return err
				}},
			} {
				var logs bytes.Buffer
				h := handler.New(handler.Peers{Inventory: inventory{err: tc.err}, Orders: orders{err: tc.err}}, limits,
					slog.New(slog.NewTextHandler(&logs, nil)))
				err := read.call(h)
				ce, ok := errors.AsType[*connect.Error](err)
				if !ok || ce.Code() != tc.code {
					t.Fatalf("%s: %v, want %s", read.name, err, tc.code)
				}
				if strings.Contains(ce.Message(), "db01") || !strings.HasSuffix(ce.Message(), tc.message) ||
					tc.code != connect.CodeInternal && !strings.HasPrefix(ce.Message(), read.resource) {
					t.Errorf("%s: message %q, want %q naming %q and nothing more", read.name, ce.Message(), tc.message, read.resource)
				}
				if logged := strings.Contains(logs.String(), "db01"); logged != tc.logCause {
					t.Errorf("%s: cause logged %v, want %v; logs:\n%s", read.name, logged, tc.logCause, logs.String())
				}
			}
		})
	}
}

// TestRequestErrorsPassThrough: the peer's answer about the caller's
// request (a field, who may read what) is the caller's, word for word.
func TestRequestErrorsPassThrough(t *testing.T) {
	for _, code := range []connect.Code{connect.CodeInvalidArgument, connect.CodePermissionDenied, connect.CodeUnauthenticated} {
		peerErr := connect.NewError(code, errors.New("order o-1 is not the caller's"))
		h := handler.New(handler.Peers{Orders: orders{err: peerErr}}, limits, slog.New(slog.DiscardHandler))
		_, err := h.GetOrderView(t.Context(), connect.NewRequest(&storefrontv1.GetOrderViewRequest{OrderId: "o-1"}))
		if ce, ok := errors.AsType[*connect.Error](err); !ok || ce.Code() != code || ce.Message() != "order o-1 is not the caller's" {
			t.Errorf("peer's %s: got %v", code, err)
		}
	}
}

// TestCallerGone: when the caller's own call has ended, its code says so,
// whatever the peer said.
func TestCallerGone(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	h := handler.New(handler.Peers{Inventory: inventory{err: connect.NewError(connect.CodeCanceled, context.Canceled)}}, limits, slog.New(slog.DiscardHandler))
	_, err := h.GetProductPage(ctx, connect.NewRequest(&storefrontv1.GetProductPageRequest{Sku: "MUG"}))
	if connect.CodeOf(err) != connect.CodeCanceled {
		t.Fatalf("GetProductPage of a caller gone: %v, want canceled", err)
	}
}

// TestInStock: in stock means at least one unit available.
func TestInStock(t *testing.T) {
	for _, tc := range []struct {
		available int64
		want      bool
	}{{0, false}, {1, true}, {500, true}} {
		h := handler.New(handler.Peers{Inventory: stock{available: tc.available}}, limits, slog.New(slog.DiscardHandler))
		res, err := h.GetProductPage(t.Context(), connect.NewRequest(&storefrontv1.GetProductPageRequest{Sku: "MUG"}))
		if err != nil {
			t.Fatal(err)
		}
		if res.Msg.GetInStock() != tc.want || len(res.Msg.GetDegraded()) != 0 {
			t.Errorf("available %d: in stock %v, degraded %v; want %v, none", tc.available, res.Msg.GetInStock(), res.Msg.GetDegraded(), tc.want)
		}
	}
}

// stock answers GetItem with an item of that many available.
type stock struct {
	inventoryv1connect.InventoryServiceClient
	available int64
}

func (s stock) GetItem(_ context.Context, req *connect.Request[inventoryv1.GetItemRequest]) (*connect.Response[inventoryv1.GetItemResponse], error) {
	return connect.NewResponse(&inventoryv1.GetItemResponse{Item: &inventoryv1.Item{Sku: req.Msg.GetSku(), Available: s.available}}), nil
}
