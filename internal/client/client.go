// Package client is how Keel processes call their peers: by logical service
// name, never by address, under the call policy of internal/callpolicy
// (deadlines, balancing, circuit breakers, retries within a budget,
// throttling, hedging) and with a trace span per call when tracing is on.
//
//	peers, err := client.New(resolver, client.Options{Calls: settings.Calls, Metrics: registry})
//	users := client.Connect(peers, "user", userv1connect.NewUserServiceClient)
package client

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"

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
	declared  *Declared

	mu        sync.Mutex
	connected []string // logical names Connect was called with
	errs      []error
}

// Declared is what a process's contract says of the peers it calls: its
// (keel.options.v1.service).depends_on, by logical name.
type Declared struct {
	// Contract is the protobuf service the process serves, for messages:
	// "shop.order.v1.OrderService".
	Contract string
	// Peers are the logical names of the services the contract declares
	// it depends on.
	Peers []string
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
	// Declared, when set, holds the process to its contract: [Connect] to
	// a peer the contract does not declare is an error that [Peers.Err]
	// reports (and boot refuses to start the process). Default nil: any
	// peer, as the edge calls every routed service.
	Declared *Declared
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
	p := &Peers{transport: t, http: &http.Client{Transport: t}, declared: opts.Declared}
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
	p.connect(service)
	return newClient(p.http, p.BaseURL(service), append(append([]connect.ClientOption(nil), p.options...), opts...)...)
}

// connect records that the process calls service, and an error when its
// contract does not declare it.
func (p *Peers) connect(service string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !slices.Contains(p.connected, service) {
		p.connected = append(p.connected, service)
	}
	if d := p.declared; d != nil && !slices.Contains(d.Peers, service) {
		root, _, _ := strings.Cut(d.Contract, ".")
		p.errs = append(p.errs, fmt.Errorf("%s calls peer %q, which its contract does not declare: add option (keel.options.v1.service).depends_on = \"%s.%s.v1.<Service>\"; (the protobuf service %q serves) to service %s, then make generate",
			d.Contract, service, root, service, service, d.Contract))
	}
}

// Err reports every peer the process connected to that its contract does
// not declare (see [Options.Declared]), nil when there is none.
func (p *Peers) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return errors.Join(p.errs...)
}

// Connected lists the logical names of the peers [Connect] built clients
// for, in the order of their first client.
func (p *Peers) Connected() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.connected)
}
