package auth_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"

	"github.com/keelplatform/keel/internal/auth"
)

// provider is an identity provider publishing its keys on a real HTTP
// server, counting the fetches.
type provider struct {
	mu      sync.Mutex
	keys    []jose.JSONWebKey
	fetches atomic.Int32
	down    atomic.Bool
	url     string
}

func newProvider(t *testing.T) *provider {
	p := &provider{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		p.fetches.Add(1)
		if p.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: p.keys})
	}))
	t.Cleanup(srv.Close)
	p.url = srv.URL
	return p
}

// publish adds the public half of a signing key under id kid.
func (p *provider) publish(kid string, public any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys = append(p.keys, jose.JSONWebKey{Key: public, KeyID: kid, Use: "sig"})
}

func signWith(t *testing.T, method jwt.SigningMethod, key any, kid string, claims jwt.RegisteredClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claimsFor(sub string) jwt.RegisteredClaims {
	now := time.Now()
	return jwt.RegisteredClaims{
		Issuer: "https://login.example", Subject: sub, Audience: jwt.ClaimStrings{"keel"},
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)),
	}
}

func TestJWKSVerifiesRS256AndES256(t *testing.T) {
	p := newProvider(t)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p.publish("rsa-1", &rsaKey.PublicKey)
	p.publish("ec-1", &ecKey.PublicKey)
	// A key the provider publishes for another algorithm than the
	// token's (RFC 7517's "alg") verifies nothing else.
	p.mu.Lock()
	p.keys = append(p.keys, jose.JSONWebKey{Key: &rsaKey.PublicKey, KeyID: "rsa-512", Use: "sig", Algorithm: "RS512"})
	p.mu.Unlock()
	v := &auth.JWKS{URL: p.url, Issuer: "https://login.example", Audience: "keel"}

	for name, token := range map[string]string{
		"RS256": signWith(t, jwt.SigningMethodRS256, rsaKey, "rsa-1", claimsFor("user-1")),
		"ES256": signWith(t, jwt.SigningMethodES256, ecKey, "ec-1", claimsFor("user-1")),
	} {
		sub, _, err := v.Verify(t.Context(), token)
		if err != nil || sub != "user-1" {
			t.Fatalf("%s: got %q, %v", name, sub, err)
		}
	}
	if n := p.fetches.Load(); n != 1 {
		t.Fatalf("key set fetched %d times for two tokens, want once", n)
	}

	otherRSA, _ := rsa.GenerateKey(rand.Reader, 2048)
	wrongIssuer := claimsFor("user-1")
	wrongIssuer.Issuer = "https://evil.example"
	wrongAudience := claimsFor("user-1")
	wrongAudience.Audience = jwt.ClaimStrings{"someone-else"}
	expired := claimsFor("user-1")
	expired.ExpiresAt = jwt.NewNumericDate(time.Now().Add(-time.Minute))
	noSubject := claimsFor("")
	rsaPEMAsSecret := jwt.NewWithClaims(jwt.SigningMethodHS256, claimsFor("user-1"))
	rsaPEMAsSecret.Header["kid"] = "rsa-1"
	// Algorithm confusion: HMAC keyed with the published public modulus.
	confused, _ := rsaPEMAsSecret.SignedString(rsaKey.PublicKey.N.Bytes())

	for name, token := range map[string]string{
		"signed by another key": signWith(t, jwt.SigningMethodRS256, otherRSA, "rsa-1", claimsFor("user-1")),
		"wrong issuer":          signWith(t, jwt.SigningMethodRS256, rsaKey, "rsa-1", wrongIssuer),
		"wrong audience":        signWith(t, jwt.SigningMethodRS256, rsaKey, "rsa-1", wrongAudience),
		"expired":               signWith(t, jwt.SigningMethodRS256, rsaKey, "rsa-1", expired),
		"no subject":            signWith(t, jwt.SigningMethodRS256, rsaKey, "rsa-1", noSubject),
		"HS256":                 confused,
		"key for another alg":   signWith(t, jwt.SigningMethodRS256, rsaKey, "rsa-512", claimsFor("user-1")),
		"alg none":              noneToken(t),
	} {
		t.Run(name, func(t *testing.T) {
			if sub, _, err := v.Verify(t.Context(), token); !errors.Is(err, auth.ErrInvalidToken) {
				t.Fatalf("got %q, %v; want ErrInvalidToken", sub, err)
			}
		})
	}
}

func noneToken(t *testing.T) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodNone, claimsFor("user-1"))
	tok.Header["kid"] = "rsa-1"
	s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestJWKSFollowsKeyRotation: a token signed with a key published after
// the set was fetched is verified after one early fetch, and unknown key
// ids cannot make the verifier fetch more often than MinRefresh.
func TestJWKSFollowsKeyRotation(t *testing.T) {
	p := newProvider(t)
	old, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p.publish("k1", &old.PublicKey)
	v := &auth.JWKS{URL: p.url, Issuer: "https://login.example", MinRefresh: time.Hour}
	if _, _, err := v.Verify(t.Context(), signWith(t, jwt.SigningMethodES256, old, "k1", claimsFor("u"))); err != nil {
		t.Fatal(err)
	}

	// An unknown key id within MinRefresh of the last fetch: refused
	// without a fetch, however many such tokens arrive.
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for range 5 {
		if _, _, err := v.Verify(t.Context(), signWith(t, jwt.SigningMethodES256, stranger, "k9", claimsFor("u"))); !errors.Is(err, auth.ErrInvalidToken) {
			t.Fatalf("unknown key: got %v, want ErrInvalidToken", err)
		}
	}
	if n := p.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1: unknown key ids must not hammer the provider", n)
	}

	// Past MinRefresh, a new key id is fetched once.
	v2 := &auth.JWKS{URL: p.url, Issuer: "https://login.example", MinRefresh: time.Nanosecond}
	if _, _, err := v2.Verify(t.Context(), signWith(t, jwt.SigningMethodES256, old, "k1", claimsFor("u"))); err != nil {
		t.Fatal(err)
	}
	rotated, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p.publish("k2", &rotated.PublicKey)
	before := p.fetches.Load()
	if sub, _, err := v2.Verify(t.Context(), signWith(t, jwt.SigningMethodES256, rotated, "k2", claimsFor("u2"))); err != nil || sub != "u2" {
		t.Fatalf("rotated key: got %q, %v", sub, err)
	}
	if n := p.fetches.Load() - before; n != 1 {
		t.Fatalf("%d fetches for the rotated key, want 1", n)
	}

	// The provider goes down after the set went stale: known keys keep
	// working; an unknown one is an error that is not ErrInvalidToken
	// (the caller's token may be fine).
	v3 := &auth.JWKS{URL: p.url, Issuer: "https://login.example", TTL: time.Nanosecond, MinRefresh: time.Nanosecond}
	if _, _, err := v3.Verify(t.Context(), signWith(t, jwt.SigningMethodES256, old, "k1", claimsFor("u"))); err != nil {
		t.Fatal(err)
	}
	p.down.Store(true)
	if _, _, err := v3.Verify(t.Context(), signWith(t, jwt.SigningMethodES256, old, "k1", claimsFor("u"))); err != nil {
		t.Fatalf("known key while the provider is down: %v", err)
	}
	_, _, err := v3.Verify(t.Context(), signWith(t, jwt.SigningMethodES256, stranger, "k9", claimsFor("u")))
	if err == nil || errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("unknown key while the provider is down: got %v, want a fetch error", err)
	}
}
