package consul

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// DefaultAddr is the agent address used when [Config.Addr] is empty: the
// local agent's default HTTP port.
const DefaultAddr = "127.0.0.1:8500"

// verifyTimeout bounds the checks [NewClient] makes before returning.
const verifyTimeout = 5 * time.Second

// Config says how to reach a Consul agent. The zero value means the local
// agent on [DefaultAddr] over plain HTTP, without a token.
type Config struct {
	// Addr is the agent's HTTP address, host:port. Default [DefaultAddr].
	Addr string
	// Token is the ACL token sent with every request. Empty means the
	// agent's default (anonymous) token.
	Token string
	// Scheme is "http" (default) or "https".
	Scheme string
}

// String describes the agent without the token, so a Config can be logged.
func (c Config) String() string {
	token := "none"
	if c.Token != "" {
		token = "set"
	}
	return fmt.Sprintf("%s://%s (token %s)", c.scheme(), c.addr(), token)
}

func (c Config) addr() string {
	if c.Addr == "" {
		return DefaultAddr
	}
	return c.Addr
}

func (c Config) scheme() string {
	if c.Scheme == "" {
		return "http"
	}
	return c.Scheme
}

// ConfigFromEnv reads the variables the consul CLI reads: CONSUL_HTTP_ADDR
// (host:port, optionally prefixed with http:// or https://),
// CONSUL_HTTP_TOKEN, and CONSUL_HTTP_SSL=true for https.
func ConfigFromEnv() Config {
	cfg := Config{
		Addr:  strings.TrimSpace(os.Getenv("CONSUL_HTTP_ADDR")),
		Token: strings.TrimSpace(os.Getenv("CONSUL_HTTP_TOKEN")),
	}
	if scheme, rest, ok := strings.Cut(cfg.Addr, "://"); ok {
		cfg.Scheme, cfg.Addr = scheme, rest
	}
	if cfg.Scheme == "" && strings.EqualFold(os.Getenv("CONSUL_HTTP_SSL"), "true") {
		cfg.Scheme = "https"
	}
	return cfg
}

// NewClient returns a client for the agent cfg names, after checking, within
// a few seconds, that the agent answers and that it accepts cfg.Token: a
// process started with a wrong address or token fails at once with an error
// that says which, instead of failing every registration later. Errors
// never contain the token.
//
// Only cfg is used: unlike [api.DefaultConfig], environment variables such
// as CONSUL_HTTP_TOKEN are ignored unless passed through [ConfigFromEnv].
func NewClient(cfg Config) (*api.Client, error) {
	switch cfg.scheme() {
	case "http", "https":
	default:
		return nil, fmt.Errorf("consul: scheme %q: want http or https", cfg.Scheme)
	}
	conf := api.DefaultConfig()
	conf.Address = cfg.addr()
	conf.Scheme = cfg.scheme()
	// DefaultConfig read these from the environment; only cfg counts.
	conf.Token = cfg.Token
	conf.TokenFile = ""
	conf.HttpAuth = nil
	client, err := api.NewClient(conf)
	if err != nil {
		return nil, fmt.Errorf("consul: client for %s: %w", cfg, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout)
	defer cancel()
	if err := verify(ctx, client, cfg); err != nil {
		return nil, err
	}
	return client, nil
}

// verify checks that the agent answers and, when a token is set, that it
// knows the token. Reading one's own token needs no ACL rule, so this
// works for tokens of any privilege.
func verify(ctx context.Context, client *api.Client, cfg Config) error {
	q := (&api.QueryOptions{}).WithContext(ctx)
	if _, err := client.Status().LeaderWithQueryOptions(q); err != nil {
		return fmt.Errorf("consul: agent at %s does not answer: %w", cfg, redact(err, cfg.Token))
	}
	if cfg.Token == "" {
		return nil
	}
	_, _, err := client.ACL().TokenReadSelf(q)
	var status api.StatusError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &status) && status.Code == http.StatusUnauthorized && strings.Contains(status.Body, "ACL support disabled"):
		// ACLs are off: every token is accepted and ignored.
		return nil
	case errors.As(err, &status) && status.Code == http.StatusForbidden:
		return fmt.Errorf("consul: agent at %s rejected the token (check CONSUL_HTTP_TOKEN): %w", cfg, redact(err, cfg.Token))
	default:
		return fmt.Errorf("consul: check the token with agent at %s: %w", cfg, redact(err, cfg.Token))
	}
}

// redact guards against a dependency ever echoing the token in an error.
func redact(err error, token string) error {
	if token == "" || !strings.Contains(err.Error(), token) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), token, "<redacted>"))
}
