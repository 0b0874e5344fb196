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
	return errors.Join(errs...)
}

// Service describes the edge to [boot].
func Service() boot.Service[Settings] {
	return boot.Service[Settings]{
		Name:     Name,
		Meta:     map[string]string{"role": "edge"},
		Defaults: DefaultSettings(),
		Build: func(_ context.Context, env boot.Env[Settings]) (boot.Process, error) {
			s := env.Config.Current()
			e, err := New(Config{
				Server: server.Config{
					Addr:            s.Server.Addr,
					AdminAddr:       s.Server.AdminAddr,
					MaxRequestBytes: s.Server.MaxRequestBytes,
					DrainDelay:      s.Server.DrainDelay,
					ShutdownTimeout: s.Server.ShutdownTimeout,
				},
				AllowedOrigins: s.AllowedOrigins,
			}, env.Resolver, env.Logger)
			if err != nil {
				return nil, fmt.Errorf("edge: %w", err)
			}
			env.Config.OnChange(func(_, s Settings) { e.SetAllowedOrigins(s.AllowedOrigins) })
			return e, nil
		},
	}
}

// The edge exposes its registry and mounts the configuration status.
var (
	_ boot.MetricsProcess = (*Edge)(nil)
	_ boot.AdminProcess   = (*Edge)(nil)
)
