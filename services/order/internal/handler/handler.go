// Package handler serves the shop.order.v1.OrderService contract.
//
// PlaceOrder checks the request and its user, prices its lines from the
// catalogue, and runs the place-order saga under the order id derived
// from the idempotency key: the saga store creates the order with the
// saga, once per key, so a retry, or twenty concurrent calls, get the
// one order and the one charge. Errors, beyond the contract's:
//
//   - invalid_argument names the field: a malformed field, a sku listed
//     twice, a user_id that names no user, a sku that names no item, a
//     line priced in another currency than the order's first line, or
//     an idempotency_key already used with a different request (another
//     user or other lines; the unit prices a caller sends are ignored,
//     so they do not count).
//   - permission_denied: a logged-in user ordering as another, or reading
//     another's orders (the edge says who the caller is).
//   - failed_precondition: the order was cancelled (out of stock,
//     payment declined, or a step that kept failing); the message names
//     the order and the reason, and the error carries the order as a
//     detail. A retry with the same key returns the same cancelled order.
//   - unavailable: a peer the checks need did not answer, or the order
//     is still being placed (this instance is shutting down): retry with
//     the same idempotency_key.
//   - deadline_exceeded, canceled: the caller's own; the order goes on
//     being placed, and a retry with the same key waits for it.
//
// Messages name the bad field or the missing resource and nothing more:
// internal causes are logged, not sent.
package handler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/saga"
	"github.com/keelplatform/keel/services/order/internal/order"
)

// Bounds of the contract's fields.
const (
	minKeyLen       = 8
	maxKeyLen       = 128
	maxLines        = 100
	maxSKULen       = 64
	maxQuantity     = 10000
	defaultPageSize = 20
	maxPageSize     = 200
	// priceLookups bounds the catalogue reads one PlaceOrder makes at
	// once.
	priceLookups = 8
)

// Store is what the handler reads of the order service's database.
type Store interface {
	// Order returns the order with the id, or an error wrapping
	// [order.ErrNotFound].
	Order(ctx context.Context, id string) (order.Order, error)
	// ListOrders returns a page of the user's orders, newest first, and
	// the cursor of the next page (nil on the last).
	ListOrders(ctx context.Context, userID string, size int, after *order.Cursor) ([]order.Order, *order.Cursor, error)
}

// Sagas runs place-order sagas: [saga.Orchestrator] of the definition
// of package placeorder, whose store creates the order with the saga.
type Sagas interface {
	Run(ctx context.Context, id string, state order.State) (saga.Outcome[order.State], error)
	Wait(ctx context.Context, id string) (saga.Outcome[order.State], error)
}

// Handler implements [orderv1connect.OrderServiceHandler]. It is safe for
// concurrent use.
type Handler struct {
	store  Store
	sagas  Sagas
	users  userv1connect.UserServiceClient
	items  inventoryv1connect.InventoryServiceClient
	logger *slog.Logger
}

var _ orderv1connect.OrderServiceHandler = (*Handler)(nil)

// New returns a handler reading orders from store, placing them with
// sagas, checking users with users and pricing lines with items.
func New(store Store, sagas Sagas, users userv1connect.UserServiceClient, items inventoryv1connect.InventoryServiceClient, logger *slog.Logger) *Handler {
	return &Handler{store: store, sagas: sagas, users: users, items: items, logger: logger}
}

// ownUser returns the user a call acts for: raw, a request's user_id, or
// the logged-in user when raw is empty. A user acts only for themselves
// (permission_denied, naming what + the id, otherwise); a call without a
// login must name the user.
func ownUser(ctx context.Context, raw, what string) (string, error) {
	if caller, ok := auth.UserFrom(ctx); ok && raw == "" {
		raw = caller
	}
	if raw == "" {
		return "", invalid("user_id is required for a call without a login")
	}
	user, err := uuid.Parse(raw)
	if err != nil {
		return "", invalid("user_id must be a UUID")
	}
	userID := user.String()
	if err := auth.RequireOwner(ctx, userID, what+userID); err != nil {
		return "", err
	}
	return userID, nil
}

// PlaceOrder implements [orderv1connect.OrderServiceHandler.PlaceOrder].
func (h *Handler) PlaceOrder(ctx context.Context, req *connect.Request[orderv1.PlaceOrderRequest]) (*connect.Response[orderv1.PlaceOrderResponse], error) {
	m := req.Msg
	key := m.GetIdempotencyKey()
	if n := utf8.RuneCountInString(key); n < minKeyLen || n > maxKeyLen {
		return nil, invalid(fmt.Sprintf("idempotency_key must be %d to %d characters", minKeyLen, maxKeyLen))
	}
	userID, err := ownUser(ctx, m.GetUserId(), "user_id ")
	if err != nil {
		return nil, err // users order as themselves only
	}
	requested, err := checkLines(m.GetLines())
	if err != nil {
		return nil, err
	}
	hash := order.RequestHash(userID, requested)
	id := order.ID(userID, key)

	// A key seen before: its order, whatever the catalogue says now.
	switch _, err := h.store.Order(ctx, id); {
	case err == nil:
		return h.outcome(ctx, req.Spec(), id, hash)
	case !errors.Is(err, order.ErrNotFound):
		return nil, h.internal(ctx, req.Spec(), err)
	}

	if err := h.checkUser(ctx, req.Spec(), userID); err != nil {
		return nil, err
	}
	state := order.State{OrderID: id, IdempotencyKey: key, RequestHash: hash, UserID: userID}
	if err := h.price(ctx, req.Spec(), requested, &state); err != nil {
		return nil, err
	}
	// Run creates the saga and, in the same transaction, the order, unless
	// a concurrent call with the key did: then it waits for that one. Its
	// steps (reserve, charge, commit; release, refund) are the platform's
	// own calls, made as the order service, not as the user, whose right
	// to place the order was checked above.
	if _, err := h.sagas.Run(auth.AsPlatform(ctx), id, state); err != nil {
		return nil, h.sagaError(ctx, req.Spec(), id, err)
	}
	return h.outcome(ctx, req.Spec(), id, hash)
}

// outcome answers PlaceOrder with order id once its saga has ended,
// unless the order was placed with another request than hash.
func (h *Handler) outcome(ctx context.Context, spec connect.Spec, id, hash string) (*connect.Response[orderv1.PlaceOrderResponse], error) {
	o, err := h.store.Order(ctx, id)
	if err != nil {
		return nil, h.internal(ctx, spec, err)
	}
	if o.RequestHash != hash {
		return nil, invalid("idempotency_key was already used with a different request")
	}
	if o.Status == order.Pending {
		// Waiting may take over the saga, when the instance that drove it
		// died: its steps are then driven here, and are the platform's
		// own calls, as in PlaceOrder, never the user's.
		if _, err := h.sagas.Wait(auth.AsPlatform(ctx), id); err != nil {
			return nil, h.sagaError(ctx, spec, id, err)
		}
		if o, err = h.store.Order(ctx, id); err != nil {
			return nil, h.internal(ctx, spec, err)
		}
	}
	switch o.Status {
	case order.Confirmed:
		return connect.NewResponse(&orderv1.PlaceOrderResponse{Order: toProto(o)}), nil
	case order.Cancelled:
		cerr := connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("order %s was cancelled: %s", o.ID, o.FailureReason))
		if d, err := connect.NewErrorDetail(toProto(o)); err == nil {
			cerr.AddDetail(d)
		}
		return nil, cerr
	default:
		return nil, h.internal(ctx, spec, fmt.Errorf("order %s is %s after its saga ended", o.ID, o.Status))
	}
}

// checkLines checks the lines field by field and returns them as
// requested.
func checkLines(lines []*orderv1.OrderLine) ([]order.Requested, error) {
	if len(lines) == 0 || len(lines) > maxLines {
		return nil, invalid(fmt.Sprintf("lines must hold 1 to %d lines", maxLines))
	}
	seen := make(map[string]bool, len(lines))
	out := make([]order.Requested, len(lines))
	for i, l := range lines {
		sku := l.GetSku()
		switch n := utf8.RuneCountInString(sku); {
		case n < 1 || n > maxSKULen:
			return nil, invalid(fmt.Sprintf("lines[%d].sku must be 1 to %d characters", i, maxSKULen))
		case l.GetQuantity() < 1 || l.GetQuantity() > maxQuantity:
			return nil, invalid(fmt.Sprintf("lines[%d].quantity must be 1 to %d", i, maxQuantity))
		case seen[sku]:
			return nil, invalid(fmt.Sprintf("lines[%d].sku %s is listed more than once", i, sku))
		}
		seen[sku] = true
		out[i] = order.Requested{SKU: sku, Quantity: l.GetQuantity()}
	}
	return out, nil
}

// checkUser checks that the user exists.
func (h *Handler) checkUser(ctx context.Context, spec connect.Spec, userID string) error {
	_, err := h.users.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: userID}))
	if connect.CodeOf(err) == connect.CodeNotFound {
		return invalid(fmt.Sprintf("user_id %s names no user", userID))
	}
	return h.peerError(ctx, spec, "user", err)
}

// price sets the state's lines, currency and total from the catalogue.
func (h *Handler) price(ctx context.Context, spec connect.Spec, requested []order.Requested, state *order.State) error {
	items := make([]*inventoryv1.Item, len(requested))
	errs := make([]error, len(requested))
	var wg sync.WaitGroup
	sem := make(chan struct{}, priceLookups)
	for i, r := range requested {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			res, err := h.items.GetItem(ctx, connect.NewRequest(&inventoryv1.GetItemRequest{Sku: r.SKU}))
			if err != nil {
				errs[i] = err
				return
			}
			items[i] = res.Msg.GetItem()
		})
	}
	wg.Wait()
	state.Lines = make([]order.Line, len(requested))
	for i, r := range requested {
		if connect.CodeOf(errs[i]) == connect.CodeNotFound {
			return invalid(fmt.Sprintf("lines[%d].sku %s names no item", i, r.SKU))
		}
		if err := h.peerError(ctx, spec, "inventory", errs[i]); err != nil {
			return err
		}
		price := items[i].GetPrice()
		if i == 0 {
			state.Currency = price.GetCurrencyCode()
		} else if price.GetCurrencyCode() != state.Currency {
			return invalid(fmt.Sprintf("lines[%d]: item %s is priced in %s, the order in %s (its first line's currency)",
				i, r.SKU, price.GetCurrencyCode(), state.Currency))
		}
		unit := price.GetAmountMinor()
		if unit < 0 || (unit > 0 && r.Quantity > (math.MaxInt64-state.TotalMinor)/unit) {
			return invalid(fmt.Sprintf("lines[%d]: the order's total is out of range", i))
		}
		state.TotalMinor += r.Quantity * unit
		state.Lines[i] = order.Line{SKU: r.SKU, Quantity: r.Quantity, UnitPriceMinor: unit}
	}
	return nil
}

// GetOrder implements [orderv1connect.OrderServiceHandler.GetOrder].
func (h *Handler) GetOrder(ctx context.Context, req *connect.Request[orderv1.GetOrderRequest]) (*connect.Response[orderv1.GetOrderResponse], error) {
	id := req.Msg.GetOrderId()
	if id == "" {
		return nil, invalid("order_id is required")
	}
	o, err := h.store.Order(ctx, id)
	if errors.Is(err, order.ErrNotFound) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("order %s not found", id))
	}
	if err != nil {
		return nil, h.internal(ctx, req.Spec(), err)
	}
	if err := auth.RequireOwner(ctx, o.UserID, "order "+id); err != nil {
		return nil, err
	}
	return connect.NewResponse(&orderv1.GetOrderResponse{Order: toProto(o)}), nil
}

// ListOrders implements [orderv1connect.OrderServiceHandler.ListOrders].
func (h *Handler) ListOrders(ctx context.Context, req *connect.Request[orderv1.ListOrdersRequest]) (*connect.Response[orderv1.ListOrdersResponse], error) {
	userID, err := ownUser(ctx, req.Msg.GetUserId(), "the orders of user ")
	if err != nil {
		return nil, err
	}
	size := int(req.Msg.GetPageSize())
	switch {
	case size == 0:
		size = defaultPageSize
	case size < 0 || size > maxPageSize:
		return nil, invalid(fmt.Sprintf("page_size must be 0 to %d", maxPageSize))
	}
	var after *order.Cursor
	if tok := req.Msg.GetPageToken(); tok != "" {
		c, err := decodePageToken(tok)
		if err != nil {
			return nil, invalid("page_token is invalid")
		}
		after = &c
	}
	orders, next, err := h.store.ListOrders(ctx, userID, size, after)
	if err != nil {
		return nil, h.internal(ctx, req.Spec(), err)
	}
	res := &orderv1.ListOrdersResponse{Orders: make([]*orderv1.Order, len(orders))}
	for i, o := range orders {
		res.Orders[i] = toProto(o)
	}
	if next != nil {
		res.NextPageToken = encodePageToken(*next)
	}
	return connect.NewResponse(res), nil
}

// sagaError answers a PlaceOrder whose saga could not be run or waited
// for to its end.
func (h *Handler) sagaError(ctx context.Context, spec connect.Spec, id string, err error) error {
	switch {
	case ctx.Err() != nil:
		code := connect.CodeDeadlineExceeded
		if errors.Is(ctx.Err(), context.Canceled) {
			code = connect.CodeCanceled
		}
		return connect.NewError(code, fmt.Errorf("order %s is still being placed; retry with the same idempotency_key", id))
	case errors.Is(err, saga.ErrStopped), errors.Is(err, saga.ErrClosed):
		h.logger.WarnContext(ctx, "order service: saga stopped before its end", slog.String("order", id), slog.Any("error", err))
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("order %s is still being placed; retry with the same idempotency_key", id))
	}
	return h.internal(ctx, spec, err)
}

// peerError maps the error of a call to a peer the checks need: nil for
// none, unavailable when the peer did not answer in time, the caller's
// own deadline or cancellation, internal otherwise.
func (h *Handler) peerError(ctx context.Context, spec connect.Spec, service string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		code := connect.CodeDeadlineExceeded
		if errors.Is(ctx.Err(), context.Canceled) {
			code = connect.CodeCanceled
		}
		return connect.NewError(code, errors.New("the call ended before the order was placed"))
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded, connect.CodeResourceExhausted:
		h.logger.WarnContext(ctx, "order service: peer did not answer", slog.String("peer", service), slog.Any("error", err))
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s service unavailable; retry with the same idempotency_key", service))
	}
	return h.internal(ctx, spec, fmt.Errorf("%s service: %w", service, err))
}

// internal logs err and returns a Connect error that says nothing about it.
func (h *Handler) internal(ctx context.Context, spec connect.Spec, err error) error {
	h.logger.ErrorContext(ctx, "order service: internal error", slog.String("procedure", spec.Procedure), slog.Any("error", err))
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

func invalid(msg string) error {
	return connect.NewError(connect.CodeInvalidArgument, errors.New(msg))
}

func toProto(o order.Order) *orderv1.Order {
	p := &orderv1.Order{
		OrderId:       o.ID,
		UserId:        o.UserID,
		Total:         &moneyv1.Money{CurrencyCode: o.Currency, AmountMinor: o.TotalMinor},
		Status:        statusProto(o.Status),
		PaymentId:     o.PaymentID,
		FailureReason: o.FailureReason,
		CreateTime:    timestamppb.New(o.CreateTime),
		UpdateTime:    timestamppb.New(o.UpdateTime),
	}
	for _, l := range o.Lines {
		p.Lines = append(p.Lines, &orderv1.OrderLine{
			Sku: l.SKU, Quantity: l.Quantity,
			UnitPrice: &moneyv1.Money{CurrencyCode: o.Currency, AmountMinor: l.UnitPriceMinor},
		})
	}
	for _, c := range o.History {
		p.History = append(p.History, &orderv1.StatusChange{Status: statusProto(c.Status), Time: timestamppb.New(c.Time), Reason: c.Reason})
	}
	return p
}

func statusProto(s order.Status) orderv1.OrderStatus {
	switch s {
	case order.Pending:
		return orderv1.OrderStatus_ORDER_STATUS_PENDING
	case order.Confirmed:
		return orderv1.OrderStatus_ORDER_STATUS_CONFIRMED
	case order.Cancelled:
		return orderv1.OrderStatus_ORDER_STATUS_CANCELLED
	}
	return orderv1.OrderStatus_ORDER_STATUS_UNSPECIFIED
}
