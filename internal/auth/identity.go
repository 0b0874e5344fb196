package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// IdentityHeader carries, from the edge to the services behind it, who
// the caller is: a short-lived token, signed with the identity key, whose
// subject is the user id the edge authenticated. The edge removes any
// such header callers send and sets its own; services believe only one
// that verifies.
const IdentityHeader = "Keel-Identity"

// TokenKeyVar is the environment variable holding the key that signs and
// verifies the platform's login tokens (HS256), shared by the user
// service and the edge; at least [MinKeyLen] bytes. It rotates as
// [IdentityKeyVar] does: several keys separated by commas; the user
// service signs with the first, the edge believes any.
const TokenKeyVar = "KEEL_TOKEN_KEY"

// IdentityKeyVar is the environment variable holding the identity key:
// one secret per environment, shared by the edge and the services, of at
// least [MinKeyLen] bytes. To rotate it, give several keys separated by
// commas ([SplitKeys]): identity is signed with the first and believed
// under any. Every process goes through "old,new" (the new key believed
// everywhere before anyone signs with it), then "new,old", then "new".
const IdentityKeyVar = "KEEL_IDENTITY_KEY"

// SplitKeys splits the value of a key variable into its keys, the one to
// sign with first; each must have at least [MinKeyLen] bytes. An empty
// value is no key.
func SplitKeys(value []byte) ([][]byte, error) {
	if len(value) == 0 {
		return nil, nil
	}
	var keys [][]byte
	for i, k := range bytes.Split(value, []byte(",")) {
		k = bytes.TrimSpace(k)
		if len(k) < MinKeyLen {
			return nil, fmt.Errorf("key %d of %d: %w", i+1, bytes.Count(value, []byte(","))+1, ErrKeyTooShort)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// identityIssuer tells identity tokens from login tokens, which a caller
// could otherwise try to pass off as one (they also differ in key).
const identityIssuer = "keel-edge"

// processIssuer marks the identity a process of the platform gives its
// own calls, acting for no user (a saga step): the subject is the
// process's name.
const processIssuer = "keel-process"

// IdentityTTL is how long an identity token is valid: long enough for a
// call and the calls it makes, short enough that one seen in a log is
// useless soon after.
const IdentityTTL = time.Minute

// SignIdentity returns an identity token for the user id subject.
func SignIdentity(key []byte, subject string) (string, time.Time, error) {
	return Issuer{Key: key, TTL: IdentityTTL, Issuer: identityIssuer}.Issue(subject)
}

// SignProcess returns the identity token with which the platform's
// process name calls its peers on its own behalf.
func SignProcess(key []byte, name string) (string, time.Time, error) {
	return Issuer{Key: key, TTL: IdentityTTL, Issuer: processIssuer}.Issue(name)
}

// VerifyIdentity checks an identity token and returns its subject, the
// user id. Errors wrap [ErrInvalidToken], or are [ErrKeyTooShort].
func VerifyIdentity(key []byte, token string) (string, error) {
	return Verify(key, identityIssuer, token)
}

// verifyCaller checks a token a call carries, signed with any of keys: a
// user's identity or a process's. It returns the subject and whether it
// is a process.
func verifyCaller(keys [][]byte, token string) (subject string, process bool, err error) {
	claims, err := parseHS256(keys, token, identityIssuer, processIssuer)
	if err != nil {
		return "", false, err
	}
	return claims.Subject, claims.Issuer == processIssuer, nil
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

// AsPlatform returns ctx with no user: the calls made with it are the
// platform's own, made as the process itself (a saga's steps, after the
// user's right to start the saga was checked).
func AsPlatform(ctx context.Context) context.Context {
	return context.WithValue(ctx, callerKey{}, caller{})
}

// UserFrom returns the user the edge authenticated for the call ctx
// belongs to, and false for a call without one: an anonymous call to a
// public method, or a call from one of the platform's own processes
// acting on its own (a saga step). Services check ownership against it.
func UserFrom(ctx context.Context) (string, bool) {
	c, ok := ctx.Value(callerKey{}).(caller)
	return c.user, ok && c.user != ""
}

// Identities is the connect interceptor that carries identity through
// the services, on both sides of a call:
//
//   - on a handler, it verifies the [IdentityHeader] a call carries: a
//     user the edge vouched for goes in the call's context ([UserFrom]);
//     a process of the platform calls as itself. It then applies the
//     contract ([AccessOf]): a method that is not public needs one or
//     the other (unauthenticated otherwise: services are reached through
//     the edge, or by the platform's own processes), and an internal one
//     needs a process (permission_denied for a user). A header that does
//     not verify is refused as unauthenticated before the handler runs.
//   - on a client, it passes the identity of the call being handled on to
//     the peer called, so that a service acting for a user (the
//     storefront reading the user's order) is held to that user's rights;
//     a call made for no user carries the process's own identity.
//
// Without a key (a process run on its own, in development) it believes no
// identity and requires none: a header is refused, a call without one
// goes on anonymous.
type Identities struct {
	keys    [][]byte // the newest, which signs, first
	process string
	own     atomic.Pointer[ownIdentity]
}

// ownIdentity is the process's identity token, renewed at half its life.
type ownIdentity struct {
	token string
	renew time.Time
}

var _ connect.Interceptor = (*Identities)(nil)

// NewIdentities returns the interceptor verifying identity with key, the
// value of the environment's identity key (empty: none configured; one
// key, or several for a rotation, see [IdentityKeyVar]), for the process
// named process.
func NewIdentities(key []byte, process string) (*Identities, error) {
	keys, err := SplitKeys(key)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", IdentityKeyVar, err)
	}
	return &Identities{keys: keys, process: process}, nil
}

// Keyed reports whether the interceptor has an identity key, and so
// requires identity on the calls it answers.
func (i *Identities) Keyed() bool { return len(i.keys) > 0 }

// errForgedIdentity is all a caller learns about an identity that does
// not verify.
var errForgedIdentity = errors.New("the " + IdentityHeader + " header does not verify: identity is set by the edge only")

// receive verifies the identity header of an incoming call to the method
// of spec and applies the contract's access rule.
func (i *Identities) receive(ctx context.Context, spec connect.Spec, h interface{ Get(string) string }) (context.Context, error) {
	token := h.Get(IdentityHeader)
	if len(i.keys) == 0 {
		if token != "" {
			return ctx, connect.NewError(connect.CodeUnauthenticated, errForgedIdentity)
		}
		return ctx, nil
	}
	md, _ := spec.Schema.(protoreflect.MethodDescriptor)
	access := AccessOf(md)
	if token == "" {
		if access == Public {
			return ctx, nil
		}
		return ctx, connect.NewError(connect.CodeUnauthenticated, fmt.Errorf("%s needs a login: call it through the edge", strings.TrimPrefix(spec.Procedure, "/")))
	}
	subject, process, err := verifyCaller(i.keys, token)
	if err != nil {
		return ctx, connect.NewError(connect.CodeUnauthenticated, errForgedIdentity)
	}
	if process {
		return ctx, nil
	}
	if access == Internal {
		return ctx, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s is internal to the platform", strings.TrimPrefix(spec.Procedure, "/")))
	}
	return WithUser(ctx, subject, token), nil
}

// send sets the identity header of an outgoing call: the user's of the
// call being handled, else the process's own.
func (i *Identities) send(ctx context.Context, h interface{ Set(string, string) }) error {
	if c, ok := ctx.Value(callerKey{}).(caller); ok && c.token != "" {
		h.Set(IdentityHeader, c.token)
		return nil
	}
	if len(i.keys) == 0 {
		return nil
	}
	own := i.own.Load()
	if own == nil || !time.Now().Before(own.renew) {
		token, expires, err := SignProcess(i.keys[0], i.process)
		if err != nil {
			return fmt.Errorf("auth: sign the identity of %s: %w", i.process, err)
		}
		own = &ownIdentity{token: token, renew: expires.Add(-IdentityTTL / 2)}
		i.own.Store(own)
	}
	h.Set(IdentityHeader, own.token)
	return nil
}

// WrapUnary implements [connect.Interceptor].
func (i *Identities) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			if err := i.send(ctx, req.Header()); err != nil {
				return nil, connect.NewError(connect.CodeInternal, err)
			}
			return next(ctx, req)
		}
		ctx, err := i.receive(ctx, req.Spec(), req.Header())
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
		_ = i.send(ctx, conn.RequestHeader()) // without it, the peer refuses the call
		return conn
	}
}

// WrapStreamingHandler implements [connect.Interceptor].
func (i *Identities) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := i.receive(ctx, conn.Spec(), conn.RequestHeader())
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
