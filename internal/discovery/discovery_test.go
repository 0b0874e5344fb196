package discovery_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/keelplatform/keel/internal/discovery"
)

func TestServiceName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in     string
		want   string
		wantOK bool
	}{
		{in: "shop.user.v1.UserService", want: "user", wantOK: true},
		{in: "shop.inventory.v1.InventoryService", want: "inventory", wantOK: true},
		{in: "shop.order.v2.OrderService", want: "order", wantOK: true},
		{in: "grpc.health.v1.Health", want: "health", wantOK: true},
		{in: "a.b.C", want: "b", wantOK: true},
		{in: "", wantOK: false},
		{in: "UserService", wantOK: false},
		{in: "shop.UserService", wantOK: false},
		{in: "shop.user", wantOK: false},
		{in: "shop..v1.UserService", wantOK: false},
	}
	for _, tt := range tests {
		got, ok := discovery.ServiceName(tt.in)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("ServiceName(%q) = %q, %t; want %q, %t", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

// addrs lists the addresses r resolves service to, in the order it returns
// them; nil when it knows none.
func addrs(t *testing.T, r discovery.Resolver, service string) []string {
	t.Helper()
	list, err := r.Instances(service)
	if errors.Is(err, discovery.ErrNoInstances) {
		return nil
	}
	if err != nil {
		t.Fatalf("Instances(%q): %v", service, err)
	}
	var out []string
	for _, inst := range list {
		if inst.Service != service {
			t.Errorf("Instances(%q) returned %+v, of another service", service, inst)
		}
		out = append(out, inst.Addr)
	}
	return out
}

func TestParseStatic(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		spec string
		want map[string][]string // service -> addresses, in order
	}{
		{name: "empty", spec: "", want: map[string][]string{"user": nil}},
		{name: "blank", spec: " , ,", want: map[string][]string{"user": nil}},
		{name: "one", spec: "user=127.0.0.1:8081", want: map[string][]string{"user": {"127.0.0.1:8081"}}},
		{
			name: "several services and instances",
			spec: "user=127.0.0.1:8081,user=127.0.0.1:8091,inventory=127.0.0.1:8082",
			want: map[string][]string{
				"user":      {"127.0.0.1:8081", "127.0.0.1:8091"},
				"inventory": {"127.0.0.1:8082"},
				"payment":   nil,
			},
		},
		{
			name: "spaces and empty entries",
			spec: " user=127.0.0.1:8081 ,, inventory=127.0.0.1:8082,",
			want: map[string][]string{"user": {"127.0.0.1:8081"}, "inventory": {"127.0.0.1:8082"}},
		},
		{
			name: "the same peer twice is one instance",
			spec: "user=127.0.0.1:8081,user=127.0.0.1:8081",
			want: map[string][]string{"user": {"127.0.0.1:8081"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := discovery.ParseStatic(tt.spec)
			if err != nil {
				t.Fatalf("ParseStatic(%q): %v", tt.spec, err)
			}
			for service, want := range tt.want {
				if got := addrs(t, s, service); !slices.Equal(got, want) {
					t.Errorf("ParseStatic(%q): %s at %v, want %v", tt.spec, service, got, want)
				}
			}
		})
	}
}

func TestParseStaticIDs(t *testing.T) {
	t.Parallel()
	s, err := discovery.ParseStatic("user=127.0.0.1:8081,user=127.0.0.1:8091")
	if err != nil {
		t.Fatal(err)
	}
	list, err := s.Instances("user")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, inst := range list {
		ids = append(ids, inst.ID)
	}
	if want := []string{"user-127.0.0.1:8081", "user-127.0.0.1:8091"}; !slices.Equal(ids, want) {
		t.Errorf("ids %v, want %v", ids, want)
	}
	// The IDs are what Deregister takes.
	if err := s.Deregister(context.Background(), "user-127.0.0.1:8081"); err != nil {
		t.Fatal(err)
	}
	if got := addrs(t, s, "user"); !slices.Equal(got, []string{"127.0.0.1:8091"}) {
		t.Errorf("after deregistering the first peer: %v", got)
	}
}

func TestParseStaticRejectsBadSpecs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		spec  string
		entry string // the entry the error must name
	}{
		{spec: "user", entry: "user"},
		{spec: "user:127.0.0.1:8081", entry: "user:127.0.0.1:8081"},
		{spec: "=127.0.0.1:8081", entry: "=127.0.0.1:8081"},
		{spec: "user=", entry: "user="},
		{spec: "=", entry: "="},
		{spec: "user=127.0.0.1:8081,inventory", entry: "inventory"},
	}
	for _, tt := range tests {
		s, err := discovery.ParseStatic(tt.spec)
		if err == nil {
			t.Errorf("ParseStatic(%q) succeeded, want an error", tt.spec)
			continue
		}
		if s != nil {
			t.Errorf("ParseStatic(%q) returned a registry with its error", tt.spec)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.entry)) || !strings.Contains(err.Error(), "service=host:port") {
			t.Errorf("ParseStatic(%q): error %q, want it to name %q and the expected form", tt.spec, err, tt.entry)
		}
	}
}

func TestStaticRegisterReplacesByID(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := discovery.NewStatic()
	for _, inst := range []discovery.Instance{
		{ID: "user-1", Service: "user", Addr: "127.0.0.1:1"},
		{ID: "user-2", Service: "user", Addr: "127.0.0.1:2"},
		{ID: "user-1", Service: "user", Addr: "127.0.0.1:3", Meta: map[string]string{"version": "2"}},
	} {
		if err := s.Register(ctx, inst); err != nil {
			t.Fatalf("Register(%+v): %v", inst, err)
		}
	}
	list, err := s.Instances("user")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("%d instances after registering user-1 twice, want 2: %+v", len(list), list)
	}
	byID := map[string]discovery.Instance{}
	for _, inst := range list {
		byID[inst.ID] = inst
	}
	if got := byID["user-1"]; got.Addr != "127.0.0.1:3" || got.Meta["version"] != "2" {
		t.Errorf("user-1 is %+v, want the second registration", got)
	}
	if got := byID["user-2"]; got.Addr != "127.0.0.1:2" {
		t.Errorf("user-2 is %+v, want it untouched", got)
	}
}

func TestStaticRegisterNeedsIDServiceAndAddr(t *testing.T) {
	t.Parallel()
	tests := []discovery.Instance{
		{Service: "user", Addr: "127.0.0.1:1"},
		{ID: "user-1", Addr: "127.0.0.1:1"},
		{ID: "user-1", Service: "user"},
		{},
	}
	for _, inst := range tests {
		s := discovery.NewStatic()
		if err := s.Register(context.Background(), inst); err == nil {
			t.Errorf("Register(%+v) succeeded, want an error", inst)
		}
		if got := addrs(t, s, inst.Service); got != nil {
			t.Errorf("Register(%+v) failed but %v resolves", inst, got)
		}
	}
}

func TestStaticDeregister(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := discovery.NewStatic()
	for _, inst := range []discovery.Instance{
		{ID: "user-1", Service: "user", Addr: "127.0.0.1:1"},
		{ID: "user-2", Service: "user", Addr: "127.0.0.1:2"},
		{ID: "inventory-1", Service: "inventory", Addr: "127.0.0.1:3"},
	} {
		if err := s.Register(ctx, inst); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		deregister string
		want       map[string][]string
	}{
		{deregister: "no-such-id", want: map[string][]string{"user": {"127.0.0.1:1", "127.0.0.1:2"}, "inventory": {"127.0.0.1:3"}}},
		{deregister: "", want: map[string][]string{"user": {"127.0.0.1:1", "127.0.0.1:2"}, "inventory": {"127.0.0.1:3"}}},
		{deregister: "user-1", want: map[string][]string{"user": {"127.0.0.1:2"}, "inventory": {"127.0.0.1:3"}}},
		{deregister: "user-1", want: map[string][]string{"user": {"127.0.0.1:2"}, "inventory": {"127.0.0.1:3"}}},
		{deregister: "inventory-1", want: map[string][]string{"user": {"127.0.0.1:2"}, "inventory": nil}},
		{deregister: "user-2", want: map[string][]string{"user": nil, "inventory": nil}},
	}
	for _, step := range steps {
		if err := s.Deregister(ctx, step.deregister); err != nil {
			t.Errorf("Deregister(%q): %v, want no error", step.deregister, err)
		}
		for service, want := range step.want {
			if got := addrs(t, s, service); !slices.Equal(got, want) {
				t.Errorf("after Deregister(%q): %s at %v, want %v", step.deregister, service, got, want)
			}
		}
	}
}

func TestStaticInstancesWrapsErrNoInstances(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := discovery.NewStatic()
	if err := s.Register(ctx, discovery.Instance{ID: "user-1", Service: "user", Addr: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Deregister(ctx, "user-1"); err != nil {
		t.Fatal(err)
	}
	for _, service := range []string{"payment", "user", ""} {
		list, err := s.Instances(service)
		if !errors.Is(err, discovery.ErrNoInstances) {
			t.Errorf("Instances(%q) = %v, %v; want an error wrapping ErrNoInstances", service, list, err)
			continue
		}
		if list != nil {
			t.Errorf("Instances(%q) returned %v with its error", service, list)
		}
		if err == discovery.ErrNoInstances || !strings.Contains(err.Error(), fmt.Sprintf("%q", service)) {
			t.Errorf("Instances(%q): error %q, want ErrNoInstances wrapped with the service's name", service, err)
		}
	}
}

// TestStaticConcurrentUse registers, deregisters and resolves from many
// goroutines at once; run it with -race. Readers go through every
// instance they get while writers change the registry, so a writer that
// changed a slice already handed out would be a data race.
func TestStaticConcurrentUse(t *testing.T) {
	t.Parallel()
	const (
		writers = 4
		rounds  = 50
	)
	ctx := context.Background()
	s := discovery.NewStatic()
	services := []string{"user", "inventory"}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			service := services[w%len(services)]
			for i := range rounds {
				id := fmt.Sprintf("%s-%d-%d", service, w, i)
				inst := discovery.Instance{ID: id, Service: service, Addr: fmt.Sprintf("127.0.0.%d:%d", w+1, i+1)}
				if err := s.Register(ctx, inst); err != nil {
					t.Error(err)
					return
				}
				// Re-register (replace) then withdraw every even one.
				inst.Tags = []string{"again"}
				if err := s.Register(ctx, inst); err != nil {
					t.Error(err)
					return
				}
				if i%2 == 0 {
					if err := s.Deregister(ctx, id); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	var readers sync.WaitGroup
	for r := range 2 {
		readers.Go(func() {
			service := services[r%len(services)]
			for {
				select {
				case <-stop:
					return
				default:
				}
				list, err := s.Instances(service)
				if err != nil && !errors.Is(err, discovery.ErrNoInstances) {
					t.Error(err)
					return
				}
				seen := make(map[string]bool, len(list))
				for _, inst := range list {
					if inst.Service != service || inst.Addr == "" {
						t.Errorf("Instances(%q) returned %+v", service, inst)
						return
					}
					if seen[inst.ID] {
						t.Errorf("Instances(%q) returned %s twice", service, inst.ID)
						return
					}
					seen[inst.ID] = true
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	readers.Wait()

	// Every odd registration of every writer is left, once.
	for _, service := range services {
		list, err := s.Instances(service)
		if err != nil {
			t.Fatal(err)
		}
		want := writers / len(services) * rounds / 2
		if len(list) != want {
			t.Errorf("%s: %d instances left, want %d", service, len(list), want)
		}
		for _, inst := range list {
			var w, i int
			if _, err := fmt.Sscanf(strings.TrimPrefix(inst.ID, service+"-"), "%d-%d", &w, &i); err != nil || i%2 == 0 {
				t.Errorf("%s: unexpected instance %+v left", service, inst)
			}
			if !slices.Equal(inst.Tags, []string{"again"}) {
				t.Errorf("%s: instance %s is not the replacement: %+v", service, inst.ID, inst)
			}
		}
	}
}
