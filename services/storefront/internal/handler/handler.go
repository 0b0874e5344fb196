// Package handler serves the shop.storefront.v1.StorefrontService
// contract: reads shaped for front ends, each combining several services.
//
// Every call to a peer runs under a deadline of its own, its dependency's
// timeout ([Limits]), within the caller's deadline. A read has an
// essential part and may have optional ones:
//
//   - GetProductPage: the item (inventory) is essential.
//   - GetOrderView: the order (order service) is essential, and read
//     first, since the other parts depend on it; then the items of its
//     lines (inventory, at most [Limits.MaxItemLookups] reads at once),
//     its payment (payment service, when the order has a payment_id) and
//     its buyer's display name (user service) are fetched in parallel.
//     Each is optional: one that fails or runs past its deadline is left
//     empty and named in the answer's degraded ([PartItems],
//     [PartPayment], [PartBuyer]), and the call still succeeds.
//
// An optional part is given up a little before the caller's own deadline
// too, so that the answer, degraded, still reaches the caller.
//
// Errors come from the essential part: not_found naming the sku or the
// order; unavailable when its service is down or did not answer within its
// deadline; invalid_argument, permission_denied and unauthenticated as
// the service said them (they are about the caller's request, passed on
// as it came); deadline_exceeded and canceled when the caller's own call
// ended. Anything else is logged and answered internal, without the
// cause: messages name the field or the resource and nothing more.
package handler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	orderv1 "github.com/keelplatform/keel/gen/go/shop/order/v1"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	paymentv1 "github.com/keelplatform/keel/gen/go/shop/payment/v1"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	storefrontv1 "github.com/keelplatform/keel/gen/go/shop/storefront/v1"
	"github.com/keelplatform/keel/gen/go/shop/storefront/v1/storefrontv1connect"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
)

// Names of the optional parts of an order view, as listed in
// GetOrderViewResponse.degraded, in the order they are listed.
const (
	// PartItems is the items of the order's lines.
	PartItems = "items"
	// PartPayment is the order's payment.
	PartPayment = "payment"
	// PartBuyer is the buyer's display name.
	PartBuyer = "buyer"
)

// maxReserve caps the time an optional part leaves before the caller's
// deadline, for the answer to reach the caller: a tenth of the time left,
// at most this.
const maxReserve = 50 * time.Millisecond

// Peers are the clients of the services the storefront reads from.
type Peers struct {
	Inventory inventoryv1connect.InventoryServiceClient
	Orders    orderv1connect.OrderServiceClient
	Payments  paymentv1connect.PaymentServiceClient
	Users     userv1connect.UserServiceClient
}

// Limits bound the calls to peers. Every field must be positive.
type Limits struct {
	// Inventory is the deadline of a product page's item read, and of all
	// the item reads of one order view together.
	Inventory time.Duration
	// Order is the deadline of an order view's order read.
	Order time.Duration
	// Payment is the deadline of an order view's payment read.
	Payment time.Duration
	// User is the deadline of an order view's buyer read.
	User time.Duration
	// MaxItemLookups is how many item reads one order view makes at once.
	MaxItemLookups int
}

// Handler implements [storefrontv1connect.StorefrontServiceHandler]. It is
// safe for concurrent use.
type Handler struct {
	peers  Peers
	limits atomic.Pointer[Limits]
	logger *slog.Logger
}

var _ storefrontv1connect.StorefrontServiceHandler = (*Handler)(nil)

// New returns a handler reading from peers under limits.
func New(peers Peers, limits Limits, logger *slog.Logger) *Handler {
	h := &Handler{peers: peers, logger: logger}
	h.SetLimits(limits)
	return h
}

// SetLimits applies new limits to the calls that start after it, as
// configuration reloads do.
func (h *Handler) SetLimits(l Limits) { h.limits.Store(&l) }

// GetProductPage implements
// [storefrontv1connect.StorefrontServiceHandler.GetProductPage].
func (h *Handler) GetProductPage(ctx context.Context, req *connect.Request[storefrontv1.GetProductPageRequest]) (*connect.Response[storefrontv1.GetProductPageResponse], error) {
	sku := req.Msg.GetSku()
	if sku == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("sku is required"))
	}
	limits := h.limits.Load()
	callCtx, cancel := context.WithTimeout(ctx, limits.Inventory)
	res, err := h.peers.Inventory.GetItem(callCtx, connect.NewRequest(&inventoryv1.GetItemRequest{Sku: sku}))
	cancel()
	if err != nil {
		return nil, h.essential(ctx, req.Spec(), "inventory", "item "+sku, err)
	}
	item := res.Msg.GetItem()
	return connect.NewResponse(&storefrontv1.GetProductPageResponse{
		Item:    item,
		InStock: item.GetAvailable() > 0,
	}), nil
}

// GetOrderView implements
// [storefrontv1connect.StorefrontServiceHandler.GetOrderView].
func (h *Handler) GetOrderView(ctx context.Context, req *connect.Request[storefrontv1.GetOrderViewRequest]) (*connect.Response[storefrontv1.GetOrderViewResponse], error) {
	id := req.Msg.GetOrderId()
	if id == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("order_id is required"))
	}
	limits := h.limits.Load()
	callCtx, cancel := context.WithTimeout(ctx, limits.Order)
	res, err := h.peers.Orders.GetOrder(callCtx, connect.NewRequest(&orderv1.GetOrderRequest{OrderId: id}))
	cancel()
	if err != nil {
		return nil, h.essential(ctx, req.Spec(), "order", "order "+id, err)
	}
	o := res.Msg.GetOrder()
	view := &storefrontv1.GetOrderViewResponse{Order: o, Lines: make([]*storefrontv1.OrderViewLine, len(o.GetLines()))}
	for i, l := range o.GetLines() {
		view.Lines[i] = &storefrontv1.OrderViewLine{Line: l}
	}

	var itemsErr, paymentErr, buyerErr error
	var wg sync.WaitGroup
	wg.Go(func() { itemsErr = h.items(ctx, limits, view.Lines) })
	if pid := o.GetPaymentId(); pid != "" {
		wg.Go(func() {
			partCtx, cancel := optional(ctx, limits.Payment)
			defer cancel()
			res, err := h.peers.Payments.GetPayment(partCtx, connect.NewRequest(&paymentv1.GetPaymentRequest{PaymentId: pid}))
			if err != nil {
				paymentErr = fmt.Errorf("payment %s: %w", pid, err)
				return
			}
			view.Payment = res.Msg.GetPayment()
		})
	}
	if uid := o.GetUserId(); uid != "" {
		wg.Go(func() {
			partCtx, cancel := optional(ctx, limits.User)
			defer cancel()
			res, err := h.peers.Users.GetUser(partCtx, connect.NewRequest(&userv1.GetUserRequest{Id: uid}))
			if err != nil {
				buyerErr = fmt.Errorf("user %s: %w", uid, err)
				return
			}
			view.BuyerDisplayName = res.Msg.GetUser().GetDisplayName()
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return nil, callerGone(ctx, "order "+id)
	}
	for _, p := range []struct {
		name string
		err  error
	}{{PartItems, itemsErr}, {PartPayment, paymentErr}, {PartBuyer, buyerErr}} {
		if p.err != nil {
			view.Degraded = append(view.Degraded, p.name)
			h.logger.WarnContext(ctx, "storefront: order view degraded",
				slog.String("order", id), slog.String("part", p.name), slog.Any("error", p.err))
		}
	}
	return connect.NewResponse(view), nil
}

// items sets the item of every line, reading at most
// limits.MaxItemLookups at once, all within limits.Inventory. It returns
// an error when a line's item could not be read: the first of them, with
// how many failed.
func (h *Handler) items(ctx context.Context, limits *Limits, lines []*storefrontv1.OrderViewLine) error {
	if len(lines) == 0 {
		return nil
	}
	partCtx, cancel := optional(ctx, limits.Inventory)
	defer cancel()
	var (
		mu     sync.Mutex
		first  error
		failed int
	)
	fail := func(n int, err error) {
		mu.Lock()
		defer mu.Unlock()
		if first == nil {
			first = err
		}
		failed += n
	}
	sem := make(chan struct{}, max(limits.MaxItemLookups, 1))
	var wg sync.WaitGroup
	for i, l := range lines {
		acquired := false
		select {
		case sem <- struct{}{}:
			acquired = true
		case <-partCtx.Done():
		}
		if err := partCtx.Err(); err != nil {
			// The deadline passed with lookups still waiting for a turn:
			// they are not made.
			if acquired {
				<-sem
			}
			fail(len(lines)-i, fmt.Errorf("item %s: %w", l.GetLine().GetSku(), err))
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			sku := l.GetLine().GetSku()
			res, err := h.peers.Inventory.GetItem(partCtx, connect.NewRequest(&inventoryv1.GetItemRequest{Sku: sku}))
			if err != nil {
				fail(1, fmt.Errorf("item %s: %w", sku, err))
				return
			}
			l.Item = res.Msg.GetItem()
		})
	}
	wg.Wait()
	return partError(first, failed, len(lines))
}

// partError says how many of total item reads failed, and the first
// error; nil when none did.
func partError(first error, failed, total int) error {
	if first == nil {
		return nil
	}
	return fmt.Errorf("%d of %d items not read, the first: %w", failed, total, first)
}

// optional returns the context of an optional part: ended by the part's
// timeout, or a little before the caller's deadline if that comes first,
// so that the answer without the part still reaches the caller in time.
func optional(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		if until := left - min(left/10, maxReserve); until < timeout {
			timeout = until
		}
	}
	return context.WithTimeout(ctx, timeout)
}

// essential maps the error of the call that read what, the essential part
// of a read, from the peer service.
func (h *Handler) essential(ctx context.Context, spec connect.Spec, service, what string, err error) error {
	if ctx.Err() != nil {
		return callerGone(ctx, what)
	}
	switch code := connect.CodeOf(err); code {
	case connect.CodeNotFound:
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s not found", what))
	case connect.CodeInvalidArgument, connect.CodePermissionDenied, connect.CodeUnauthenticated:
		// About the caller's request, which the storefront passed on as it
		// came (a field, or who may read what): the peer's answer is the
		// caller's, in words the peer chose for callers.
		msg := "request refused"
		if ce, ok := errors.AsType[*connect.Error](err); ok && ce.Message() != "" {
			msg = ce.Message()
		}
		return connect.NewError(code, errors.New(msg))
	case connect.CodeDeadlineExceeded:
		h.logger.WarnContext(ctx, "storefront: peer did not answer in time", slog.String("peer", service), slog.Any("error", err))
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s: the %s service did not answer in time; retry", what, service))
	case connect.CodeUnavailable, connect.CodeResourceExhausted, connect.CodeAborted:
		h.logger.WarnContext(ctx, "storefront: peer unavailable", slog.String("peer", service), slog.Any("error", err))
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%s: the %s service is unavailable; retry", what, service))
	}
	h.logger.ErrorContext(ctx, "storefront: internal error", slog.String("procedure", spec.Procedure),
		slog.String("peer", service), slog.Any("error", err))
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// callerGone is the error of a call whose caller gave up or ran out of
// time before what was read.
func callerGone(ctx context.Context, what string) error {
	code := connect.CodeDeadlineExceeded
	if errors.Is(ctx.Err(), context.Canceled) {
		code = connect.CodeCanceled
	}
	return connect.NewError(code, fmt.Errorf("the call ended before %s was read", what))
}
