package auth

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
)

// IdentityHeader carries, from the edge to the services behind it, who
// the caller is: a short-lived token, signed with the identity key, whose
// subject is the user id the edge authenticated. The edge removes any
// such header callers send and sets its own; services believe only one
// that verifies.
const IdentityHeader = "Keel-Identity"

// TokenKeyVar is the environment variable holding the key that signs and
// verifies the platform's login tokens (HS256), shared by the user
// service and the edge; at least [MinKeyLen] bytes.
const TokenKeyVar = "KEEL_TOKEN_KEY"

// IdentityKeyVar is the environment variable holding the identity key:
// one secret per environment, shared by the edge and the services, of at
// least [MinKeyLen] bytes.
const IdentityKeyVar = "KEEL_IDENTITY_KEY"

// identityIssuer tells identity tokens from login tokens, which a caller
// could otherwise try to pass off as one (they also differ in key).
const identityIssuer = "keel-edge"

// IdentityTTL is how long an identity token is valid: long enough for a
// call and the calls it makes, short enough that one seen in a log is
// useless soon after.
const IdentityTTL = time.Minute

// SignIdentity returns an identity token for the user id subject.
func SignIdentity(key []byte, subject string) (string, time.Time, error) {
	return Issuer{Key: key, TTL: IdentityTTL, Issuer: identityIssuer}.Issue(subject)
}

// VerifyIdentity checks an identity token and returns its subject, the
// user id. Errors wrap [ErrInvalidToken], or are [ErrKeyTooShort].
func VerifyIdentity(key []byte, token string) (string, error) {
	return Verify(key, identityIssuer, token)
}

// caller is the identity a call carries, in its context.
type caller struct {
	user  string
	token string // to pass on to the peers the call reaches
}

type callerKey struct{}

// WithUser returns ctx carrying user as the authenticated caller, with
// token, the identity token that vouches for it.
func WithUser(ctx context.Context, user, token string) context.Context {
	return context.WithValue(ctx, callerKey{}, caller{user: user, token: token})
}

// UserFrom returns the user the edge authenticated for the call ctx
// belongs to, and false for a call without one: an anonymous call to a
// public method, or a call from one of the platform's own processes
// acting on its own (a saga step). Services check ownership against it.
func UserFrom(ctx context.Context) (string, bool) {
	c, ok := ctx.Value(callerKey{}).(caller)
	return c.user, ok
}

// Identities is the connect interceptor that carries identity through
// the services, on both sides of a call:
//
//   - on a handler, it verifies the [IdentityHeader] a call carries and
//     puts the user in the call's context ([UserFrom]); a call whose
//     header does not verify is refused as unauthenticated before the
//     handler runs, and a call without one goes on anonymous;
//   - on a client, it passes the identity of the call being handled on to
//     the peer called, so that a service acting for a user (the
//     storefront reading the user's order) is held to that user's rights.
//
// Without a key it believes no identity: a header is refused.
type Identities struct {
	key []byte
}

var _ connect.Interceptor = (*Identities)(nil)

// NewIdentities returns the interceptor verifying identity with key, the
// environment's identity key (empty: none configured).
func NewIdentities(key []byte) (*Identities, error) {
	if len(key) > 0 && len(key) < MinKeyLen {
		return nil, fmt.Errorf("%s: %w", IdentityKeyVar, ErrKeyTooShort)
	}
	return &Identities{key: key}, nil
}

// errForgedIdentity is all a caller learns about an identity that does
// not verify.
var errForgedIdentity = errors.New("the " + IdentityHeader + " header does not verify: identity is set by the edge only")

// receive verifies the identity header of an incoming call.
func (i *Identities) receive(ctx context.Context, h interface{ Get(string) string }) (context.Context, error) {
	token := h.Get(IdentityHeader)
	if token == "" {
		return ctx, nil
	}
	if len(i.key) == 0 {
		return ctx, connect.NewError(connect.CodeUnauthenticated, errForgedIdentity)
	}
	user, err := VerifyIdentity(i.key, token)
	if err != nil {
		return ctx, connect.NewError(connect.CodeUnauthenticated, errForgedIdentity)
	}
	return WithUser(ctx, user, token), nil
}

// send passes the identity of the call being handled on to a peer.
func send(ctx context.Context, h interface{ Set(string, string) }) {
	if c, ok := ctx.Value(callerKey{}).(caller); ok && c.token != "" {
		h.Set(IdentityHeader, c.token)
	}
}

// WrapUnary implements [connect.Interceptor].
func (i *Identities) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			send(ctx, req.Header())
			return next(ctx, req)
		}
		ctx, err := i.receive(ctx, req.Header())
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

// WrapStreamingClient implements [connect.Interceptor].
func (i *Identities) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		send(ctx, conn.RequestHeader())
		return conn
	}
}

// WrapStreamingHandler implements [connect.Interceptor].
func (i *Identities) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := i.receive(ctx, conn.RequestHeader())
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// RequireOwner refuses, as permission_denied, a call made on behalf of a
// user (one the edge vouched for) about what belongs to another user,
// owner; what names it in the message ("order 3bda…"). A call without a
// user, the platform's own, passes.
func RequireOwner(ctx context.Context, owner, what string) error {
	user, ok := UserFrom(ctx)
	if !ok || user == owner {
		return nil
	}
	return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s belongs to another user", what))
}
