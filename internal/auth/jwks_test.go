package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keelplatform/keel/internal/auth"
)

// provider is an identity provider publishing its keys on a real HTTP
// server, counting the fetches.
type provider struct {
	mu      sync.Mutex
	keys    []jose.JSONWebKey
	fetches atomic.Int32
	down    atomic.Bool
	// hung makes fetches hang until the client gives up, unhang is
	// called or the test ends.
	hung    atomic.Bool
	release chan struct{}
	unhang  func()
	// gate, when set, holds fetches until it is closed.
	gate atomic.Pointer[chan struct{}]
	url  string
}

func newProvider(t *testing.T) *provider {
	p := &provider{release: make(chan struct{})}
	p.unhang = sync.OnceFunc(func() { close(p.release) })
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.fetches.Add(1)
		if p.hung.Load() {
			select {
			case <-r.Context().Done():
			case <-p.release:
			}
			return
		}
		if gate := p.gate.Load(); gate != nil {
			select {
			case <-r.Context().Done():
				return
			case <-*gate:
			}
		}
		if p.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: p.keys})
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(p.unhang) // before srv.Close, which waits for the handlers
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

// clock is a settable time for [auth.SetClock]; it stands still unless
// the test moves it.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// waitFor polls cond until it holds, failing the test after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// keyFixture is a provider publishing one ES256 key "k1", with a token
// signed by it and one naming the unpublished key "k9".
type keyFixture struct {
	p              *provider
	known, unknown string
}

func newKeyFixture(t *testing.T) keyFixture {
	p := newProvider(t)
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k9, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p.publish("k1", &k1.PublicKey)
	return keyFixture{
		p:       p,
		known:   signWith(t, jwt.SigningMethodES256, k1, "k1", claimsFor("u")),
		unknown: signWith(t, jwt.SigningMethodES256, k9, "k9", claimsFor("u")),
	}
}

// verifyKnown fails the test unless token verifies.
func verifyKnown(t *testing.T, v *auth.JWKS, token string) {
	t.Helper()
	if sub, _, err := v.Verify(t.Context(), token); err != nil || sub != "u" {
		t.Fatalf("known key: got %q, %v", sub, err)
	}
}

// verifyUnavailable fails the test unless token is refused for want of
// the key set, not as an invalid token.
func verifyUnavailable(t *testing.T, v *auth.JWKS, token string) {
	t.Helper()
	if _, _, err := v.Verify(t.Context(), token); err == nil || errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("unknown key while the key set cannot be fetched: got %v, want a fetch error", err)
	}
}

// TestJWKSBacksOffWhileProviderIsDown: with the provider failing, the
// key set is fetched once per back-off window however many tokens
// arrive, known keys keep verifying, and the window doubles from
// MinRefresh up to the TTL, starting over after a success.
func TestJWKSBacksOffWhileProviderIsDown(t *testing.T) {
	f := newKeyFixture(t)
	c := newClock()
	v := &auth.JWKS{URL: f.p.url, Issuer: "https://login.example", TTL: 10 * time.Second, MinRefresh: time.Second}
	auth.SetClock(v, c.Now)
	verifyKnown(t, v, f.known)

	f.p.down.Store(true)
	c.Add(10 * time.Second) // the set is stale
	for i := range 200 {
		if i%2 == 0 {
			verifyKnown(t, v, f.known)
		} else {
			verifyUnavailable(t, v, f.unknown)
		}
	}
	if n := f.p.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches for 200 tokens with the provider down, want 2: the first and one failed refresh", n)
	}

	for _, window := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second} {
		if n := fetchesAfter(t, f, v, c, window-time.Nanosecond); n != 0 {
			t.Fatalf("%d fetches before the %s back-off ended, want none", n, window)
		}
		if n := fetchesAfter(t, f, v, c, time.Nanosecond); n != 1 {
			t.Fatalf("%d fetches once the %s back-off ended, want 1", n, window)
		}
	}

	// A success ends the back-off: the next failure waits MinRefresh again.
	f.p.down.Store(false)
	c.Add(10 * time.Second)
	if _, _, err := v.Verify(t.Context(), f.unknown); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("unknown key with the provider up: got %v, want ErrInvalidToken", err)
	}
	f.p.down.Store(true)
	if n := fetchesAfter(t, f, v, c, 10*time.Second); n != 1 {
		t.Fatalf("%d fetches for a stale set with the provider down, want 1", n)
	}
	if n := fetchesAfter(t, f, v, c, time.Second-time.Nanosecond); n != 0 {
		t.Fatalf("%d fetches within MinRefresh of a failure after a success, want none", n)
	}
	if n := fetchesAfter(t, f, v, c, time.Nanosecond); n != 1 {
		t.Fatalf("%d fetches MinRefresh after a failure after a success, want 1", n)
	}
}

// fetchesAfter moves c by d, sends v 50 tokens of each kind (the unknown
// key's first, so that a fetch it starts is over when it returns) while
// the provider is down, and returns how many fetches that made.
func fetchesAfter(t *testing.T, f keyFixture, v *auth.JWKS, c *clock, d time.Duration) int32 {
	t.Helper()
	c.Add(d)
	before := f.p.fetches.Load()
	for range 50 {
		verifyUnavailable(t, v, f.unknown)
		verifyKnown(t, v, f.known)
	}
	return f.p.fetches.Load() - before
}

// TestJWKSBackOffSchedule: the back-off after failed fetches starts at
// MinRefresh and doubles up to the TTL, reaching it exactly, or stays at
// MinRefresh when that is longer; an unknown key id is fetched again
// MinRefresh after a success, not before. With the defaults (TTL 5m,
// MinRefresh 10s) as documented.
func TestJWKSBackOffSchedule(t *testing.T) {
	for name, tc := range map[string]struct {
		ttl, minRefresh time.Duration
		windows         []time.Duration
	}{
		"defaults": {windows: []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute}},
		"TTL not a power of two of MinRefresh": {ttl: 4*time.Second + time.Nanosecond, minRefresh: time.Second,
			windows: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4*time.Second + time.Nanosecond, 4*time.Second + time.Nanosecond}},
		"MinRefresh longer than the TTL": {ttl: time.Second, minRefresh: 3 * time.Second,
			windows: []time.Duration{3 * time.Second, 3 * time.Second, 3 * time.Second}},
	} {
		t.Run(name, func(t *testing.T) {
			f := newKeyFixture(t)
			c := newClock()
			v := &auth.JWKS{URL: f.p.url, Issuer: "https://login.example", TTL: tc.ttl, MinRefresh: tc.minRefresh}
			auth.SetClock(v, c.Now)
			verifyKnown(t, v, f.known)
			minRefresh := tc.windows[0]

			for _, step := range []struct {
				d       time.Duration
				fetches int32
			}{{minRefresh - time.Nanosecond, 0}, {time.Nanosecond, 1}} {
				c.Add(step.d)
				before := f.p.fetches.Load()
				if _, _, err := v.Verify(t.Context(), f.unknown); !errors.Is(err, auth.ErrInvalidToken) {
					t.Fatalf("unknown key: got %v, want ErrInvalidToken", err)
				}
				if n := f.p.fetches.Load() - before; n != step.fetches {
					t.Fatalf("%d fetches for an unknown key, want %d", n, step.fetches)
				}
			}

			f.p.down.Store(true)
			if n := fetchesAfter(t, f, v, c, max(tc.ttl, minRefresh)); n != 1 {
				t.Fatalf("%d fetches for the first failure, want 1", n)
			}
			for _, window := range tc.windows {
				if n := fetchesAfter(t, f, v, c, window-time.Nanosecond); n != 0 {
					t.Fatalf("%d fetches before the %s back-off ended, want none", n, window)
				}
				if n := fetchesAfter(t, f, v, c, time.Nanosecond); n != 1 {
					t.Fatalf("%d fetches once the %s back-off ended, want 1", n, window)
				}
			}
		})
	}
}

// TestJWKSClientWithoutTimeout: a client of its own without a timeout
// fetches the key set (the verifier bounds the fetch itself).
func TestJWKSClientWithoutTimeout(t *testing.T) {
	f := newKeyFixture(t)
	v := &auth.JWKS{URL: f.p.url, Issuer: "https://login.example", Client: &http.Client{}}
	verifyKnown(t, v, f.known)
}

// TestJWKSKeyUse: a published key without "use" verifies tokens; one
// for encryption ("use": "enc") does not.
func TestJWKSKeyUse(t *testing.T) {
	p := newProvider(t)
	plain, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	enc, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p.mu.Lock()
	p.keys = append(p.keys,
		jose.JSONWebKey{Key: &plain.PublicKey, KeyID: "plain"},
		jose.JSONWebKey{Key: &enc.PublicKey, KeyID: "enc", Use: "enc"})
	p.mu.Unlock()
	v := &auth.JWKS{URL: p.url, Issuer: "https://login.example"}
	if sub, _, err := v.Verify(t.Context(), signWith(t, jwt.SigningMethodES256, plain, "plain", claimsFor("u"))); err != nil || sub != "u" {
		t.Fatalf("key without use: got %q, %v", sub, err)
	}
	if _, _, err := v.Verify(t.Context(), signWith(t, jwt.SigningMethodES256, enc, "enc", claimsFor("u"))); !errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("encryption key: got %v, want ErrInvalidToken", err)
	}
}

// TestJWKSKnownKeysDoNotWaitForAHungProvider: with the set stale and the
// provider hanging, 100 concurrent tokens signed with a known key verify
// at once, while a single fetch refreshes the set in the background.
func TestJWKSKnownKeysDoNotWaitForAHungProvider(t *testing.T) {
	const fetchTimeout = 2 * time.Second
	f := newKeyFixture(t)
	c := newClock()
	v := &auth.JWKS{URL: f.p.url, Issuer: "https://login.example", TTL: time.Minute, MinRefresh: time.Second,
		Client: &http.Client{Timeout: fetchTimeout}}
	reg := prometheus.NewRegistry()
	if err := v.Register(reg); err != nil {
		t.Fatal(err)
	}
	auth.SetClock(v, c.Now)
	verifyKnown(t, v, f.known)

	f.p.hung.Store(true)
	c.Add(time.Minute)
	took := parallel(t, 100, func() error {
		_, _, err := v.Verify(t.Context(), f.known)
		return err
	})
	for i, d := range took {
		// A call that waited for the fetch took at least its timeout.
		if d.err != nil || d.took >= fetchTimeout {
			t.Fatalf("call %d: %v after %s; want the known key at once", i, d.err, d.took)
		}
	}
	f.p.unhang()
	waitFor(t, "the refresh to fail", func() bool { return fetchCount(t, reg, "error") == 1 })
	for range 100 {
		verifyKnown(t, v, f.known)
	}
	if n := f.p.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2: the first and one refresh", n)
	}
}

// TestJWKSUnknownKeyWaitsForOneFetchAtMost: with the provider hanging,
// 100 concurrent tokens naming an unknown key share one fetch and all
// return once it times out, refused with its time-out.
func TestJWKSUnknownKeyWaitsForOneFetchAtMost(t *testing.T) {
	const fetchTimeout = 500 * time.Millisecond
	f := newKeyFixture(t)
	c := newClock()
	v := &auth.JWKS{URL: f.p.url, Issuer: "https://login.example", TTL: time.Minute, MinRefresh: time.Second,
		Client: &http.Client{Timeout: fetchTimeout}}
	auth.SetClock(v, c.Now)
	verifyKnown(t, v, f.known)

	f.p.hung.Store(true)
	c.Add(time.Second) // past MinRefresh: an unknown key may be fetched
	took := parallel(t, 100, func() error {
		_, _, err := v.Verify(t.Context(), f.unknown)
		return err
	})
	for i, d := range took {
		// Each waited for the fetch, and got its time-out.
		var timeout net.Error
		if !errors.As(d.err, &timeout) || !timeout.Timeout() || errors.Is(d.err, auth.ErrInvalidToken) {
			t.Fatalf("call %d: got %v, want the fetch's time-out", i, d.err)
		}
		// A call that waited for two fetches took twice their timeout.
		if d.took >= 2*fetchTimeout {
			t.Fatalf("call %d returned after %s, want it within one fetch timeout (%s)", i, d.took, fetchTimeout)
		}
	}
	if n := f.p.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2: the first and one for the unknown key", n)
	}
	// While the failure backs off, the unknown key fails fast, unfetched.
	for range 100 {
		verifyUnavailable(t, v, f.unknown)
	}
	if n := f.p.fetches.Load(); n != 2 {
		t.Fatalf("%d fetches during the back-off, want 2", n)
	}
}

// TestJWKSWaitEndsWithTheCallersContext: a token waiting for the key set
// gives up when its caller does, without ending the fetch the others
// share.
func TestJWKSWaitEndsWithTheCallersContext(t *testing.T) {
	f := newKeyFixture(t)
	gate := make(chan struct{})
	f.p.gate.Store(&gate)
	v := &auth.JWKS{URL: f.p.url, Issuer: "https://login.example"}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, _, err := v.Verify(ctx, f.known)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, auth.ErrInvalidToken) {
		t.Fatalf("got %v, want the caller's deadline", err)
	}
	// The fetch goes on: once the provider answers, the set it fetched
	// verifies the next token without another fetch.
	waitFor(t, "the fetch to reach the provider", func() bool { return f.p.fetches.Load() == 1 })
	close(gate)
	verifyKnown(t, v, f.known)
	if n := f.p.fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want the one the first caller started", n)
	}
}

// TestJWKSCountsFetchesInMetrics: keel_auth_jwks_fetches_total counts
// fetches by result, failures included, whether the provider answers
// an error or refuses the connection.
func TestJWKSCountsFetchesInMetrics(t *testing.T) {
	f := newKeyFixture(t)
	c := newClock()
	v := &auth.JWKS{URL: f.p.url, Issuer: "https://login.example", TTL: time.Minute, MinRefresh: time.Second}
	auth.SetClock(v, c.Now)
	verifyKnown(t, v, f.known) // counted though before Register
	reg := prometheus.NewRegistry()
	if err := v.Register(reg); err != nil {
		t.Fatal(err)
	}
	if err := v.Register(reg); err == nil {
		t.Fatal("registered twice in one registry")
	}
	f.p.down.Store(true)
	for _, d := range []time.Duration{time.Second, time.Second, 2 * time.Second, 4 * time.Second} {
		c.Add(d)
		verifyUnavailable(t, v, f.unknown)
	}
	if ok, failed := fetchCount(t, reg, "ok"), fetchCount(t, reg, "error"); ok != 1 || failed != 4 {
		t.Fatalf("counted %v ok and %v failed fetches, want 1 and 4", ok, failed)
	}

	// Connection refused.
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	refused := &auth.JWKS{URL: closed.URL, Issuer: "https://login.example"}
	reg = prometheus.NewRegistry()
	if err := refused.Register(reg); err != nil {
		t.Fatal(err)
	}
	if ok, failed := fetchCount(t, reg, "ok"), fetchCount(t, reg, "error"); ok != 0 || failed != 0 {
		t.Fatalf("counted %v ok and %v failed fetches before any, want 0 and 0", ok, failed)
	}
	for range 200 {
		verifyUnavailable(t, refused, f.known)
	}
	if ok, failed := fetchCount(t, reg, "ok"), fetchCount(t, reg, "error"); ok != 0 || failed != 1 {
		t.Fatalf("counted %v ok and %v failed fetches for 200 tokens, want 0 and 1 (back-off)", ok, failed)
	}
}

// fetchCount returns keel_auth_jwks_fetches_total{result} from reg.
func fetchCount(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != "keel_auth_jwks_fetches_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no keel_auth_jwks_fetches_total{result=%q}", result)
	return 0
}

// outcome is one call's error and duration.
type outcome struct {
	err  error
	took time.Duration
}

// parallel runs call n times at once and returns how each went.
func parallel(t *testing.T, n int, call func() error) []outcome {
	t.Helper()
	out := make([]outcome, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range out {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			err := call()
			out[i] = outcome{err: err, took: time.Since(t0)}
		})
	}
	close(start)
	wg.Wait()
	return out
}
