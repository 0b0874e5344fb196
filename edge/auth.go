package edge

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/keelplatform/keel/internal/auth"
)

// access is who may call a method, as its contract says.
type access = auth.Access

const (
	loginRequired = auth.LoginRequired
	public        = auth.Public
	internalOnly  = auth.Internal
)

// Auth is how the edge authenticates callers and vouches for them to the
// services.
type Auth struct {
	// Tokens verifies the login tokens callers send as "Authorization:
	// Bearer <token>".
	Tokens auth.Verifier
	// IdentityKey signs the identity the edge forwards upstream in
	// [auth.IdentityHeader]; the services of the environment hold the same
	// key (KEEL_IDENTITY_KEY). At least [auth.MinKeyLen] bytes.
	IdentityKey []byte
}

// authenticator applies the contract's access rules to each call.
type authenticator struct {
	tokens      auth.Verifier
	identityKey []byte

	// signed caches users' identity tokens for half their life, so that
	// a busy caller does not cost a signature per call: a fixed number of
	// slots, by a hash of the user id, each holding the last user signed.
	signed [identitySlots]atomic.Pointer[identity]
	// verified caches login tokens that verified, until they expire but
	// for at most verifiedTTL, so that a busy caller does not cost a
	// signature check per call: slots by a hash of the token, each
	// holding the last token verified there. Only a token equal to the
	// one kept, byte for byte, is taken as verified.
	verified [verifiedSlots]atomic.Pointer[verifiedToken]
}

// identitySlots bounds the identity tokens kept, whatever the users.
const identitySlots = 1024

// verifiedSlots bounds the login tokens kept as verified.
const verifiedSlots = 4096

// verifiedTTL bounds how long a verified login token is believed without
// checking it again: what a key withdrawn from a JWKS may still let in.
const verifiedTTL = time.Minute

// verifiedToken is a login token that verified, for user, until until.
type verifiedToken struct {
	token string
	user  string
	until time.Time
}

type identity struct {
	user  string
	token string
	renew time.Time
}

func newAuthenticator(a *Auth) (*authenticator, error) {
	if a == nil {
		return nil, nil
	}
	if a.Tokens == nil {
		return nil, errors.New("auth: no token verifier")
	}
	if len(a.IdentityKey) < auth.MinKeyLen {
		return nil, fmt.Errorf("auth: identity key (%s): %w", auth.IdentityKeyVar, auth.ErrKeyTooShort)
	}
	return &authenticator{tokens: a.Tokens, identityKey: a.IdentityKey}, nil
}

// Errors callers get; they say what to do and nothing of why a token
// failed beyond that.
var (
	errNoToken      = errors.New("this method needs a login: send the token Login returns as \"Authorization: Bearer <token>\"")
	errBadToken     = errors.New("the bearer token is invalid or expired: log in again")
	errNotBearer    = errors.New("the Authorization header must be \"Bearer <token>\"")
	errVerifyFailed = errors.New("the login token could not be checked now; try again")
)

// check decides whether the call to procedure path, whose contract says
// acc, may go on, and returns the authenticated user ("" for an anonymous
// call to a public method). It removes the Authorization header: the
// services get the identity the edge vouches for, never the token.
func (a *authenticator) check(ctx context.Context, h http.Header, path string, acc access) (string, error) {
	if acc == internalOnly {
		return "", connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s is internal to the platform", strings.TrimPrefix(path, "/")))
	}
	values := h["Authorization"]
	delete(h, "Authorization")
	if len(values) == 0 {
		if acc == public {
			return "", nil
		}
		return "", connect.NewError(connect.CodeUnauthenticated, errNoToken)
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if len(values) > 1 || !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", connect.NewError(connect.CodeUnauthenticated, errNotBearer)
	}
	token = strings.TrimSpace(token)
	slot := &a.verified[maphash.String(identitySeed, token)%verifiedSlots]
	now := time.Now()
	if v := slot.Load(); v != nil && v.token == token && now.Before(v.until) {
		return v.user, nil
	}
	user, expires, err := a.tokens.Verify(ctx, token)
	switch {
	case errors.Is(err, auth.ErrInvalidToken):
		return "", connect.NewError(connect.CodeUnauthenticated, errBadToken)
	case err != nil:
		return "", connect.NewError(connect.CodeUnavailable, errVerifyFailed)
	}
	until := now.Add(verifiedTTL)
	if expires.Before(until) {
		until = expires
	}
	slot.Store(&verifiedToken{token: token, user: user, until: until})
	return user, nil
}

// identitySeed hashes user ids to slots.
var identitySeed = maphash.MakeSeed()

// vouch sets the identity header the services believe for user.
func (a *authenticator) vouch(h http.Header, user string) error {
	slot := &a.signed[maphash.String(identitySeed, user)%identitySlots]
	if id := slot.Load(); id != nil && id.user == user && time.Now().Before(id.renew) {
		h[auth.IdentityHeader] = []string{id.token}
		return nil
	}
	token, expires, err := auth.SignIdentity(a.identityKey, user)
	if err != nil {
		return fmt.Errorf("sign identity: %w", err)
	}
	slot.Store(&identity{user: user, token: token, renew: expires.Add(-auth.IdentityTTL / 2)})
	h[auth.IdentityHeader] = []string{token}
	return nil
}
