package consul

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keelplatform/keel/internal/discovery"
)

// RegistryConfig tunes a [Registry]. The zero value of each field means its
// documented default.
type RegistryConfig struct {
	// CheckInterval is how often the agent runs an instance's gRPC health
	// check; it bounds how long a dead instance stays resolvable. Default 1s.
	CheckInterval time.Duration
	// CheckTimeout bounds one health check; a slower answer counts as
	// failed. Default 2s.
	CheckTimeout time.Duration
	// DeregisterCriticalAfter makes the agent remove an instance whose check
	// has been critical this long, so crashed instances do not pile up.
	// Consul raises values under one minute to one minute and looks for such
	// instances every 30s, so removal takes 1m to 1m30s; resolvers ignore
	// failing instances long before that. Default 1m.
	DeregisterCriticalAfter time.Duration
	// ResyncInterval is how often the registry checks that the agent still
	// holds its instances and registers again those it lost (an agent
	// restarted without its data, a reaped instance). Default 2s.
	ResyncInterval time.Duration
	// Logger receives re-registrations and agent outages. Default: discard.
	Logger *slog.Logger
}

func (c RegistryConfig) withDefaults() RegistryConfig {
	if c.CheckInterval <= 0 {
		c.CheckInterval = time.Second
	}
	if c.CheckTimeout <= 0 {
		c.CheckTimeout = 2 * time.Second
	}
	if c.DeregisterCriticalAfter <= 0 {
		c.DeregisterCriticalAfter = time.Minute
	}
	if c.ResyncInterval <= 0 {
		c.ResyncInterval = 2 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// requestTimeout bounds each call the registry's background loop makes.
const requestTimeout = 5 * time.Second

// Registry is a [discovery.Registry] backed by a Consul agent. Each
// instance is registered as an agent service with a gRPC health check that
// the agent runs against the instance's address, where Keel's server
// answers grpc.health.v1.Health/Check over h2c.
//
// The registry keeps what it registered: until [Registry.Deregister] or
// [Registry.Close], a background loop registers again any instance the
// agent no longer holds, within about [RegistryConfig.ResyncInterval] of
// the agent coming back. Registering is idempotent. Registry is safe for
// concurrent use; create it with [NewRegistry].
type Registry struct {
	client *api.Client
	cfg    RegistryConfig

	// mu serializes changes to the agent and to kept, so the background
	// loop never registers again an instance being deregistered.
	mu      sync.Mutex
	kept    map[string]*api.AgentServiceRegistration
	running bool
	closed  bool
	stop    chan struct{}
	done    chan struct{}
}

var _ discovery.Registry = (*Registry)(nil)

// NewRegistry returns a registry that registers through client, as built
// by [NewClient]. Its background loop starts with the first registration.
func NewRegistry(client *api.Client, cfg RegistryConfig) *Registry {
	return &Registry{
		client: client,
		cfg:    cfg.withDefaults(),
		kept:   make(map[string]*api.AgentServiceRegistration),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
}

// Register implements [discovery.Registry]: it registers inst with the
// agent, with its health check, and keeps it registered until
// [Registry.Deregister] or [Registry.Close]. A new instance starts
// passing, since it registers once it listens, and turns critical if a
// check fails, within about [RegistryConfig.CheckInterval]. Registering the
// same ID again replaces the instance and its check.
func (r *Registry) Register(ctx context.Context, inst discovery.Instance) error {
	reg, err := r.registration(inst)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("consul: register %s: registry is closed", inst.ID)
	}
	if err := r.register(ctx, reg); err != nil {
		return err
	}
	r.kept[reg.ID] = reg
	if !r.running {
		r.running = true
		go r.keep()
	}
	return nil
}

// Deregister implements [discovery.Registry]: it stops keeping the
// instance and removes it, and its check, from the agent at once, so
// resolvers drop it before the instance stops serving. Unknown IDs are not
// an error.
func (r *Registry) Deregister(ctx context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.kept, id)
	err := r.client.Agent().ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx))
	var status api.StatusError
	if errors.As(err, &status) && status.Code == http.StatusNotFound {
		return nil
	}
	if err != nil {
		return fmt.Errorf("consul: deregister %s: %w", id, err)
	}
	return nil
}

// Close stops keeping instances registered. It does not deregister them:
// call [Registry.Deregister] first to leave gracefully; instances left
// behind fail their checks once their servers stop and the agent removes
// them after [RegistryConfig.DeregisterCriticalAfter].
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	running := r.running
	close(r.stop)
	r.mu.Unlock()
	if running {
		<-r.done
	}
	return nil
}

// registration builds the agent service for inst. It sets only fields
// Consul 1.14 knows: that version rejects registrations with others.
func (r *Registry) registration(inst discovery.Instance) (*api.AgentServiceRegistration, error) {
	if inst.ID == "" || inst.Service == "" || inst.Addr == "" {
		return nil, fmt.Errorf("consul: register: instance needs an id, a service and an address (got %+v)", inst)
	}
	host, portText, err := net.SplitHostPort(inst.Addr)
	if err != nil {
		return nil, fmt.Errorf("consul: register %s: address %q: %w", inst.ID, inst.Addr, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port <= 0 || port > 65535 {
		return nil, fmt.Errorf("consul: register %s: address %q: port must be 1-65535", inst.ID, inst.Addr)
	}
	// An instance listening on every interface is reached at the agent
	// node's address; the agent, on the same host, checks it on loopback.
	checkHost := host
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host, checkHost = "", "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			checkHost = "::1"
		}
	}
	return &api.AgentServiceRegistration{
		ID:      inst.ID,
		Name:    inst.Service,
		Address: host,
		Port:    port,
		Tags:    slices.Clone(inst.Tags),
		Meta:    maps.Clone(inst.Meta),
		Check: &api.AgentServiceCheck{
			CheckID: "service:" + inst.ID,
			Name:    "gRPC health",
			// No service name after the address: the server as a whole.
			GRPC:                           net.JoinHostPort(checkHost, portText),
			GRPCUseTLS:                     false,
			Interval:                       r.cfg.CheckInterval.String(),
			Timeout:                        r.cfg.CheckTimeout.String(),
			DeregisterCriticalServiceAfter: r.cfg.DeregisterCriticalAfter.String(),
			// An instance registers once it listens, so it can take calls at
			// once; waiting for the first check would leave a new platform
			// with no routable instance for up to an interval. A dead one
			// fails its first check within CheckInterval.
			Status: api.HealthPassing,
		},
	}, nil
}

// register sends reg to the agent. Callers hold r.mu.
func (r *Registry) register(ctx context.Context, reg *api.AgentServiceRegistration) error {
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := r.client.Agent().ServiceRegisterOpts(reg, opts); err != nil {
		return fmt.Errorf("consul: register %s (service %s at %s:%d): %w", reg.ID, reg.Name, reg.Address, reg.Port, err)
	}
	return nil
}

// keep registers again, every ResyncInterval, the kept instances the
// agent does not hold.
func (r *Registry) keep() {
	defer close(r.done)
	ticker := time.NewTicker(r.cfg.ResyncInterval)
	defer ticker.Stop()
	agentDown := false
	for {
		select {
		case <-r.stop:
			return
		case <-ticker.C:
		}
		err := r.resync()
		switch {
		case err != nil && !agentDown:
			agentDown = true
			r.cfg.Logger.Warn("consul: cannot check registrations; will retry", slog.Any("error", err))
		case err == nil && agentDown:
			agentDown = false
			r.cfg.Logger.Info("consul: agent reachable again")
		}
	}
}

func (r *Registry) resync() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.kept) == 0 || r.closed {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	held, err := r.client.Agent().ServicesWithFilterOpts("", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("list agent services: %w", err)
	}
	var errs []error
	for id, reg := range r.kept {
		if _, ok := held[id]; ok {
			continue
		}
		if err := r.register(ctx, reg); err != nil {
			errs = append(errs, err)
			continue
		}
		r.cfg.Logger.Info("consul: registered again an instance the agent had lost",
			slog.String("id", id), slog.String("service", reg.Name))
	}
	return errors.Join(errs...)
}
