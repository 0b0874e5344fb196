package edge

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/keelplatform/keel/internal/auth"
)

// countingVerifier counts the tokens it is asked to verify.
type countingVerifier struct {
	auth.Verifier
	calls atomic.Int32
}

func (c *countingVerifier) Verify(ctx context.Context, token string) (string, time.Time, error) {
	c.calls.Add(1)
	return c.Verifier.Verify(ctx, token)
}

// TestVerifiedTokensAreKeptUntilTheyExpire: a token is verified once and
// then believed from the cache, but never past its expiry, and a token
// that differs from a cached one is verified on its own.
func TestVerifiedTokensAreKeptUntilTheyExpire(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	v := &countingVerifier{Verifier: auth.HS256{Keys: [][]byte{key}}}
	a, err := newAuthenticator(&Auth{Tokens: v, IdentityKey: key})
	if err != nil {
		t.Fatal(err)
	}
	token, expires, err := auth.Issuer{Key: key, TTL: 2 * time.Second}.Issue("user-1")
	if err != nil {
		t.Fatal(err)
	}
	check := func(token string) (string, error) {
		h := http.Header{"Authorization": {"Bearer " + token}}
		return a.check(t.Context(), h, "/shop.order.v1.OrderService/GetOrder", loginRequired)
	}
	for range 3 {
		if user, err := check(token); err != nil || user != "user-1" {
			t.Fatalf("check: %q, %v", user, err)
		}
	}
	if n := v.calls.Load(); n != 1 {
		t.Fatalf("verified %d times for three calls, want once", n)
	}
	other, _, _ := auth.Issuer{Key: []byte("ffffffffffffffffffffffffffffffff"), TTL: time.Minute}.Issue("user-1")
	if _, err := check(other); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("a token signed with another key: %v, want unauthenticated", err)
	}

	// Past its expiry the cached token is refused: poll until it is, and
	// fail if it is still taken after it expired.
	for {
		_, err := check(token)
		if err != nil {
			if connect.CodeOf(err) != connect.CodeUnauthenticated || time.Now().Before(expires) {
				t.Fatalf("refused %v before its expiry %v: %v", time.Until(expires), expires, err)
			}
			return
		}
		if time.Now().After(expires.Add(100 * time.Millisecond)) {
			t.Fatalf("an expired token is still taken %v after its expiry", time.Since(expires))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTokenKeyRotates: while KEEL_TOKEN_KEY holds a new and an old key,
// the edge believes login tokens signed with either, and no other; a
// short key among them stops the edge from starting, naming the variable.
func TestTokenKeyRotates(t *testing.T) {
	identityKey := "an-identity-key-an-identity-key-an-identity-key"
	newKey := []byte("the-new-token-key-the-new-token-key")
	oldKey := []byte("the-old-token-key-the-old-token-key")
	secrets := func(tokenKey string) func(string) (string, bool) {
		return func(name string) (string, bool) {
			v, ok := map[string]string{auth.TokenKeyVar: tokenKey, auth.IdentityKeyVar: identityKey}[name]
			return v, ok
		}
	}
	a, err := authFrom(AuthSettings{}, secrets(string(newKey)+","+string(oldKey)))
	if err != nil {
		t.Fatal(err)
	}
	for name, key := range map[string][]byte{"new": newKey, "old": oldKey} {
		token, _, _ := auth.Issuer{Key: key, TTL: time.Minute}.Issue("user-1")
		if sub, _, err := a.Tokens.Verify(t.Context(), token); err != nil || sub != "user-1" {
			t.Errorf("token signed with the %s key: %q, %v", name, sub, err)
		}
	}
	other, _, _ := auth.Issuer{Key: []byte("somebody-elses-key-somebody-elses"), TTL: time.Minute}.Issue("user-1")
	if _, _, err := a.Tokens.Verify(t.Context(), other); err == nil {
		t.Error("a token signed with neither key was believed")
	}
	if _, err := authFrom(AuthSettings{}, secrets(string(newKey)+",short")); err == nil || !strings.Contains(err.Error(), auth.TokenKeyVar) {
		t.Errorf("a short key among the token keys: %v, want an error naming %s", err, auth.TokenKeyVar)
	}
}
