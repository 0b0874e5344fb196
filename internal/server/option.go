package server

import (
	"net/http"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keelplatform/keel/internal/telemetry"
)

// Option changes how a [Server] is built.
type Option func(*options)

type options struct {
	checker    grpchealth.Checker
	reflected  []string
	middleware []func(http.Handler) http.Handler
	telemetry  *telemetry.Telemetry
	registry   *prometheus.Registry
	// interceptors run inside the access log, before validation.
	interceptors []connect.Interceptor
}

// WithRegistry makes the server register its metrics in registry, shared
// with the rest of the process, instead of a registry of its own. The
// registry must not hold the Go and process collectors yet: the server
// adds them.
func WithRegistry(registry *prometheus.Registry) Option {
	return func(o *options) { o.registry = registry }
}

// WithTelemetry traces the calls the server's Connect handlers answer,
// continuing the trace context callers send.
func WithTelemetry(t *telemetry.Telemetry) Option {
	return func(o *options) { o.telemetry = t }
}

// WithHealthChecker answers health checks for services the server does not
// mount itself (a proxy's upstreams) with checker. Mounted services and the
// server as a whole ("") are still answered by the server.
func WithHealthChecker(checker grpchealth.Checker) Option {
	return func(o *options) { o.checker = checker }
}

// WithReflection lists services the server does not mount (a proxy's
// upstreams) in gRPC reflection. Their descriptors must be registered in
// the global protobuf registry, as importing generated code does.
func WithReflection(services ...string) Option {
	return func(o *options) { o.reflected = append(o.reflected, services...) }
}

// WithMiddleware wraps the server's whole HTTP handler, health and
// reflection included, e.g. with CORS. The first middleware given is the
// innermost.
func WithMiddleware(wrap func(http.Handler) http.Handler) Option {
	return func(o *options) { o.middleware = append(o.middleware, wrap) }
}

// WithInterceptors runs interceptors on every call the server's Connect
// handlers answer, inside the access log (which records what they
// refuse) and before validation, e.g. to verify who the caller is.
func WithInterceptors(interceptors ...connect.Interceptor) Option {
	return func(o *options) { o.interceptors = append(o.interceptors, interceptors...) }
}
