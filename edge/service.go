package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"

	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/ratelimit"
	"github.com/keelplatform/keel/internal/server"
)

// Name is the edge's logical name in discovery and configuration.
const Name = "edge"

// Settings are the edge's configuration, the keys of
// consul/kv/<env>/edge.yaml and of keel/<env>/edge/ in Consul KV.
type Settings struct {
	config.Process `yaml:",inline"`
	// AllowedOrigins are the browser origins CORS allows; "*" allows any.
	// Dynamic. Default none: no cross-origin call from a browser.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// TrustedProxies are the networks (CIDR, or single addresses) of
	// proxies in front of the edge, such as a cloud load balancer, whose
	// X-Forwarded-For is kept and extended; from anyone else it is
	// replaced by the caller's address. Dynamic. Default none.
	TrustedProxies []string `yaml:"trusted_proxies"`
	// Auth says whose login tokens the edge accepts. Static.
	Auth AuthSettings `yaml:"auth" keel:"static"`
	// RateLimits limit each caller's calls per group of methods.
	RateLimits RateLimits `yaml:"rate_limits"`
	// Canary sends a weighted share of the calls to a service to the
	// instances of one version, by the service's logical name:
	// canary/<service>. Dynamic. Default none.
	Canary map[string]Canary `yaml:"canary"`
	// Faults injects delays and errors into the calls to a method
	// (faults/shop.inventory.v1.InventoryService.GetItem) or a whole
	// service (faults/shop.inventory.v1.InventoryService), for chaos
	// drills. Dynamic. Default none.
	Faults map[string]Fault `yaml:"faults"`
}

// AuthSettings say whose login tokens the edge accepts: the platform's
// own (HS256, signed by the user service with the key in KEEL_TOKEN_KEY),
// or an identity provider's (RS256 or ES256, checked against the keys it
// publishes).
type AuthSettings struct {
	// JWKSURL is where an identity provider publishes its keys (a JSON Web
	// Key Set); empty: the platform's own tokens. Default empty.
	JWKSURL string `yaml:"jwks_url"`
	// Issuer is the "iss" tokens must carry. Default "keel-user", the
	// user service's.
	Issuer string `yaml:"issuer"`
	// Audience, when set, is an "aud" an identity provider's tokens must
	// carry. Default empty.
	Audience string `yaml:"audience"`
}

// DefaultSettings returns the documented defaults; the edge listens on
// 127.0.0.1:8080 by default.
func DefaultSettings() Settings {
	p := config.DefaultProcess()
	p.Server.Addr = "127.0.0.1:8080"
	return Settings{Process: p, Auth: AuthSettings{Issuer: auth.DefaultIssuer}, RateLimits: DefaultRateLimits()}
}

// Validate reports every setting out of range, naming its key.
func (s Settings) Validate() error {
	errs := []error{s.Process.Validate()}
	for _, o := range s.AllowedOrigins {
		if o == "" {
			errs = append(errs, &config.KeyError{Key: "allowed_origins", Err: errors.New("has an empty origin")})
		}
	}
	if _, err := newTrustedProxies(s.TrustedProxies); err != nil {
		errs = append(errs, &config.KeyError{Key: "trusted_proxies", Err: err})
	}
	if s.Auth.Issuer == "" {
		errs = append(errs, &config.KeyError{Key: "auth/issuer", Err: errors.New("must be set")})
	}
	if u := s.Auth.JWKSURL; u != "" {
		if parsed, err := url.Parse(u); err != nil || (parsed.Scheme != "https" && parsed.Scheme != "http") || parsed.Host == "" {
			errs = append(errs, &config.KeyError{Key: "auth/jwks_url", Err: fmt.Errorf("must be an http(s) URL, got %q", u)})
		}
	}
	errs = append(errs, validateTraffic(s)...)
	return errors.Join(errs...)
}

// Service describes the edge to [boot]: an edge routing the protobuf
// services named in contracts (each to the logical service its package
// names, "shop.user.v1.UserService" to "user").
func Service(contracts []string) boot.Service[Settings] {
	return boot.Service[Settings]{
		Name:     Name,
		Meta:     map[string]string{"role": "edge"},
		Defaults: DefaultSettings(),
		Build: func(_ context.Context, env boot.Env[Settings]) (boot.Process, error) {
			s := env.Config.Current()
			authn, err := authFrom(s.Auth, env.Secret)
			if err != nil {
				return nil, fmt.Errorf("edge: %w", err)
			}
			if jwks, ok := authn.Tokens.(*auth.JWKS); ok {
				if err := jwks.Register(env.Metrics); err != nil {
					return nil, fmt.Errorf("edge: %w", err)
				}
			}
			limiter := newLimiter(s.RateLimits, env.Secret, env.Logger)
			e, err := New(Config{
				Auth:           authn,
				RateLimits:     s.RateLimits.Groups,
				Limiter:        limiter,
				Canary:         s.Canary,
				Faults:         s.Faults,
				Server:         server.ConfigFrom(s.Process),
				Services:       contracts,
				AllowedOrigins: s.AllowedOrigins,
				TrustedProxies: s.TrustedProxies,
				Calls:          &s.Calls,
				Transport:      env.Peers.HTTPClient().Transport,
				Metrics:        env.Metrics,
				Telemetry:      env.Telemetry,
			}, env.Resolver, env.Logger)
			if err != nil {
				limiter.Close()
				return nil, fmt.Errorf("edge: %w", err)
			}
			e.release = limiter.Close
			e.OnStop(func(context.Context) { limiter.Close() })
			env.Config.OnChange(func(_, s Settings) {
				e.SetAllowedOrigins(s.AllowedOrigins)
				e.SetCalls(s.Calls)
				e.SetShedding(s.Shedding)
				// Validated already: these cannot fail.
				_ = e.SetTrustedProxies(s.TrustedProxies)
				_ = e.SetRateLimits(s.RateLimits.Groups)
				_ = e.SetCanary(s.Canary)
				_ = e.SetFaults(s.Faults)
			})
			return e, nil
		},
	}
}

// newLimiter builds the rate limiter of s: on Redis when it has an
// address (the credentials are secrets, KEEL_REDIS_USERNAME and
// KEEL_REDIS_PASSWORD), in process memory otherwise.
func newLimiter(s RateLimits, secret func(string) (string, bool), logger *slog.Logger) *ratelimit.Limiter {
	username, _ := secret("KEEL_REDIS_USERNAME")
	password, _ := secret("KEEL_REDIS_PASSWORD")
	return ratelimit.New(ratelimit.Options{
		RedisAddr:     s.RedisAddr,
		RedisUsername: username,
		RedisPassword: password,
		KeyPrefix:     s.KeyPrefix,
		Timeout:       s.Timeout,
		MaxKeys:       s.MaxKeys,
		Logger:        logger,
	})
}

// The edge mounts the configuration status.
var _ boot.AdminProcess = (*Edge)(nil)

// authFrom builds the edge's authentication from its settings and its
// secrets: the identity key (KEEL_IDENTITY_KEY), and the token key
// (KEEL_TOKEN_KEY) unless an identity provider's keys are used.
func authFrom(s AuthSettings, secret func(string) (string, bool)) (*Auth, error) {
	identityKey, _ := secret(auth.IdentityKeyVar)
	keys, err := auth.SplitKeys([]byte(identityKey))
	if err != nil || len(keys) == 0 {
		return nil, fmt.Errorf("%s must hold the environment's identity key, at least %d bytes, shared with the services (several, separated by commas, the one to sign with first, while rotating it)", auth.IdentityKeyVar, auth.MinKeyLen)
	}
	// The edge signs with the newest key; the services believe any.
	a := &Auth{IdentityKey: keys[0]}
	if s.JWKSURL != "" {
		a.Tokens = &auth.JWKS{URL: s.JWKSURL, Issuer: s.Issuer, Audience: s.Audience}
		return a, nil
	}
	tokenKey, _ := secret(auth.TokenKeyVar)
	tokenKeys, err := auth.SplitKeys([]byte(tokenKey))
	if err != nil || len(tokenKeys) == 0 {
		return nil, fmt.Errorf("%s must hold the login token key, at least %d bytes, shared with the user service (several, separated by commas, while rotating it; or set auth/jwks_url)", auth.TokenKeyVar, auth.MinKeyLen)
	}
	a.Tokens = auth.HS256{Keys: tokenKeys, Issuer: s.Issuer}
	return a, nil
}
