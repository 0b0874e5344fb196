package edge

import (
	"context"
	"fmt"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

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
	resolver discovery.Resolver
}

func newRouteTable(services []string, overrides map[string]string, resolver discovery.Resolver) (*routeTable, error) {
	t := &routeTable{upstream: make(map[string]string, len(services)), resolver: resolver}
	for _, name := range services {
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
