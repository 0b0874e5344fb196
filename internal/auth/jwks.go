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
	"github.com/prometheus/client_golang/prometheus"
)

// JWKS verifies login tokens signed by an identity provider with keys it
// publishes as a JSON Web Key Set: RS256 or ES256 only, with a required
// expiry, the expected issuer and, when set, audience; a key published
// with an "alg" verifies only tokens signed with that algorithm. It is
// safe for concurrent use.
//
// Keys are fetched on first use and kept for [JWKS.TTL]; the set is
// fetched again early (at most every [JWKS.MinRefresh]) when a token
// names a key id not yet known, as a provider rotating its keys does.
// At most one fetch is in flight at a time, and it is done without
// holding up the tokens whose key is known: once the set is older than
// the TTL, they are verified with the keys held while one fetch refreshes
// the set in the background, so they keep verifying while the provider
// is down or hung. A token naming an unknown key waits at most for one
// fetch, the one in flight or one it starts, bounded by the fetch timeout.
//
// A failed fetch backs off: no fetch for MinRefresh after the first
// failure, then twice as long after each further one, up to the TTL (with
// the defaults 10s, 20s, 40s, 80s, 160s, then every 5m), until a fetch
// succeeds. Meanwhile a token naming an unknown key fails at once with the
// last fetch's error, which is not [ErrInvalidToken]: its key may be one
// the provider published since. [JWKS.Register] exports the fetches as
// Prometheus metrics.
type JWKS struct {
	// URL is where the key set is published, e.g.
	// "https://login.example.com/.well-known/jwks.json".
	URL string
	// Issuer is the "iss" tokens must carry.
	Issuer string
	// Audience, when set, is an "aud" tokens must carry.
	Audience string
	// Client fetches the key set. Default: a client with a 5s timeout. A
	// fetch is given up after the client's Timeout, or 5s when it has none.
	Client *http.Client
	// TTL is how long a fetched key set is used before it is refreshed,
	// and the longest back-off between failed fetches. Default 5m.
	TTL time.Duration
	// MinRefresh is the least time between a fetch and a fetch for an
	// unknown key id, and the first back-off after a failed fetch.
	// Default 10s.
	MinRefresh time.Duration

	mu       sync.Mutex
	keys     map[string]publishedKey // by key id; nil until a fetch succeeds
	fetched  time.Time               // when the last successful fetch ended
	failures int                     // failed fetches since the last success
	retryAt  time.Time               // no fetch before, after a failure
	lastErr  error                   // the last fetch's error, while failures > 0
	inFlight *flight                 // the fetch under way, or nil

	// now is the clock; time.Now when nil.
	now func() time.Time

	metricsOnce sync.Once
	fetches     *prometheus.CounterVec
}

// Defaults of [JWKS].
const (
	defaultJWKSTTL        = 5 * time.Minute
	defaultJWKSMinRefresh = 10 * time.Second
	defaultFetchTimeout   = 5 * time.Second
)

// flight is one fetch of the key set; keys and err are set before done
// is closed.
type flight struct {
	done chan struct{}
	keys map[string]publishedKey
	err  error
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

// key returns the public key with id kid. A known key is returned at
// once, starting a background refresh when the set is older than the TTL.
// An unknown one waits for the fetch in flight, or starts one unless the
// set was fetched within MinRefresh or a failed fetch is backing off.
func (j *JWKS) key(ctx context.Context, kid string) (publishedKey, error) {
	ttl, minRefresh := j.durations()
	j.mu.Lock()
	now := j.clock()
	idle := j.inFlight == nil && !now.Before(j.retryAt)
	if key, known := j.keys[kid]; known {
		if idle && now.Sub(j.fetched) >= ttl {
			j.startFetch(ctx)
		}
		j.mu.Unlock()
		return key, nil
	}
	f := j.inFlight
	if f == nil {
		if j.keys != nil && now.Sub(j.fetched) < minRefresh {
			j.mu.Unlock()
			return publishedKey{}, fmt.Errorf("%w: %q", errUnknownKey, kid)
		}
		if !idle { // a failed fetch is backing off
			err, wait := j.lastErr, j.retryAt.Sub(now)
			j.mu.Unlock()
			return publishedKey{}, fmt.Errorf("auth: key set unavailable, next fetch in %s: %w", wait, err)
		}
		f = j.startFetch(ctx)
	}
	j.mu.Unlock()
	select {
	case <-f.done:
	case <-ctx.Done():
		return publishedKey{}, fmt.Errorf("auth: waiting for the key set: %w", context.Cause(ctx))
	}
	if f.err != nil {
		return publishedKey{}, f.err
	}
	if key, ok := f.keys[kid]; ok {
		return key, nil
	}
	return publishedKey{}, fmt.Errorf("%w: %q", errUnknownKey, kid)
}

// durations returns the TTL and MinRefresh, defaults applied.
func (j *JWKS) durations() (ttl, minRefresh time.Duration) {
	ttl, minRefresh = j.TTL, j.MinRefresh
	if ttl <= 0 {
		ttl = defaultJWKSTTL
	}
	if minRefresh <= 0 {
		minRefresh = defaultJWKSMinRefresh
	}
	return ttl, minRefresh
}

// clock returns the time now.
func (j *JWKS) clock() time.Time {
	if j.now != nil {
		return j.now()
	}
	return time.Now()
}

// startFetch starts fetching the key set in the background and returns
// the fetch; j.mu must be held. The fetch keeps ctx's values but not its
// cancellation: other callers may wait for it.
func (j *JWKS) startFetch(ctx context.Context) *flight {
	f := &flight{done: make(chan struct{})}
	j.inFlight = f
	go func() {
		keys, err := j.fetch(context.WithoutCancel(ctx))
		j.finish(keys, err)
		f.keys, f.err = keys, err
		close(f.done)
	}()
	return f
}

// finish records the outcome of the fetch in flight.
func (j *JWKS) finish(keys map[string]publishedKey, err error) {
	ttl, minRefresh := j.durations()
	j.mu.Lock()
	defer j.mu.Unlock()
	j.inFlight = nil
	now := j.clock()
	if err != nil {
		j.metrics().WithLabelValues("error").Inc()
		j.failures++
		j.lastErr = err
		j.retryAt = now.Add(backoff(j.failures, minRefresh, ttl))
		return
	}
	j.metrics().WithLabelValues("ok").Inc()
	j.keys, j.fetched = keys, now
	j.failures, j.lastErr, j.retryAt = 0, nil, time.Time{}
}

// backoff is how long to wait for the next fetch after failures failed
// ones in a row: first, then doubling, up to ceiling (first when it is
// longer).
func backoff(failures int, first, ceiling time.Duration) time.Duration {
	ceiling = max(ceiling, first)
	d := first
	for i := 1; i < failures && d < ceiling; i++ {
		if d > ceiling/2 {
			d = ceiling
		} else {
			d *= 2
		}
	}
	return d
}

// Register adds the verifier's metrics to reg:
// keel_auth_jwks_fetches_total, the fetches of the key set by result, ok
// or error. Fetches before it are counted too.
func (j *JWKS) Register(reg prometheus.Registerer) error {
	if err := reg.Register(j.metrics()); err != nil {
		return fmt.Errorf("auth: register key set metrics: %w", err)
	}
	return nil
}

// metrics returns the fetch counters, creating them on first use.
func (j *JWKS) metrics() *prometheus.CounterVec {
	j.metricsOnce.Do(func() {
		j.fetches = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keel_auth_jwks_fetches_total",
			Help: "Fetches of the identity provider's key set (JWKS), by result: ok, or error (unreachable, timed out, not 200, or not a key set); failures back off.",
		}, []string{"result"})
		j.fetches.WithLabelValues("ok")
		j.fetches.WithLabelValues("error")
	})
	return j.fetches
}

// fetch reads the key set.
func (j *JWKS) fetch(ctx context.Context) (map[string]publishedKey, error) {
	client := j.Client
	if client == nil {
		client = &http.Client{Timeout: defaultFetchTimeout}
	}
	timeout := defaultFetchTimeout
	if client.Timeout > 0 {
		timeout = client.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
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
