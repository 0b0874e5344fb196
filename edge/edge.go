// Package edge is Keel's front door: one port where browsers (gRPC-Web,
// Connect JSON), curl and gRPC clients reach every shop service. It routes
// each "/package.Service/Method" call to the service that owns it, passing
// Connect, gRPC and gRPC-Web through unchanged, under the call policy of
// internal/callpolicy (balancing, breakers, retries, throttling, deadlines);
// it serves the REST routes the contracts declare (google.api.http),
// transcoded into calls that take the same path; it sheds load it cannot
// take, enforces the request size limit, traces every call, and serves gRPC
// health and reflection for everything it routes. It controls traffic
// (traffic.go): rate limits per caller and group of methods, weighted
// canary routing by instance version, and fault injection for drills.
package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	connectcors "connectrpc.com/cors"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/cors"

	"github.com/keelplatform/keel/internal/callpolicy"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/ratelimit"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/telemetry"
)

// Config is how the edge listens and what it routes. The zero value of each
// field means its documented default.
type Config struct {
	// Server holds the listener settings and limits. Default Addr
	// "127.0.0.1:8080". Its MaxRequestBytes bounds every proxied request
	// message too.
	Server server.Config
	// Services are the protobuf services to route; at least one.
	Services []string
	// Routes overrides the logical service a protobuf service is routed to;
	// by default "shop.user.v1.UserService" goes to "user".
	Routes map[string]string
	// AllowedOrigins are the browser origins allowed by CORS; "*" allows
	// any. Default none: no cross-origin call from a browser.
	AllowedOrigins []string
	// TrustedProxies are the networks (CIDR) of proxies in front of the
	// edge whose X-Forwarded-For is kept. Default none.
	TrustedProxies []string
	// Calls is the call policy upstream. Default [config.DefaultCalls].
	Calls *config.Calls
	// Transport sends calls upstream. Default: a [callpolicy.Transport]
	// under Calls over the resolver, its metrics in Metrics.
	Transport http.RoundTripper
	// Metrics is the Prometheus registry served at /metrics. Default: a
	// new one.
	Metrics *prometheus.Registry
	// Telemetry traces calls. Default [telemetry.Off].
	Telemetry *telemetry.Telemetry
	// Auth authenticates callers as each method's contract says (public,
	// internal, or login required) and vouches for them upstream.
	// Default: none, every call passes anonymous (for tests, or an edge
	// behind a gateway that authenticates); the edge process always sets
	// it.
	Auth *Auth
	// RateLimits are the rate limit groups, by name; see
	// [Edge.SetRateLimits]. Default none: nothing is limited.
	RateLimits map[string]RateGroup
	// Limiter decides the rate limits. Default: in process memory,
	// remembering up to 100,000 callers. The caller closes it.
	Limiter *ratelimit.Limiter
	// Canary routes a share of calls to canary instances, by logical
	// service; see [Edge.SetCanary]. Default none.
	Canary map[string]Canary
	// Faults are injected into calls, by method or service full name; see
	// [Edge.SetFaults]. Default none.
	Faults map[string]Fault
}

// Edge is a running front door. Create it with [New].
type Edge struct {
	server *server.Server
	routes *routeTable
	proxy  *proxy
	cors   atomic.Pointer[cors.Cors]
	// release frees what the edge process made for the edge (its rate
	// limiter), on Close and at shutdown; nil for none.
	release func()
}

// New builds an edge that resolves upstreams through resolver.
func New(cfg Config, resolver discovery.Resolver, logger *slog.Logger) (*Edge, error) {
	if cfg.Server.Addr == "" {
		cfg.Server.Addr = "127.0.0.1:8080"
	}
	if cfg.Server.MaxRequestBytes <= 0 {
		cfg.Server.MaxRequestBytes = 4 << 20
	}
	if len(cfg.Services) == 0 {
		return nil, errors.New("edge: no services to route")
	}
	calls := config.DefaultCalls()
	if cfg.Calls != nil {
		calls = *cfg.Calls
	}
	if cfg.Metrics == nil {
		cfg.Metrics = prometheus.NewRegistry()
	}
	routes, err := newRouteTable(cfg.Services, cfg.Routes, resolver)
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	trusted, err := newTrustedProxies(cfg.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("edge: trusted proxies: %w", err)
	}
	if cfg.Transport == nil {
		t, err := callpolicy.NewTransport(resolver, calls, cfg.Metrics)
		if err != nil {
			return nil, fmt.Errorf("edge: %w", err)
		}
		cfg.Transport = t
	}
	authn, err := newAuthenticator(cfg.Auth)
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	e := &Edge{routes: routes}
	e.SetAllowedOrigins(cfg.AllowedOrigins)
	reflected := routes.names()
	slices.Sort(reflected)
	srv := server.New(cfg.Server, logger,
		server.WithRegistry(cfg.Metrics),
		server.WithTelemetry(cfg.Telemetry),
		server.WithHealthChecker(routes),
		server.WithReflection(reflected...),
		server.WithMiddleware(e.withCORS),
	)
	metrics, err := newProxyMetrics(cfg.Metrics, routes)
	if err != nil {
		return nil, fmt.Errorf("edge: metrics: %w", err)
	}
	e.proxy = &proxy{
		routes:     routes,
		transport:  cfg.Transport,
		errors:     connect.NewErrorWriter(),
		logger:     logger,
		metrics:    metrics,
		maxRequest: int64(cfg.Server.MaxRequestBytes),
		auth:       authn,
	}
	e.proxy.trusted.Store(trusted)
	e.proxy.calls.Store(&calls)
	e.proxy.limiter = cfg.Limiter
	if e.proxy.limiter == nil {
		e.proxy.limiter = ratelimit.New(ratelimit.Options{})
	}
	if err := errors.Join(e.SetRateLimits(cfg.RateLimits), e.SetCanary(cfg.Canary), e.SetFaults(cfg.Faults)); err != nil {
		return nil, err
	}
	if cfg.Telemetry.Enabled() {
		e.proxy.tracer = cfg.Telemetry.Tracer("github.com/keelplatform/keel/edge")
		e.proxy.propagator = cfg.Telemetry.Propagator()
	}
	rest, err := newRESTGateway(routes, e.proxy)
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	if rest == nil {
		srv.HandleHTTP("/", e.proxy)
	} else {
		srv.HandleHTTP("/", &front{proxy: e.proxy, rest: rest})
	}
	e.server = srv
	return e, nil
}

// SetAllowedOrigins replaces the browser origins CORS allows; "*" allows
// any, none allows no cross-origin call. It takes effect for the next
// request.
func (e *Edge) SetAllowedOrigins(origins []string) {
	var none func(string) bool
	if len(origins) == 0 {
		// The CORS package reads no origins as any origin.
		none = func(string) bool { return false }
	}
	e.cors.Store(cors.New(cors.Options{
		AllowedOrigins:  origins,
		AllowOriginFunc: none,
		// Connect's methods, and those REST routes use besides.
		AllowedMethods: append(connectcors.AllowedMethods(), http.MethodPut, http.MethodPatch, http.MethodDelete),
		AllowedHeaders: append(connectcors.AllowedHeaders(), "Authorization"),
		ExposedHeaders: connectcors.ExposedHeaders(),
		MaxAge:         7200,
	}))
}

// SetTrustedProxies replaces the networks whose X-Forwarded-For is kept.
func (e *Edge) SetTrustedProxies(cidrs []string) error {
	t, err := newTrustedProxies(cidrs)
	if err != nil {
		return fmt.Errorf("edge: trusted proxies: %w", err)
	}
	e.proxy.trusted.Store(t)
	return nil
}

// SetRateLimits replaces the rate limit groups, by name (a group named
// "default" limits the methods in no other); none turns rate limiting
// off. A caller's state carries over. Calls over a limit get
// resource_exhausted with a retry hint (HTTP 429 and Retry-After over
// REST).
func (e *Edge) SetRateLimits(groups map[string]RateGroup) error {
	rl := DefaultRateLimits()
	rl.Groups = groups
	if err := errors.Join(validateTraffic(Settings{RateLimits: rl})...); err != nil {
		return fmt.Errorf("edge: rate limits: %w", err)
	}
	e.proxy.rates.Store(newRateTable(groups, e.proxy.metrics.rateLimited))
	return nil
}

// SetCanary replaces the canaries, by logical service; none sends every
// call to any instance.
func (e *Edge) SetCanary(canaries map[string]Canary) error {
	if err := errors.Join(validateTraffic(Settings{RateLimits: DefaultRateLimits(), Canary: canaries})...); err != nil {
		return fmt.Errorf("edge: canary: %w", err)
	}
	c := newCanaries(canaries, e.proxy.metrics.canaryCalls)
	e.proxy.canaries.Store(&c)
	return nil
}

// SetFaults replaces the faults injected, by method or service full
// name; none turns fault injection off.
func (e *Edge) SetFaults(faults map[string]Fault) error {
	if err := errors.Join(validateTraffic(Settings{RateLimits: DefaultRateLimits(), Faults: faults})...); err != nil {
		return fmt.Errorf("edge: faults: %w", err)
	}
	e.proxy.faults.Store(newFaultTable(faults))
	return nil
}

// SetShedding applies new load-shedding settings; see
// [server.Server.SetShedding].
func (e *Edge) SetShedding(s config.Shedding) { e.server.SetShedding(s) }

// SetCalls replaces the call settings the edge reads itself (the default
// deadline of calls that carry none); the transport has its own.
func (e *Edge) SetCalls(c config.Calls) { e.proxy.calls.Store(&c) }

// varyOrigin is the Vary header of answers to requests without an
// Origin: what CORS would add, shared since nothing changes it.
var varyOrigin = []string{"Origin"}

// withCORS answers preflights and adds CORS headers with the allowed
// origins in effect. A request without an Origin header is no browser's
// cross-origin call: it only gets the Vary header caches need.
func (e *Edge) withCORS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, ok := r.Header["Origin"]; !ok {
			w.Header()["Vary"] = varyOrigin
			next.ServeHTTP(w, r)
			return
		}
		e.cors.Load().ServeHTTP(w, r, next.ServeHTTP)
	})
}

// Metrics is the edge's Prometheus registry, served at GET /metrics; see
// [server.Server.Metrics]. Besides the server's and the call policy's
// metrics it holds keel_edge_requests_total{service,code} and
// keel_edge_duration_seconds{service}, by logical service, and the
// traffic controls' keel_edge_rate_limited_total{group},
// keel_edge_canary_calls_total{service,side} and
// keel_edge_faults_injected_total{service,kind}.
func (e *Edge) Metrics() *prometheus.Registry { return e.server.Metrics() }

// HandleAdmin mounts an operators' endpoint; see [server.Server.HandleAdmin].
// Call it before [Edge.Serve].
func (e *Edge) HandleAdmin(pattern string, h http.Handler) { e.server.HandleAdmin(pattern, h) }

// AdminAddr is the bound host:port of the admin listener, or "" without
// one; see [server.Server.AdminAddr].
func (e *Edge) AdminAddr() string { return e.server.AdminAddr() }

// SetMaxTimeout changes the longest deadline a caller may ask for; see
// [server.Server.SetMaxTimeout].
func (e *Edge) SetMaxTimeout(d time.Duration) { e.server.SetMaxTimeout(d) }

// SetShutdown changes the drain delay and shutdown timeout; see
// [server.Server.SetShutdown].
func (e *Edge) SetShutdown(drainDelay, shutdownTimeout time.Duration) {
	e.server.SetShutdown(drainDelay, shutdownTimeout)
}

// Listen binds the edge's address; see [server.Server.Listen].
func (e *Edge) Listen() error { return e.server.Listen() }

// Close releases the listeners of an edge that will not serve; see
// [server.Server.Close].
func (e *Edge) Close() error {
	if e.release != nil {
		e.release()
	}
	return e.server.Close()
}

// Addr is the bound host:port, or "" before [Edge.Listen].
func (e *Edge) Addr() string { return e.server.Addr() }

// OnStop registers fn to run first at shutdown; see [server.Server.OnStop].
func (e *Edge) OnStop(fn func(context.Context)) { e.server.OnStop(fn) }

// Serve routes calls until ctx is done, then drains; see [server.Server.Serve].
func (e *Edge) Serve(ctx context.Context) error {
	routes := make([]string, 0, len(e.routes.services))
	for _, name := range e.routes.names() {
		routes = append(routes, name+" -> "+e.routes.services[name].logical)
	}
	slices.Sort(routes)
	e.proxy.logger.InfoContext(ctx, "routing", slog.Any("routes", routes))
	return e.server.Serve(ctx)
}

var _ http.Handler = (*proxy)(nil)
