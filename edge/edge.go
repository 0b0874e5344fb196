// Package edge is Keel's front door: one port where browsers (gRPC-Web,
// Connect JSON), curl and gRPC clients reach every shop service. It routes
// each "/package.Service/Method" call to a healthy instance of the service
// that owns it, passing Connect, gRPC and gRPC-Web through unchanged, and
// serves gRPC health and reflection for everything it routes.
package edge

import (
	"context"
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

	"github.com/keelplatform/keel/internal/client"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
)

// Config is how the edge listens and what it routes. The zero value of each
// field means its documented default.
type Config struct {
	// Server holds the listener settings and limits. Default Addr
	// "127.0.0.1:8080".
	Server server.Config
	// Services are the protobuf services to route. Default [ShopServices].
	Services []string
	// Routes overrides the logical service a protobuf service is routed to;
	// by default "shop.user.v1.UserService" goes to "user".
	Routes map[string]string
	// AllowedOrigins are the browser origins allowed by CORS. Default ["*"].
	AllowedOrigins []string
}

// Edge is a running front door. Create it with [New].
type Edge struct {
	server *server.Server
	routes *routeTable
	cors   atomic.Pointer[cors.Cors]
}

// New builds an edge that resolves upstreams through resolver.
func New(cfg Config, resolver discovery.Resolver, logger *slog.Logger) (*Edge, error) {
	if cfg.Server.Addr == "" {
		cfg.Server.Addr = "127.0.0.1:8080"
	}
	if len(cfg.Services) == 0 {
		cfg.Services = ShopServices()
	}
	if len(cfg.AllowedOrigins) == 0 {
		cfg.AllowedOrigins = []string{"*"}
	}
	routes, err := newRouteTable(cfg.Services, cfg.Routes, resolver)
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	e := &Edge{routes: routes}
	e.SetAllowedOrigins(cfg.AllowedOrigins)
	reflected := routes.services()
	slices.Sort(reflected)
	srv := server.New(cfg.Server, logger,
		server.WithHealthChecker(routes),
		server.WithReflection(reflected...),
		server.WithMiddleware(e.withCORS),
	)
	metrics, err := newProxyMetrics(srv.Metrics(), routes)
	if err != nil {
		return nil, fmt.Errorf("edge: metrics: %w", err)
	}
	srv.HandleHTTP("/", &proxy{
		routes:    routes,
		transport: client.NewTransport(resolver),
		errors:    connect.NewErrorWriter(),
		logger:    logger,
		metrics:   metrics,
		maxBuffer: 1 << 20,
	})
	e.server = srv
	return e, nil
}

// SetAllowedOrigins replaces the browser origins CORS allows; "*" allows
// any. It takes effect for the next request.
func (e *Edge) SetAllowedOrigins(origins []string) {
	e.cors.Store(cors.New(cors.Options{
		AllowedOrigins: origins,
		AllowedMethods: connectcors.AllowedMethods(),
		AllowedHeaders: append(connectcors.AllowedHeaders(), "Authorization"),
		ExposedHeaders: connectcors.ExposedHeaders(),
		MaxAge:         7200,
	}))
}

// withCORS answers preflights and adds CORS headers with the allowed
// origins in effect.
func (e *Edge) withCORS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.cors.Load().ServeHTTP(w, r, next.ServeHTTP)
	})
}

// Metrics is the edge's Prometheus registry, served at GET /metrics; see
// [server.Server.Metrics]. Besides the server's metrics it holds
// keel_edge_requests_total{service,code} and
// keel_edge_duration_seconds{service}, by logical service.
func (e *Edge) Metrics() *prometheus.Registry { return e.server.Metrics() }

// HandleAdmin mounts an operators' endpoint; see [server.Server.HandleAdmin].
// Call it before [Edge.Serve].
func (e *Edge) HandleAdmin(pattern string, h http.Handler) { e.server.HandleAdmin(pattern, h) }

// AdminAddr is the bound host:port of the admin listener, or "" without
// one; see [server.Server.AdminAddr].
func (e *Edge) AdminAddr() string { return e.server.AdminAddr() }

// SetShutdown changes the drain delay and shutdown timeout; see
// [server.Server.SetShutdown].
func (e *Edge) SetShutdown(drainDelay, shutdownTimeout time.Duration) {
	e.server.SetShutdown(drainDelay, shutdownTimeout)
}

// Listen binds the edge's address; see [server.Server.Listen].
func (e *Edge) Listen() error { return e.server.Listen() }

// Addr is the bound host:port, or "" before [Edge.Listen].
func (e *Edge) Addr() string { return e.server.Addr() }

// OnStop registers fn to run first at shutdown; see [server.Server.OnStop].
func (e *Edge) OnStop(fn func(context.Context)) { e.server.OnStop(fn) }

// Serve routes calls until ctx is done, then drains; see [server.Server.Serve].
func (e *Edge) Serve(ctx context.Context) error { return e.server.Serve(ctx) }

var _ http.Handler = (*proxy)(nil)
