// Package client is how Keel processes call their peers: by logical service
// name, never by address, under the call policy of internal/callpolicy
// (deadlines, balancing, circuit breakers, retries within a budget,
// throttling, hedging) and with a trace span per call when tracing is on.
//
//	peers, err := client.New(resolver, client.Options{Calls: settings.Calls, Metrics: registry})
//	users := client.Connect(peers, "user", userv1connect.NewUserServiceClient)
package client

import (
	"fmt"
	"net/http"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keelplatform/keel/internal/callpolicy"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/telemetry"
)

// Peers hands out clients for services by logical name. Create it with
// [New]; it is safe for concurrent use.
type Peers struct {
	transport *callpolicy.Transport
	http      *http.Client
	options   []connect.ClientOption
}

// Options say how peers are called. The zero value of each field means
// its documented default.
type Options struct {
	// Calls is the call policy. Default [config.DefaultCalls].
	Calls *config.Calls
	// Metrics receives the call policy's metrics (keel_client_*).
	// Default: none.
	Metrics prometheus.Registerer
	// Telemetry traces the calls. Default [telemetry.Off].
	Telemetry *telemetry.Telemetry
	// Interceptors run on every call, e.g. to pass the caller's identity
	// on. Default none.
	Interceptors []connect.Interceptor
}

// New returns peers resolved through resolver and called as opts say.
// Keep the call policy current with [Peers.SetSettings].
func New(resolver discovery.Resolver, opts Options) (*Peers, error) {
	calls := config.DefaultCalls()
	if opts.Calls != nil {
		calls = *opts.Calls
	}
	t, err := callpolicy.NewTransport(resolver, calls, opts.Metrics)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	p := &Peers{transport: t, http: &http.Client{Transport: t}}
	if interceptor, ok := opts.Telemetry.ClientInterceptor(); ok {
		p.options = append(p.options, connect.WithInterceptors(interceptor))
	}
	if len(opts.Interceptors) > 0 {
		p.options = append(p.options, connect.WithInterceptors(opts.Interceptors...))
	}
	return p, nil
}

// SetSettings applies new call settings, as configuration reloads do.
func (p *Peers) SetSettings(calls config.Calls) { p.transport.SetSettings(calls) }

// HTTPClient is the client to pass to generated Connect client constructors.
func (p *Peers) HTTPClient() *http.Client { return p.http }

// BaseURL is the base URL for service: its logical name as the host.
func (p *Peers) BaseURL(service string) string { return "http://" + service }

// CloseIdleConnections closes pooled connections that carry no call.
func (p *Peers) CloseIdleConnections() { p.transport.CloseIdleConnections() }

// Connect builds a generated Connect client for service, e.g.
// Connect(peers, "user", userv1connect.NewUserServiceClient). Calls made
// with it carry trace context when tracing is on.
func Connect[C any](
	p *Peers,
	service string,
	newClient func(connect.HTTPClient, string, ...connect.ClientOption) C,
	opts ...connect.ClientOption,
) C {
	return newClient(p.http, p.BaseURL(service), append(append([]connect.ClientOption(nil), p.options...), opts...)...)
}
