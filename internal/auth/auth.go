// Package auth issues and verifies the platform's access tokens: JWTs
// signed with HMAC-SHA256 (HS256) whose subject is the user id. The user
// service issues them at login; the edge verifies them on every call
// ([HS256]), or verifies an identity provider's RS256 and ES256 tokens
// against its published keys ([JWKS]).
//
// Both sides share one secret key of at least [MinKeyLen] bytes. Only HS256
// is accepted, so a token cannot pick a weaker algorithm or "none".
//
// The edge then vouches for the caller to the services with an identity
// token of its own ([IdentityHeader], signed with the environment's
// identity key), which [Identities] verifies on the services' side, puts
// in the call's context ([UserFrom]) and passes on to peers.
package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// DefaultIssuer is the "iss" claim used when [Issuer.Issuer] is empty, and
// expected by [Verify] when its issuer argument is empty.
const DefaultIssuer = "keel-user"

// MinKeyLen is the shortest signing key accepted, in bytes: HS256 needs a
// key at least as long as its 256-bit output to keep its strength.
const MinKeyLen = 32

var (
	// ErrKeyTooShort means a signing key has fewer than MinKeyLen bytes.
	ErrKeyTooShort = fmt.Errorf("auth: signing key must have at least %d bytes", MinKeyLen)
	// ErrInvalidToken means a token is malformed, badly signed, expired,
	// from another issuer or without a subject. The wrapped cause says
	// which, for logs.
	ErrInvalidToken = errors.New("auth: invalid token")
)

// Issuer signs access tokens. Its zero value is not usable: set Key and
// TTL. It is safe for concurrent use.
type Issuer struct {
	// Key is the HMAC secret; at least MinKeyLen bytes.
	Key []byte
	// TTL is how long a token stays valid after it is issued; must be
	// positive.
	TTL time.Duration
	// Issuer is the "iss" claim; DefaultIssuer when empty.
	Issuer string
}

// Validate reports whether the issuer is usable, so servers can fail at
// start rather than at the first login.
func (i Issuer) Validate() error {
	if len(i.Key) < MinKeyLen {
		return ErrKeyTooShort
	}
	if i.TTL <= 0 {
		return fmt.Errorf("auth: token TTL must be positive, got %v", i.TTL)
	}
	return nil
}

// Issue returns a signed token for subject, valid from now for TTL, and
// its expiry time.
func (i Issuer) Issue(subject string) (token string, expires time.Time, err error) {
	if err := i.Validate(); err != nil {
		return "", time.Time{}, err
	}
	if subject == "" {
		return "", time.Time{}, errors.New("auth: empty subject")
	}
	// JWT times have one-second precision: truncate so the expiry we
	// report is the one in the token.
	now := time.Now().Truncate(time.Second)
	expires = now.Add(i.TTL)
	claims := jwt.RegisteredClaims{
		Issuer:    issuerOrDefault(i.Issuer),
		Subject:   subject,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(expires),
	}
	token, err = jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(i.Key)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("auth: sign token: %w", err)
	}
	return token, expires, nil
}

// Verify checks token's signature with key, its algorithm (HS256 only), its
// expiry and its issuer (DefaultIssuer when issuer is empty), and returns
// its subject. Errors wrap ErrInvalidToken, or are ErrKeyTooShort.
func Verify(key []byte, issuer, token string) (subject string, err error) {
	claims, err := parseHS256([][]byte{key}, token, issuerOrDefault(issuer))
	if err != nil {
		return "", err
	}
	return claims.Subject, nil
}

// parseHS256 checks token's HS256 signature with any of keys, its expiry,
// that its issuer is one of issuers and that it has a subject, and
// returns its claims. Errors wrap [ErrInvalidToken], or are
// [ErrKeyTooShort].
func parseHS256(keys [][]byte, token string, issuers ...string) (*jwt.RegisteredClaims, error) {
	set := jwt.VerificationKeySet{}
	for _, k := range keys {
		if len(k) < MinKeyLen {
			return nil, ErrKeyTooShort
		}
		set.Keys = append(set.Keys, k)
	}
	if len(set.Keys) == 0 {
		return nil, ErrKeyTooShort
	}
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(token, &claims,
		func(*jwt.Token) (any, error) { return set, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	)
	switch {
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	case !slices.Contains(issuers, claims.Issuer):
		return nil, fmt.Errorf("%w: issuer %q not accepted", ErrInvalidToken, claims.Issuer)
	case claims.Subject == "":
		return nil, fmt.Errorf("%w: no subject", ErrInvalidToken)
	}
	return &claims, nil
}

func issuerOrDefault(issuer string) string {
	if issuer == "" {
		return DefaultIssuer
	}
	return issuer
}

// Verifier checks login tokens and returns their subject, the user id,
// and when they expire: [HS256] for the platform's own tokens, [JWKS] for
// an identity provider's.
type Verifier interface {
	Verify(ctx context.Context, token string) (subject string, expires time.Time, err error)
}

// HS256 verifies the tokens the user service issues, with the key they
// share; see [Verify].
type HS256 struct {
	// Keys are the signing keys a token may be signed with, each at least
	// [MinKeyLen] bytes: one, or while the key is rotated, the new and
	// the old ([SplitKeys]).
	Keys [][]byte
	// Issuer is the expected "iss"; [DefaultIssuer] when empty.
	Issuer string
}

// Verify implements [Verifier].
func (h HS256) Verify(_ context.Context, token string) (string, time.Time, error) {
	claims, err := parseHS256(h.Keys, token, issuerOrDefault(h.Issuer))
	if err != nil {
		return "", time.Time{}, err
	}
	return claims.Subject, claims.ExpiresAt.Time, nil
}
