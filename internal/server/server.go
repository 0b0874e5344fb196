// Package server runs a Keel service: one listener that speaks Connect
// (JSON and binary), gRPC and gRPC-Web over HTTP/1.1 and h2c, with gRPC
// health, gRPC reflection, request validation, panic recovery, access logs,
// Prometheus metrics at /metrics, tracing, adaptive load shedding, request
// limits and graceful shutdown.
//
// A service builds its Connect handler with [Server.HandlerOptions], mounts
// it with [Server.Handle] and calls [Server.Serve]:
//
//	srv := server.New(cfg, logger)
//	srv.Handle(userv1connect.NewUserServiceHandler(h, srv.HandlerOptions()...))
//	err := srv.Serve(ctx) // returns after ctx is done and calls drained
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"connectrpc.com/validate"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/shed"
)

// Config is how a server listens and how it limits its callers. The zero
// value of each field means its documented default.
type Config struct {
	// Addr is the host:port to listen on. Default "127.0.0.1:0" (any free port).
	Addr string
	// AdminAddr, when set, is a second listener that alone serves the
	// operators' endpoints (/metrics, /debug/...), which then are not on
	// Addr: for a process whose main port is public, such as the edge.
	// Default "": those endpoints share Addr.
	AdminAddr string
	// ReadHeaderTimeout bounds how long a client may take to send headers. Default 5s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes keep-alive connections idle this long. Default 120s.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds the size of request headers. Default 64 KiB.
	MaxHeaderBytes int
	// MaxRequestBytes bounds one request message after decompression;
	// larger ones fail with resource_exhausted. Default 4 MiB.
	MaxRequestBytes int
	// DrainDelay is how long the server keeps answering, with health
	// NOT_SERVING, after shutdown starts, so that balancers stop sending
	// before the listener closes. Default 0.
	DrainDelay time.Duration
	// ShutdownTimeout bounds how long in-flight calls may run after the
	// listener closes; calls still running then are cut off. Default 10s.
	ShutdownTimeout time.Duration
	// MaxTimeout caps the deadline a caller may ask for; see
	// config.Server.MaxTimeout. Default 15s.
	MaxTimeout time.Duration
	// Shedding is the adaptive load shedding of the calls the server
	// answers. The zero value is off; [ConfigFrom] turns it on as
	// configured.
	Shedding config.Shedding
}

// ConfigFrom returns the server configuration of a process's common
// settings: its listener, limits, shutdown and load shedding.
func ConfigFrom(p config.Process) Config {
	return Config{
		Addr:            p.Server.Addr,
		AdminAddr:       p.Server.AdminAddr,
		MaxRequestBytes: p.Server.MaxRequestBytes,
		DrainDelay:      p.Server.DrainDelay,
		ShutdownTimeout: p.Server.ShutdownTimeout,
		MaxTimeout:      p.Server.MaxTimeout,
		Shedding:        p.Shedding,
	}
}

func (c Config) withDefaults() Config {
	if c.Addr == "" {
		c.Addr = "127.0.0.1:0"
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = 5 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 120 * time.Second
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 64 << 10
	}
	if c.MaxRequestBytes <= 0 {
		c.MaxRequestBytes = 4 << 20
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.MaxTimeout <= 0 {
		c.MaxTimeout = 15 * time.Second
	}
	return c
}

// Server serves Connect handlers on one port. Create it with [New]. It is
// safe for concurrent use once serving; mount handlers before [Server.Serve].
type Server struct {
	cfg      Config
	logger   *slog.Logger
	mux      *http.ServeMux
	admin    *http.ServeMux // operators' endpoints; mux itself without AdminAddr
	health   *healthChecker
	services []string
	options  []connect.HandlerOption
	extra    options
	errors   *connect.ErrorWriter
	metrics  *metrics
	limiter  *shed.Limiter // nil without shedding
	initErr  error         // reported by Listen and Serve
	catchAll bool          // "/" is mounted; otherwise unknown paths get 404

	// maxTimeout is Config.MaxTimeout as reloads change it, in ns.
	maxTimeout atomic.Int64

	mu       sync.Mutex
	listener net.Listener
	adminLn  net.Listener
	onStop   []func(context.Context)
}

// New returns a server that has not started listening. Its gRPC health
// service reports SERVING for the server as a whole ("") and for every
// service mounted with [Server.Handle], until shutdown starts. GET
// /metrics serves its own Prometheus registry ([Server.Metrics]).
func New(cfg Config, logger *slog.Logger, opts ...Option) *Server {
	cfg = cfg.withDefaults()
	var extra options
	for _, opt := range opts {
		opt(&extra)
	}
	s := &Server{
		cfg:     cfg,
		logger:  logger,
		mux:     http.NewServeMux(),
		health:  newHealthChecker(extra.checker),
		extra:   extra,
		errors:  connect.NewErrorWriter(),
		metrics: newMetrics(extra.registry),
	}
	s.maxTimeout.Store(int64(cfg.MaxTimeout))
	s.options = []connect.HandlerOption{
		// Outermost, so that recovered panics count as internal errors.
		connect.WithInterceptors(s.metrics),
	}
	if interceptor, ok := extra.telemetry.ServerInterceptor(); ok {
		// Outside the access log, so its records carry the call's trace.
		s.options = append(s.options, connect.WithInterceptors(interceptor))
	}
	s.options = append(s.options,
		connect.WithRecover(s.recoverPanic),
		connect.WithInterceptors(newAccessLog(logger), callerGone{}),
		connect.WithInterceptors(extra.interceptors...),
		connect.WithInterceptors(noNUL{}, validate.NewInterceptor()),
		connect.WithReadMaxBytes(cfg.MaxRequestBytes),
		connect.WithCompressMinBytes(1024),
	)
	if s.limiter, s.initErr = shed.NewLimiter(cfg.Shedding, s.metrics.registry); s.initErr != nil {
		s.initErr = fmt.Errorf("server: %w", s.initErr)
	}
	s.admin = s.mux
	if cfg.AdminAddr != "" {
		s.admin = http.NewServeMux()
	}
	s.mux.Handle(grpchealth.NewHandler(s.health))
	s.admin.Handle("GET /metrics", s.metrics.handler())
	// Profiles of the running process, for operators: CPU, heap,
	// goroutines, mutex and block contention, execution traces.
	s.admin.HandleFunc("GET /debug/pprof/", pprof.Index)
	s.admin.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	s.admin.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	s.admin.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	s.admin.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return s
}

// HandleAdmin mounts an operators' endpoint (metrics, debug pages): on the
// admin listener when [Config.AdminAddr] is set, next to everything else
// otherwise.
func (s *Server) HandleAdmin(pattern string, h http.Handler) {
	s.admin.Handle(pattern, h)
}

// AdminAddr returns the bound host:port of the admin listener, or "" when
// there is none or before [Server.Listen].
func (s *Server) AdminAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.adminLn == nil {
		return ""
	}
	return s.adminLn.Addr().String()
}

// Metrics is the server's own Prometheus registry, served at GET
// /metrics. It holds the Go runtime and process collectors, the RPC
// metrics keel_rpc_server_requests_total{procedure,code} and
// keel_rpc_server_duration_seconds{procedure}, and keel_server_draining;
// register the process's other collectors in it.
func (s *Server) Metrics() *prometheus.Registry {
	return s.metrics.registry
}

// HandlerOptions are the options every Connect handler mounted on this
// server must be built with: RPC metrics, tracing (when on), panic
// recovery, access logs, protovalidate request validation and the request
// size limit.
func (s *Server) HandlerOptions() []connect.HandlerOption {
	return s.options
}

// Handle mounts a Connect handler, as returned by a generated
// New<Service>Handler constructor, and lists its service in health and
// reflection. The service name is taken from the path ("/pkg.Service/").
func (s *Server) Handle(path string, h http.Handler) {
	name := strings.Trim(path, "/")
	s.mux.Handle(path, knownMethodsOnly(name, h, s.errors))
	s.services = append(s.services, name)
	s.health.add(name)
}

// HandleHTTP mounts a plain HTTP handler (a web page, a proxy) that is not
// a Connect service.
func (s *Server) HandleHTTP(pattern string, h http.Handler) {
	if pattern == "/" {
		s.catchAll = true
	}
	s.mux.Handle(pattern, h)
}

// SetShedding applies new load-shedding settings, as configuration
// reloads do.
func (s *Server) SetShedding(sh config.Shedding) { s.limiter.Set(sh) }

// SetMaxTimeout changes the longest deadline a caller may ask for, as
// configuration reloads do; a non-positive d keeps the current one.
func (s *Server) SetMaxTimeout(d time.Duration) {
	if d > 0 {
		s.maxTimeout.Store(int64(d))
	}
}

// Services lists the fully qualified names of the mounted services.
func (s *Server) Services() []string {
	return append([]string(nil), s.services...)
}

// SetShutdown changes the drain delay and shutdown timeout the next
// shutdown uses, as configuration reloads do. Non-positive timeouts keep
// the current one; a negative drain delay keeps the current one.
func (s *Server) SetShutdown(drainDelay, shutdownTimeout time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if drainDelay >= 0 {
		s.cfg.DrainDelay = drainDelay
	}
	if shutdownTimeout > 0 {
		s.cfg.ShutdownTimeout = shutdownTimeout
	}
}

// OnStop registers fn to run first when shutdown starts, before health
// turns NOT_SERVING and the server drains: deregistering from discovery
// belongs here. fn gets a context bounded by the shutdown timeout.
func (s *Server) OnStop(fn func(context.Context)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.onStop = append(s.onStop, fn)
}

// Listen binds the configured address. Calling it before [Server.Serve] lets
// a caller learn the port ([Server.Addr]) first; Serve calls it if needed.
func (s *Server) Listen() error {
	if s.initErr != nil {
		return s.initErr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener != nil {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Addr, err)
	}
	if s.cfg.AdminAddr != "" {
		admin, err := net.Listen("tcp", s.cfg.AdminAddr)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("listen on %s (admin): %w", s.cfg.AdminAddr, err)
		}
		s.adminLn = admin
	}
	s.listener = ln
	return nil
}

// Close releases the listeners of a server that will not serve (its
// start failed after [Server.Listen]); a serving server stops through
// the context given to [Server.Serve] instead.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, ln := range []net.Listener{s.listener, s.adminLn} {
		if ln != nil {
			if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Addr returns the bound host:port, or "" before [Server.Listen].
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener == nil {
		return ""
	}
	return s.listener.Addr().String()
}

// Serve answers calls until ctx is done, then shuts down gracefully: it runs
// the OnStop hooks, turns health NOT_SERVING, keeps serving for DrainDelay,
// stops accepting and lets in-flight calls finish within ShutdownTimeout. It
// returns nil after a clean shutdown.
func (s *Server) Serve(ctx context.Context) error {
	if reflected := append(s.Services(), s.extra.reflected...); len(reflected) > 0 {
		reflector := grpcreflect.NewStaticReflector(reflected...)
		s.mux.Handle(grpcreflect.NewHandlerV1(reflector))
		s.mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	}
	if !s.catchAll {
		s.mux.Handle("/", NotFound(s.errors))
	}
	if err := s.Listen(); err != nil {
		return err
	}
	handler := s.limiter.Middleware(s.mux)
	for _, wrap := range s.extra.middleware {
		handler = wrap(handler)
	}
	handler = capTimeout(handler, &s.maxTimeout)
	httpServer := NewHTTPServer(handler, s.cfg)
	httpServer.ErrorLog = slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn)

	served := make(chan error, 1)
	go func() { served <- httpServer.Serve(s.listener) }()
	if s.adminLn != nil {
		adminServer := NewHTTPServer(s.admin, s.cfg)
		adminServer.ErrorLog = httpServer.ErrorLog
		go func() { _ = adminServer.Serve(s.adminLn) }()
		// The admin endpoints stay up until the main listener has drained,
		// so the drain itself can be watched.
		defer adminServer.Close()
	}
	s.logger.Info("serving", slog.String("addr", s.Addr()), slog.String("admin_addr", s.AdminAddr()), slog.Any("services", append([]string{}, s.services...)))

	select {
	case err := <-served:
		return fmt.Errorf("serve %s: %w", s.Addr(), err)
	case <-ctx.Done():
	}

	s.mu.Lock()
	hooks := append([]func(context.Context){}, s.onStop...)
	drainDelay, shutdownTimeout := s.cfg.DrainDelay, s.cfg.ShutdownTimeout
	s.mu.Unlock()
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainDelay+shutdownTimeout)
	defer cancel()
	for _, fn := range hooks {
		fn(stopCtx)
	}
	s.health.drain()
	s.metrics.draining.Set(1)
	defer s.metrics.draining.Set(0)
	s.logger.Info("draining", slog.Duration("drain_delay", drainDelay))
	if drainDelay > 0 {
		time.Sleep(drainDelay)
	}
	shutdownCtx, cancelShutdown := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancelShutdown()
	if err := httpServer.Shutdown(shutdownCtx); err != nil {
		_ = httpServer.Close()
		s.logger.Warn("in-flight calls cut off at shutdown timeout", slog.Duration("timeout", shutdownTimeout))
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", s.Addr(), err)
	}
	s.logger.Info("stopped")
	return nil
}

// NewHTTPServer returns an http.Server for h that speaks HTTP/1.1 and h2c
// (HTTP/2 without TLS, as gRPC clients use on loopback and inside a
// cluster) with the timeouts and limits of cfg.
func NewHTTPServer(h http.Handler, cfg Config) *http.Server {
	cfg = cfg.withDefaults()
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           h,
		Protocols:         protocols,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: 1000,
			MaxReadFrameSize:     1 << 20,
		},
	}
}
