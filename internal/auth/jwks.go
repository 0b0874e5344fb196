package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
)

// JWKS verifies login tokens signed by an identity provider with keys it
// publishes as a JSON Web Key Set: RS256 or ES256 only, with a required
// expiry, the expected issuer and, when set, audience; a key published
// with an "alg" verifies only tokens signed with that algorithm. Keys are fetched
// on first use, kept for [JWKS.TTL], and fetched again early (at most
// every [JWKS.MinRefresh]) when a token names a key id not yet known, as
// a provider rotating its keys does. It is safe for concurrent use.
type JWKS struct {
	// URL is where the key set is published, e.g.
	// "https://login.example.com/.well-known/jwks.json".
	URL string
	// Issuer is the "iss" tokens must carry.
	Issuer string
	// Audience, when set, is an "aud" tokens must carry.
	Audience string
	// Client fetches the key set. Default: a client with a 5s timeout.
	Client *http.Client
	// TTL is how long a fetched key set is used. Default 5m.
	TTL time.Duration
	// MinRefresh is the least time between two fetches. Default 10s.
	MinRefresh time.Duration

	mu      sync.Mutex
	keys    map[string]publishedKey // by key id
	fetched time.Time
}

// publishedKey is one key of the set: *rsa.PublicKey or *ecdsa.PublicKey,
// and the algorithm it is for when the set says.
type publishedKey struct {
	key any
	alg string
}

// jwksAlgorithms are the signing algorithms a JWKS verifier accepts.
var jwksAlgorithms = []string{jwt.SigningMethodRS256.Alg(), jwt.SigningMethodES256.Alg()}

// Verify checks token against the published keys and returns its subject
// and expiry. Errors wrap [ErrInvalidToken], but for a key set that
// cannot be fetched.
func (j *JWKS) Verify(ctx context.Context, token string) (string, time.Time, error) {
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(jwksAlgorithms),
		jwt.WithIssuer(j.Issuer),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	}
	if j.Audience != "" {
		opts = append(opts, jwt.WithAudience(j.Audience))
	}
	var fetchErr error
	var claims jwt.RegisteredClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		key, err := j.key(ctx, kid)
		if err != nil && !errors.Is(err, errUnknownKey) {
			fetchErr = err
		}
		if err != nil {
			return nil, err
		}
		if key.alg != "" && key.alg != t.Method.Alg() {
			return nil, fmt.Errorf("key %q is for %s, the token is signed with %s", kid, key.alg, t.Method.Alg())
		}
		return key.key, nil
	}, opts...)
	if fetchErr != nil {
		return "", time.Time{}, fetchErr
	}
	if err != nil {
		return "", time.Time{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if claims.Subject == "" {
		return "", time.Time{}, fmt.Errorf("%w: no subject", ErrInvalidToken)
	}
	return claims.Subject, claims.ExpiresAt.Time, nil
}

// errUnknownKey is the cause of a token whose key is not published.
var errUnknownKey = errors.New("signed with a key the key set does not hold")

// key returns the public key with id kid, fetching the key set when it is
// stale or, within MinRefresh, lacks kid.
func (j *JWKS) key(ctx context.Context, kid string) (publishedKey, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	ttl, minRefresh := j.TTL, j.MinRefresh
	if ttl <= 0 {
		ttl = 5 * time.Minute
	}
	if minRefresh <= 0 {
		minRefresh = 10 * time.Second
	}
	key, known := j.keys[kid]
	age := time.Since(j.fetched)
	if (known && age < ttl) || (!known && j.keys != nil && age < minRefresh) {
		if !known {
			return publishedKey{}, fmt.Errorf("%w: %q", errUnknownKey, kid)
		}
		return key, nil
	}
	keys, err := j.fetch(ctx)
	if err != nil {
		if known {
			return key, nil // keep using what was published while the provider is unreachable
		}
		return publishedKey{}, err
	}
	j.keys, j.fetched = keys, time.Now()
	if key, ok := keys[kid]; ok {
		return key, nil
	}
	return publishedKey{}, fmt.Errorf("%w: %q", errUnknownKey, kid)
}

// fetch reads the key set.
func (j *JWKS) fetch(ctx context.Context) (map[string]publishedKey, error) {
	client := j.Client
	if client == nil {
		client = &http.Client{Timeout: 5 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.URL, nil)
	if err != nil {
		return nil, fmt.Errorf("auth: key set %s: %w", j.URL, err)
	}
	res, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("auth: fetch key set: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("auth: fetch key set %s: %s", j.URL, res.Status)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(io.LimitReader(res.Body, 1<<20)).Decode(&set); err != nil {
		return nil, fmt.Errorf("auth: key set %s: %w", j.URL, err)
	}
	keys := make(map[string]publishedKey, len(set.Keys))
	for _, k := range set.Keys {
		if !k.IsPublic() || !k.Valid() || (k.Use != "" && k.Use != "sig") {
			continue
		}
		keys[k.KeyID] = publishedKey{key: k.Key, alg: k.Algorithm}
	}
	return keys, nil
}
