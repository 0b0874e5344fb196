package edge_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/testkit"
)

// TestJWKSFetchesAreInTheEdgeMetrics: an edge checking an identity
// provider's tokens exports keel_auth_jwks_fetches_total, and a token it
// cannot check because the provider is down counts a failed fetch.
func TestJWKSFetchesAreInTheEdgeMetrics(t *testing.T) {
	t.Parallel()
	provider := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	t.Cleanup(provider.Close)
	url, admin := bootEdge(t, discovery.NewStatic(), config.NewMemorySource(map[string]string{"auth/jwks_url": provider.URL}))

	const failed, fetched = `keel_auth_jwks_fetches_total{result="error"}`, `keel_auth_jwks_fetches_total{result="ok"}`
	samples := testkit.Scrape(t, admin+"/metrics")
	if n, ok := samples[failed]; !ok || n != 0 || samples[fetched] != 0 {
		t.Fatalf("before any token: %s = %v (present %v), want 0", failed, n, ok)
	}

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.RegisteredClaims{
		Issuer: "keel-user", Subject: knownUser, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour)),
	})
	tok.Header["kid"] = "k1"
	signed, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	_, err = userv1connect.NewUserServiceClient(http.DefaultClient, url, headers("Authorization", "Bearer "+signed)).
		GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: knownUser}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("token with the provider down: got %v, want unavailable", err)
	}
	samples = testkit.Scrape(t, admin+"/metrics")
	if samples[failed] != 1 || samples[fetched] != 0 {
		t.Fatalf("after one token with the provider down: %s = %v, %s = %v; want 1 and 0", failed, samples[failed], fetched, samples[fetched])
	}
}
