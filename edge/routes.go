package edge

import (
	"context"
	"fmt"
	"strings"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/callpolicy"
	"github.com/keelplatform/keel/internal/discovery"
)

// route is one routed protobuf service.
type route struct {
	service string // "shop.user.v1.UserService"
	logical string // the discovery name that serves it, "user"
	metrics *serviceMetrics
	// registered: the contract is in the protobuf registry, so the edge
	// knows its procedures and answers unknown ones itself.
	registered bool
}

// procedure is one procedure of a routed service whose contract is
// registered.
type procedure struct {
	route  *route
	method callpolicy.Method
	access access
}

// routeTable maps procedure paths to where they go. It is read-only after
// construction.
type routeTable struct {
	services   map[string]*route     // by protobuf service
	procedures map[string]*procedure // by path "/pkg.Service/Method"
	resolver   discovery.Resolver
}

func newRouteTable(services []string, overrides map[string]string, resolver discovery.Resolver) (*routeTable, error) {
	t := &routeTable{services: map[string]*route{}, procedures: map[string]*procedure{}, resolver: resolver}
	for _, name := range services {
		logical, ok := overrides[name]
		if !ok {
			logical, ok = discovery.ServiceName(name)
		}
		if !ok {
			return nil, fmt.Errorf("route %s: name has no package to map to a service; give it a route override", name)
		}
		r := &route{service: name, logical: logical}
		t.services[name] = r
		desc, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
		if err != nil {
			continue
		}
		sd, ok := desc.(protoreflect.ServiceDescriptor)
		if !ok {
			continue
		}
		r.registered = true
		for i := range sd.Methods().Len() {
			md := sd.Methods().Get(i)
			path := "/" + name + "/" + string(md.Name())
			m, _ := callpolicy.MethodOf(path)
			t.procedures[path] = &procedure{route: r, method: m, access: auth.AccessOf(md)}
		}
	}
	return t, nil
}

// lookup finds where path goes. A procedure of a registered contract
// comes with what the contract says of it; a path of a routed service
// whose contract is not registered comes with its route only. ok is false
// for paths that are no procedure of a routed service.
func (t *routeTable) lookup(path string) (r *route, p *procedure, ok bool) {
	if p, ok := t.procedures[path]; ok {
		return p.route, p, true
	}
	service, ok := serviceOf(path)
	if !ok {
		return nil, nil, false
	}
	r, ok = t.services[service]
	if !ok || r.registered {
		return nil, nil, false // unknown service, or unknown method of a known one
	}
	return r, nil, true
}

func (t *routeTable) names() []string {
	names := make([]string, 0, len(t.services))
	for name := range t.services {
		names = append(names, name)
	}
	return names
}

// logicals lists the logical services routed to, without duplicates.
func (t *routeTable) logicals() []string {
	seen := map[string]bool{}
	var out []string
	for _, r := range t.services {
		if !seen[r.logical] {
			seen[r.logical] = true
			out = append(out, r.logical)
		}
	}
	return out
}

// serviceOf returns "pkg.Service" from a procedure path "/pkg.Service/Method".
func serviceOf(path string) (string, bool) {
	if len(path) < 4 || path[0] != '/' {
		return "", false
	}
	rest := path[1:]
	slash := strings.IndexByte(rest, '/')
	if slash <= 0 || slash == len(rest)-1 || strings.IndexByte(rest[slash+1:], '/') >= 0 {
		return "", false
	}
	return rest[:slash], true
}

// Check implements [grpchealth.Checker] for routed services: SERVING while
// discovery knows a healthy instance, NOT_SERVING otherwise.
func (t *routeTable) Check(_ context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	r, ok := t.services[req.Service]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("unknown service %s", req.Service))
	}
	if _, err := t.resolver.Instances(r.logical); err != nil {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}
