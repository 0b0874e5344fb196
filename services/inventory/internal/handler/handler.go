// Package handler serves the shop.inventory.v1.InventoryService contract:
// it adapts each RPC to the stock store and maps domain errors to Connect
// codes. Messages name the bad field or the missing resource and nothing
// more: internal causes are logged, not sent.
package handler

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	"github.com/keelplatform/keel/services/inventory/internal/stock"
)

const (
	defaultPageSize = 50
	maxPageSize     = 500
)

// Store is what the handler needs of the inventory's database.
type Store interface {
	CreateItem(ctx context.Context, requestID string, it stock.Item) (stock.Item, error)
	Restock(ctx context.Context, requestID, sku string, quantity int64) (stock.Item, error)
	GetItem(ctx context.Context, sku string) (stock.Item, error)
	ListItems(ctx context.Context, size int, after string) ([]stock.Item, bool, error)
	Reserve(ctx context.Context, id string, lines []stock.Line, expire time.Time) (stock.Reservation, error)
	Commit(ctx context.Context, id string) (stock.Reservation, error)
	Release(ctx context.Context, id string) (stock.Reservation, bool, error)
}

// Items reads items through a cache and is told of changes. [Direct]
// reads the store every time.
type Items interface {
	// Get returns the item with the sku, or [stock.ErrNotFound].
	Get(ctx context.Context, sku string) (stock.Item, error)
	// Changed tells the cache an item changed (or was created).
	Changed(ctx context.Context, sku string)
}

// Direct is [Items] without a cache.
type Direct struct{ Store Store }

// Get implements [Items].
func (d Direct) Get(ctx context.Context, sku string) (stock.Item, error) {
	return d.Store.GetItem(ctx, sku)
}

// Changed implements [Items].
func (Direct) Changed(context.Context, string) {}

// Handler implements [inventoryv1connect.InventoryServiceHandler]. It is
// safe for concurrent use.
type Handler struct {
	store  Store
	items  Items
	logger *slog.Logger
	// holdFor is how long a reservation holds stock before it expires,
	// in nanoseconds; configuration may change it.
	holdFor atomic.Int64
}

var _ inventoryv1connect.InventoryServiceHandler = (*Handler)(nil)

// New returns a handler over store, reading items through items, holding
// reservations for holdFor.
func New(store Store, items Items, holdFor time.Duration, logger *slog.Logger) *Handler {
	h := &Handler{store: store, items: items, logger: logger}
	h.SetHoldFor(holdFor)
	return h
}

// SetHoldFor changes how long new reservations hold stock.
func (h *Handler) SetHoldFor(d time.Duration) {
	if d > 0 {
		h.holdFor.Store(int64(d))
	}
}

// CreateItem implements [inventoryv1connect.InventoryServiceHandler.CreateItem].
func (h *Handler) CreateItem(ctx context.Context, req *connect.Request[inventoryv1.CreateItemRequest]) (*connect.Response[inventoryv1.CreateItemResponse], error) {
	m := req.Msg
	if m.GetRequestId() == "" {
		return nil, invalid("request_id is required")
	}
	if m.GetPrice() == nil || m.GetPrice().GetCurrencyCode() == "" {
		return nil, invalid("price is required")
	}
	if m.GetInitialStock() < 0 {
		return nil, invalid("initial_stock must not be negative")
	}
	it, err := h.store.CreateItem(ctx, m.GetRequestId(), stock.Item{
		SKU: m.GetSku(), Name: m.GetName(), Description: m.GetDescription(),
		Currency: m.GetPrice().GetCurrencyCode(), PriceMinor: m.GetPrice().GetAmountMinor(), Available: m.GetInitialStock(),
	})
	switch {
	case errors.Is(err, stock.ErrExists):
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("sku %s already exists", m.GetSku()))
	case err != nil:
		return nil, h.internal(ctx, req.Spec(), err)
	}
	h.items.Changed(ctx, it.SKU)
	return connect.NewResponse(&inventoryv1.CreateItemResponse{Item: toProto(it)}), nil
}

// GetItem implements [inventoryv1connect.InventoryServiceHandler.GetItem].
func (h *Handler) GetItem(ctx context.Context, req *connect.Request[inventoryv1.GetItemRequest]) (*connect.Response[inventoryv1.GetItemResponse], error) {
	it, err := h.items.Get(ctx, req.Msg.GetSku())
	if err != nil {
		return nil, h.lookup(ctx, req.Spec(), req.Msg.GetSku(), err)
	}
	return connect.NewResponse(&inventoryv1.GetItemResponse{Item: toProto(it)}), nil
}

// ListItems implements [inventoryv1connect.InventoryServiceHandler.ListItems].
func (h *Handler) ListItems(ctx context.Context, req *connect.Request[inventoryv1.ListItemsRequest]) (*connect.Response[inventoryv1.ListItemsResponse], error) {
	size := int(req.Msg.GetPageSize())
	switch {
	case size == 0:
		size = defaultPageSize
	case size < 0 || size > maxPageSize:
		return nil, invalid(fmt.Sprintf("page_size must be between 0 and %d", maxPageSize))
	}
	after := ""
	if tok := req.Msg.GetPageToken(); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || len(b) < 2 || b[0] != 1 {
			return nil, invalid("page_token is invalid")
		}
		after = string(b[1:])
	}
	items, more, err := h.store.ListItems(ctx, size, after)
	if err != nil {
		return nil, h.internal(ctx, req.Spec(), err)
	}
	res := &inventoryv1.ListItemsResponse{Items: make([]*inventoryv1.Item, len(items))}
	for i, it := range items {
		res.Items[i] = toProto(it)
	}
	if more && len(items) > 0 {
		// A page token is a version byte and the last sku, opaque to
		// callers.
		res.NextPageToken = base64.RawURLEncoding.EncodeToString(append([]byte{1}, items[len(items)-1].SKU...))
	}
	return connect.NewResponse(res), nil
}

// RestockItem implements [inventoryv1connect.InventoryServiceHandler.RestockItem].
func (h *Handler) RestockItem(ctx context.Context, req *connect.Request[inventoryv1.RestockItemRequest]) (*connect.Response[inventoryv1.RestockItemResponse], error) {
	if req.Msg.GetRequestId() == "" {
		return nil, invalid("request_id is required")
	}
	if req.Msg.GetQuantity() <= 0 {
		return nil, invalid("quantity must be at least 1")
	}
	it, err := h.store.Restock(ctx, req.Msg.GetRequestId(), req.Msg.GetSku(), req.Msg.GetQuantity())
	if err != nil {
		return nil, h.lookup(ctx, req.Spec(), req.Msg.GetSku(), err)
	}
	h.items.Changed(ctx, it.SKU)
	return connect.NewResponse(&inventoryv1.RestockItemResponse{Item: toProto(it)}), nil
}

// ReserveStock implements [inventoryv1connect.InventoryServiceHandler.ReserveStock].
func (h *Handler) ReserveStock(ctx context.Context, req *connect.Request[inventoryv1.ReserveStockRequest]) (*connect.Response[inventoryv1.ReserveStockResponse], error) {
	if req.Msg.GetReservationId() == "" {
		return nil, invalid("reservation_id is required")
	}
	if len(req.Msg.GetLines()) == 0 {
		return nil, invalid("lines must hold at least one line")
	}
	seen := map[string]bool{}
	lines := make([]stock.Line, 0, len(req.Msg.GetLines()))
	for _, l := range req.Msg.GetLines() {
		if l.GetQuantity() <= 0 {
			return nil, invalid(fmt.Sprintf("lines: quantity of %s must be at least 1", l.GetSku()))
		}
		if seen[l.GetSku()] {
			return nil, invalid(fmt.Sprintf("lines: sku %s appears more than once", l.GetSku()))
		}
		seen[l.GetSku()] = true
		lines = append(lines, stock.Line{SKU: l.GetSku(), Quantity: l.GetQuantity()})
	}
	r, err := h.store.Reserve(ctx, req.Msg.GetReservationId(), lines, time.Now().Add(time.Duration(h.holdFor.Load())))
	var short *stock.InsufficientError
	switch {
	case errors.As(err, &short):
		cerr := connect.NewError(connect.CodeFailedPrecondition, short)
		if d, derr := connect.NewErrorDetail(&inventoryv1.InsufficientStock{Sku: short.SKU, Requested: short.Requested, Available: short.Available}); derr == nil {
			cerr.AddDetail(d)
		}
		return nil, cerr
	case errors.Is(err, stock.ErrNotFound):
		return nil, connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, stock.ErrConflict):
		return nil, invalid(fmt.Sprintf("reservation_id %s was used with other lines", req.Msg.GetReservationId()))
	case err != nil:
		return nil, h.internal(ctx, req.Spec(), err)
	}
	for _, l := range lines {
		h.items.Changed(ctx, l.SKU)
	}
	return connect.NewResponse(&inventoryv1.ReserveStockResponse{Reservation: reservationProto(r)}), nil
}

// CommitReservation implements [inventoryv1connect.InventoryServiceHandler.CommitReservation].
func (h *Handler) CommitReservation(ctx context.Context, req *connect.Request[inventoryv1.CommitReservationRequest]) (*connect.Response[inventoryv1.CommitReservationResponse], error) {
	r, err := h.store.Commit(ctx, req.Msg.GetReservationId())
	switch {
	case errors.Is(err, stock.ErrNotFound):
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("reservation %s not found", req.Msg.GetReservationId()))
	case errors.Is(err, stock.ErrWrongState):
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
	case err != nil:
		return nil, h.internal(ctx, req.Spec(), err)
	}
	h.changed(ctx, r)
	return connect.NewResponse(&inventoryv1.CommitReservationResponse{Reservation: reservationProto(r)}), nil
}

// ReleaseReservation implements [inventoryv1connect.InventoryServiceHandler.ReleaseReservation].
func (h *Handler) ReleaseReservation(ctx context.Context, req *connect.Request[inventoryv1.ReleaseReservationRequest]) (*connect.Response[inventoryv1.ReleaseReservationResponse], error) {
	r, ok, err := h.store.Release(ctx, req.Msg.GetReservationId())
	switch {
	case errors.Is(err, stock.ErrWrongState):
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
	case err != nil:
		return nil, h.internal(ctx, req.Spec(), err)
	}
	res := &inventoryv1.ReleaseReservationResponse{}
	if ok {
		h.changed(ctx, r)
		res.Reservation = reservationProto(r)
	}
	return connect.NewResponse(res), nil
}

func (h *Handler) changed(ctx context.Context, r stock.Reservation) {
	for _, l := range r.Lines {
		h.items.Changed(ctx, l.SKU)
	}
}

// lookup maps the error of an operation on one item.
func (h *Handler) lookup(ctx context.Context, spec connect.Spec, sku string, err error) error {
	if errors.Is(err, stock.ErrNotFound) {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("item %s not found", sku))
	}
	return h.internal(ctx, spec, err)
}

// internal logs err and returns a Connect error that says nothing about it.
func (h *Handler) internal(ctx context.Context, spec connect.Spec, err error) error {
	h.logger.ErrorContext(ctx, "inventory service: internal error", slog.String("procedure", spec.Procedure), slog.Any("error", err))
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

func invalid(msg string) error {
	return connect.NewError(connect.CodeInvalidArgument, errors.New(msg))
}

func toProto(it stock.Item) *inventoryv1.Item {
	return &inventoryv1.Item{
		Sku: it.SKU, Name: it.Name, Description: it.Description,
		Price:      &moneyv1.Money{CurrencyCode: it.Currency, AmountMinor: it.PriceMinor},
		Available:  it.Available,
		UpdateTime: timestamppb.New(it.UpdateTime),
	}
}

func reservationProto(r stock.Reservation) *inventoryv1.Reservation {
	p := &inventoryv1.Reservation{ReservationId: r.ID}
	for _, l := range r.Lines {
		p.Lines = append(p.Lines, &inventoryv1.StockLine{Sku: l.SKU, Quantity: l.Quantity})
	}
	switch r.State {
	case stock.Held:
		p.State = inventoryv1.ReservationState_RESERVATION_STATE_HELD
	case stock.Committed:
		p.State = inventoryv1.ReservationState_RESERVATION_STATE_COMMITTED
	case stock.Released:
		p.State = inventoryv1.ReservationState_RESERVATION_STATE_RELEASED
	}
	return p
}
