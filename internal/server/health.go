package server

import (
	"context"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
)

// healthChecker answers gRPC health checks: SERVING for the server ("") and
// its mounted services until it drains, NOT_SERVING for all of them after,
// and defers other names to an optional fallback checker.
type healthChecker struct {
	fallback grpchealth.Checker
	draining atomic.Bool

	mu       sync.RWMutex
	services map[string]struct{}
	watchers map[*func()]struct{}
}

var _ grpchealth.Watcher = (*healthChecker)(nil)

func newHealthChecker(fallback grpchealth.Checker) *healthChecker {
	return &healthChecker{
		fallback: fallback,
		services: map[string]struct{}{"": {}},
		watchers: make(map[*func()]struct{}),
	}
}

func (h *healthChecker) add(service string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.services[service] = struct{}{}
}

func (h *healthChecker) drain() {
	h.draining.Store(true)
	h.mu.RLock()
	defer h.mu.RUnlock()
	for notify := range h.watchers {
		(*notify)()
	}
}

// Check implements [grpchealth.Checker].
func (h *healthChecker) Check(ctx context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	if h.draining.Load() {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	h.mu.RLock()
	_, own := h.services[req.Service]
	h.mu.RUnlock()
	if own {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
	}
	if h.fallback != nil {
		return h.fallback.Check(ctx, req)
	}
	return nil, connect.NewError(connect.CodeNotFound, errUnknownService(req.Service))
}

// Watch implements [grpchealth.Watcher]: watchers are told when draining starts.
func (h *healthChecker) Watch(_ context.Context, _ *grpchealth.CheckRequest, onChange func()) (func(), error) {
	key := &onChange
	h.mu.Lock()
	h.watchers[key] = struct{}{}
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		delete(h.watchers, key)
		h.mu.Unlock()
	}, nil
}

type errUnknownService string

func (e errUnknownService) Error() string {
	return "unknown service " + string(e)
}
