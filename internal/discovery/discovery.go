// Package discovery describes how Keel processes announce themselves and
// find each other. A [Registry] records the instances a process serves; a
// [Resolver] answers which instances of a service are healthy right now.
// [Static] is the embedded, in-process implementation of both, used by
// `keel up` and tests; the consul package provides the production one.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// ErrNoInstances is returned by a [Resolver] that knows no healthy instance
// of a service.
var ErrNoInstances = errors.New("no healthy instances")

// Instance is one running copy of a service, reachable at Addr.
type Instance struct {
	// ID is unique among all instances of all services.
	ID string
	// Service is the logical name callers resolve, e.g. "user".
	Service string
	// Addr is the host:port the instance serves h2c and HTTP/1.1 on.
	Addr string
	// Tags are free-form labels such as the protocols served.
	Tags []string
	// Meta holds key/value facts about the instance (version, contract package).
	Meta map[string]string
}

// Registry records the instances a process serves.
type Registry interface {
	// Register announces inst. Registering the same ID again replaces it.
	Register(ctx context.Context, inst Instance) error
	// Deregister withdraws the instance with the given ID. Unknown IDs are not an error.
	Deregister(ctx context.Context, id string) error
}

// Resolver answers which instances of a service can take calls. It must be
// cheap to call on every request: implementations serve from memory.
type Resolver interface {
	// Instances returns the healthy instances of service, or an error
	// wrapping [ErrNoInstances] when there are none.
	Instances(service string) ([]Instance, error)
}

// ServiceName maps a fully qualified protobuf service name to the logical
// service that serves it by Keel's convention: the second segment of the
// package, so "shop.user.v1.UserService" is served by "user". It returns
// false for names that do not follow the convention.
func ServiceName(protoService string) (string, bool) {
	first := strings.IndexByte(protoService, '.')
	if first < 0 {
		return "", false
	}
	rest := protoService[first+1:]
	second := strings.IndexByte(rest, '.')
	if second <= 0 {
		return "", false
	}
	return rest[:second], true
}

func noInstances(service string) error {
	return fmt.Errorf("service %q: %w", service, ErrNoInstances)
}
