package edge

import (
	"context"
	"errors"
	"fmt"

	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/server"
)

// Name is the edge's logical name in discovery and configuration.
const Name = "edge"

// Settings are the edge's configuration, the keys of
// consul/kv/<env>/edge.yaml and of keel/<env>/edge/ in Consul KV.
type Settings struct {
	config.Process `yaml:",inline"`
	// AllowedOrigins are the browser origins CORS allows; "*" allows any.
	// Dynamic. Default ["*"].
	AllowedOrigins []string `yaml:"allowed_origins"`
	// TrustedProxies are the networks (CIDR, or single addresses) of
	// proxies in front of the edge, such as a cloud load balancer, whose
	// X-Forwarded-For is kept and extended; from anyone else it is
	// replaced by the caller's address. Dynamic. Default none.
	TrustedProxies []string `yaml:"trusted_proxies"`
}

// DefaultSettings returns the documented defaults; the edge listens on
// 127.0.0.1:8080 by default.
func DefaultSettings() Settings {
	p := config.DefaultProcess()
	p.Server.Addr = "127.0.0.1:8080"
	return Settings{Process: p, AllowedOrigins: []string{"*"}}
}

// Validate reports every setting out of range, naming its key.
func (s Settings) Validate() error {
	errs := []error{s.Process.Validate()}
	if len(s.AllowedOrigins) == 0 {
		errs = append(errs, &config.KeyError{Key: "allowed_origins", Err: errors.New(`must list at least one origin (or "*")`)})
	}
	for _, o := range s.AllowedOrigins {
		if o == "" {
			errs = append(errs, &config.KeyError{Key: "allowed_origins", Err: errors.New("has an empty origin")})
		}
	}
	if _, err := newTrustedProxies(s.TrustedProxies); err != nil {
		errs = append(errs, &config.KeyError{Key: "trusted_proxies", Err: err})
	}
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
			e, err := New(Config{
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
				return nil, fmt.Errorf("edge: %w", err)
			}
			env.Config.OnChange(func(_, s Settings) {
				e.SetAllowedOrigins(s.AllowedOrigins)
				e.SetCalls(s.Calls)
				e.SetShedding(s.Shedding)
				_ = e.SetTrustedProxies(s.TrustedProxies) // validated already
			})
			return e, nil
		},
	}
}

// The edge mounts the configuration status.
var _ boot.AdminProcess = (*Edge)(nil)
