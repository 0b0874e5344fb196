// Package handler serves the shop.user.v1.UserService contract: it adapts
// each RPC to the account domain and maps domain errors to Connect codes.
//
// Requests are validated against the contract's protovalidate rules by a
// server interceptor before they get here; the handler still never trusts
// that and fails safely on empty or odd input. Messages sent to callers
// name the bad field or the missing resource and nothing more: internal
// causes are logged, not sent.
package handler

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/shed"
	"github.com/keelplatform/keel/services/user/internal/account"
	"github.com/keelplatform/keel/services/user/internal/password"
)

const (
	// defaultPageSize applies when a ListUsers request leaves page_size 0.
	defaultPageSize = 50
	// maxPageSize matches the contract's upper bound on page_size.
	maxPageSize = 500
)

// Handler implements [userv1connect.UserServiceHandler]. It is safe for
// concurrent use.
type Handler struct {
	users   account.Repository
	tokens  auth.Issuer
	hashing password.Params
	// hashes bounds the argon2id hashes computed at once (each costs
	// memory_kib of memory); nil means no bound.
	hashes *shed.Bulkhead
	logger *slog.Logger
	// dummyHash is verified against when a login names an unknown email,
	// so that such a login costs what a wrong password costs and timing
	// does not reveal which emails are registered.
	dummyHash string
	// tokenTTL overrides tokens.TTL once set, so configuration can change
	// it while the service runs.
	tokenTTL atomic.Int64
}

var _ userv1connect.UserServiceHandler = (*Handler)(nil)

// New returns a Handler storing accounts in users, hashing new passwords
// with hashing (normally [password.DefaultParams]) within the bulkhead
// hashes (nil for no bound), signing login tokens
// with tokens and logging internal errors to logger. It fails if tokens is
// unusable (see [auth.Issuer.Validate]) or logger is nil. It hashes one
// random password up front, so it takes as long as one hash.
func New(users account.Repository, tokens auth.Issuer, hashing password.Params, hashes *shed.Bulkhead, logger *slog.Logger) (*Handler, error) {
	if users == nil {
		return nil, errors.New("handler: nil account repository")
	}
	if logger == nil {
		return nil, errors.New("handler: nil logger")
	}
	if err := tokens.Validate(); err != nil {
		return nil, fmt.Errorf("handler: token issuer: %w", err)
	}
	dummy, err := password.Hash(rand.Text(), hashing)
	if err != nil {
		return nil, fmt.Errorf("handler: %w", err)
	}
	h := &Handler{users: users, tokens: tokens, hashing: hashing, hashes: hashes, logger: logger, dummyHash: dummy}
	h.tokenTTL.Store(int64(tokens.TTL))
	return h, nil
}

// SetTokenTTL changes how long tokens issued from now on are valid; ttl
// must be positive.
func (h *Handler) SetTokenTTL(ttl time.Duration) {
	if ttl > 0 {
		h.tokenTTL.Store(int64(ttl))
	}
}

// Register implements [userv1connect.UserServiceHandler.Register].
func (h *Handler) Register(ctx context.Context, req *connect.Request[userv1.RegisterRequest]) (*connect.Response[userv1.RegisterResponse], error) {
	email := account.NormalizeEmail(req.Msg.GetEmail())
	if email == "" {
		return nil, invalidArgument("email is required")
	}
	if req.Msg.GetPassword() == "" {
		return nil, invalidArgument("password is required")
	}
	if err := checkDisplayName(req.Msg.GetDisplayName()); err != nil {
		return nil, err
	}
	var hash string
	err := h.bounded(ctx, func() (err error) {
		hash, err = password.Hash(req.Msg.GetPassword(), h.hashing)
		return err
	})
	var cerr *connect.Error
	switch {
	case errors.As(err, &cerr):
		return nil, cerr // refused: the hashes at capacity, or the caller gone
	case err != nil:
		return nil, h.internal(ctx, req.Spec(), err)
	}
	u, err := h.users.Create(ctx, account.NewUser{
		Email:        email,
		PasswordHash: hash,
		DisplayName:  req.Msg.GetDisplayName(),
	})
	switch {
	case errors.Is(err, account.ErrEmailTaken):
		return nil, connect.NewError(connect.CodeAlreadyExists, account.ErrEmailTaken)
	case err != nil:
		return nil, h.internal(ctx, req.Spec(), err)
	}
	return connect.NewResponse(&userv1.RegisterResponse{User: toProto(u)}), nil
}

// Login implements [userv1connect.UserServiceHandler.Login]. An unknown
// email and a wrong password get the same code, message and cost.
func (h *Handler) Login(ctx context.Context, req *connect.Request[userv1.LoginRequest]) (*connect.Response[userv1.LoginResponse], error) {
	badCredentials := connect.NewError(connect.CodeUnauthenticated, account.ErrBadCredentials)
	u, err := h.users.GetByEmail(ctx, account.NormalizeEmail(req.Msg.GetEmail()))
	switch {
	case errors.Is(err, account.ErrNotFound):
		if err := h.bounded(ctx, func() error {
			_, _ = password.Verify(req.Msg.GetPassword(), h.dummyHash)
			return nil
		}); err != nil {
			return nil, err
		}
		return nil, badCredentials
	case err != nil:
		return nil, h.internal(ctx, req.Spec(), err)
	}
	var ok bool
	err = h.bounded(ctx, func() (err error) {
		ok, err = password.Verify(req.Msg.GetPassword(), u.PasswordHash)
		return err
	})
	var cerr *connect.Error
	switch {
	case errors.As(err, &cerr):
		return nil, cerr
	case err != nil:
		return nil, h.internal(ctx, req.Spec(), fmt.Errorf("stored hash of user %s: %w", u.ID, err))
	}
	if !ok {
		return nil, badCredentials
	}
	issuer := h.tokens
	issuer.TTL = time.Duration(h.tokenTTL.Load())
	token, expires, err := issuer.Issue(u.ID.String())
	if err != nil {
		return nil, h.internal(ctx, req.Spec(), err)
	}
	return connect.NewResponse(&userv1.LoginResponse{
		AccessToken: token,
		ExpireTime:  timestamppb.New(expires),
		User:        toProto(u),
	}), nil
}

// bounded runs fn, which hashes, within the hashing bulkhead. A refusal
// comes back as resource_exhausted with a retry hint.
func (h *Handler) bounded(ctx context.Context, fn func() error) error {
	if h.hashes == nil {
		return fn()
	}
	return h.hashes.Do(ctx, fn)
}

// GetUser implements [userv1connect.UserServiceHandler.GetUser].
func (h *Handler) GetUser(ctx context.Context, req *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	id, err := parseID(req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	if err := auth.RequireOwner(ctx, id.String(), "the account "+id.String()); err != nil {
		return nil, err
	}
	u, err := h.users.GetByID(ctx, id)
	if err != nil {
		return nil, h.lookupError(ctx, req.Spec(), id, err)
	}
	return connect.NewResponse(&userv1.GetUserResponse{User: toProto(u)}), nil
}

// UpdateProfile implements [userv1connect.UserServiceHandler.UpdateProfile].
func (h *Handler) UpdateProfile(ctx context.Context, req *connect.Request[userv1.UpdateProfileRequest]) (*connect.Response[userv1.UpdateProfileResponse], error) {
	id, err := parseID(req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	if err := auth.RequireOwner(ctx, id.String(), "the account "+id.String()); err != nil {
		return nil, err
	}
	if err := checkDisplayName(req.Msg.GetDisplayName()); err != nil {
		return nil, err
	}
	u, err := h.users.UpdateDisplayName(ctx, id, req.Msg.GetDisplayName())
	if err != nil {
		return nil, h.lookupError(ctx, req.Spec(), id, err)
	}
	return connect.NewResponse(&userv1.UpdateProfileResponse{User: toProto(u)}), nil
}

// ListUsers implements [userv1connect.UserServiceHandler.ListUsers].
func (h *Handler) ListUsers(ctx context.Context, req *connect.Request[userv1.ListUsersRequest]) (*connect.Response[userv1.ListUsersResponse], error) {
	size := int(req.Msg.GetPageSize())
	switch {
	case size == 0:
		size = defaultPageSize
	case size < 0 || size > maxPageSize:
		return nil, invalidArgument(fmt.Sprintf("page_size must be between 0 and %d", maxPageSize))
	}
	var after *account.Cursor
	if tok := req.Msg.GetPageToken(); tok != "" {
		c, err := decodePageToken(tok)
		if err != nil {
			return nil, invalidArgument("page_token is invalid")
		}
		after = &c
	}
	page, err := h.users.List(ctx, size, after)
	if err != nil {
		return nil, h.internal(ctx, req.Spec(), err)
	}
	resp := &userv1.ListUsersResponse{Users: make([]*userv1.User, len(page.Users))}
	for i, u := range page.Users {
		resp.Users[i] = toProto(u)
	}
	if page.Next != nil {
		resp.NextPageToken = encodePageToken(*page.Next)
	}
	return connect.NewResponse(resp), nil
}

// lookupError maps the error of a lookup by id.
func (h *Handler) lookupError(ctx context.Context, spec connect.Spec, id uuid.UUID, err error) error {
	if errors.Is(err, account.ErrNotFound) {
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("user %s not found", id))
	}
	return h.internal(ctx, spec, err)
}

// internal logs err and returns a Connect error that says nothing about it.
func (h *Handler) internal(ctx context.Context, spec connect.Spec, err error) error {
	h.logger.ErrorContext(ctx, "user service: internal error",
		slog.String("procedure", spec.Procedure),
		slog.Any("error", err))
	return connect.NewError(connect.CodeInternal, errors.New("internal error"))
}

// checkDisplayName refuses a display name with a control character
// (NUL, a line break...), as the contract does: PostgreSQL cannot store
// NUL in text at all, and the others break every page that shows the
// name.
func checkDisplayName(name string) error {
	if strings.ContainsFunc(name, unicode.IsControl) {
		return invalidArgument("display_name must not contain control characters")
	}
	return nil
}

func invalidArgument(msg string) error {
	return connect.NewError(connect.CodeInvalidArgument, errors.New(msg))
}

func parseID(s string) (uuid.UUID, error) {
	id, err := uuid.Parse(s)
	if err != nil {
		return uuid.Nil, invalidArgument("id must be a UUID")
	}
	return id, nil
}

func toProto(u account.User) *userv1.User {
	return &userv1.User{
		Id:          u.ID.String(),
		Email:       u.Email,
		DisplayName: u.DisplayName,
		CreateTime:  timestamppb.New(u.CreateTime),
		UpdateTime:  timestamppb.New(u.UpdateTime),
	}
}
