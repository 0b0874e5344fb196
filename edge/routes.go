package edge

import (
	"context"
	"fmt"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	"github.com/keelplatform/keel/gen/go/shop/order/v1/orderv1connect"
	"github.com/keelplatform/keel/gen/go/shop/payment/v1/paymentv1connect"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/discovery"
)

// ShopServices are the protobuf services the edge routes by default.
// Importing their generated packages also registers their descriptors,
// which the edge's gRPC reflection serves.
func ShopServices() []string {
	return []string{
		userv1connect.UserServiceName,
		inventoryv1connect.InventoryServiceName,
		paymentv1connect.PaymentServiceName,
		orderv1connect.OrderServiceName,
	}
}

// routeTable maps a fully qualified protobuf service to the logical service
// (discovery name) that serves it. It is read-only after construction.
type routeTable struct {
	upstream map[string]string
	methods  map[string]method // by procedure path, for services with a registered contract
	resolver discovery.Resolver
}

// method is what the edge knows of a procedure from its contract.
type method struct {
	// unary calls carry one request message, which the edge may buffer
	// to send again elsewhere if an instance fails.
	unary bool
	// idempotent calls (NO_SIDE_EFFECTS or IDEMPOTENT) may be sent again
	// even when the failed instance may have seen them.
	idempotent bool
}

func newRouteTable(services []string, overrides map[string]string, resolver discovery.Resolver) (*routeTable, error) {
	t := &routeTable{upstream: make(map[string]string, len(services)), methods: make(map[string]method), resolver: resolver}
	for _, name := range services {
		if desc, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name)); err == nil {
			if sd, ok := desc.(protoreflect.ServiceDescriptor); ok {
				for i := range sd.Methods().Len() {
					md := sd.Methods().Get(i)
					opts, _ := md.Options().(*descriptorpb.MethodOptions)
					level := opts.GetIdempotencyLevel()
					t.methods["/"+name+"/"+string(md.Name())] = method{
						unary:      !md.IsStreamingClient() && !md.IsStreamingServer(),
						idempotent: level == descriptorpb.MethodOptions_NO_SIDE_EFFECTS || level == descriptorpb.MethodOptions_IDEMPOTENT,
					}
				}
			}
		}
		logical, ok := overrides[name]
		if !ok {
			logical, ok = discovery.ServiceName(name)
		}
		if !ok {
			return nil, fmt.Errorf("route %s: name has no package to map to a service; give it a route override", name)
		}
		t.upstream[name] = logical
	}
	return t, nil
}

func (t *routeTable) lookup(protoService string) (string, bool) {
	logical, ok := t.upstream[protoService]
	return logical, ok
}

func (t *routeTable) services() []string {
	names := make([]string, 0, len(t.upstream))
	for name := range t.upstream {
		names = append(names, name)
	}
	return names
}

// Check implements [grpchealth.Checker] for routed services: SERVING while
// discovery knows a healthy instance, NOT_SERVING otherwise.
func (t *routeTable) Check(_ context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	logical, ok := t.upstream[req.Service]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("unknown service %s", req.Service))
	}
	if _, err := t.resolver.Instances(logical); err != nil {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}
