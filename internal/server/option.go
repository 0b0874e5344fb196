package server

import (
	"net/http"

	"connectrpc.com/grpchealth"
)

// Option changes how a [Server] is built.
type Option func(*options)

type options struct {
	checker    grpchealth.Checker
	reflected  []string
	middleware []func(http.Handler) http.Handler
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
