package discovery

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Static is an in-process [Registry] and [Resolver]: what is registered is
// resolvable at once. It is safe for concurrent use. The zero value is not
// usable; call [NewStatic].
type Static struct {
	mu        sync.RWMutex
	instances map[string][]Instance // by service, in registration order
}

var (
	_ Registry = (*Static)(nil)
	_ Resolver = (*Static)(nil)
)

// NewStatic returns an empty static registry.
func NewStatic() *Static {
	return &Static{instances: make(map[string][]Instance)}
}

// ParseStatic builds a static registry from a list such as
// "user=127.0.0.1:8081,user=127.0.0.1:8091,inventory=127.0.0.1:8082",
// the form of the KEEL_PEERS environment variable.
func ParseStatic(spec string) (*Static, error) {
	s := NewStatic()
	for entry := range strings.SplitSeq(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		name, addr, ok := strings.Cut(entry, "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("peer %q: want service=host:port", entry)
		}
		id := fmt.Sprintf("%s-%s", name, addr)
		_ = s.Register(context.Background(), Instance{ID: id, Service: name, Addr: addr})
	}
	return s, nil
}

// Register implements [Registry].
func (s *Static) Register(_ context.Context, inst Instance) error {
	if inst.ID == "" || inst.Service == "" || inst.Addr == "" {
		return fmt.Errorf("register: instance needs an id, a service and an address (got %+v)", inst)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	list := s.instances[inst.Service]
	list = slices.DeleteFunc(slices.Clone(list), func(i Instance) bool { return i.ID == inst.ID })
	s.instances[inst.Service] = append(list, inst)
	return nil
}

// Deregister implements [Registry].
func (s *Static) Deregister(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, list := range s.instances {
		kept := slices.DeleteFunc(slices.Clone(list), func(i Instance) bool { return i.ID == id })
		if len(kept) == 0 {
			delete(s.instances, name)
		} else {
			s.instances[name] = kept
		}
	}
	return nil
}

// Instances implements [Resolver]. The returned slice must not be modified.
func (s *Static) Instances(service string) ([]Instance, error) {
	s.mu.RLock()
	list := s.instances[service]
	s.mu.RUnlock()
	if len(list) == 0 {
		return nil, noInstances(service)
	}
	return list, nil
}
