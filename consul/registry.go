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
	"strings"
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
// the agent coming back. Registering is idempotent. No call to the agent
// waits for another one, so a stalled re-registration never holds up
// Deregister at shutdown. Registry is safe for concurrent use; create it
// with [NewRegistry].
type Registry struct {
	client *api.Client
	cfg    RegistryConfig
	// ctx is cancelled by Close; it ends the background loop's calls.
	ctx    context.Context
	cancel context.CancelFunc

	// mu guards the fields below. It is never held during a call to the
	// agent; how calls that race each other still leave the agent holding
	// what kept says is told at settle.
	mu      sync.Mutex
	kept    map[string]*keptInstance
	running bool
	closed  bool
	done    chan struct{}
}

// keptInstance is one registration the registry keeps. Every Register
// makes a new one, so comparing pointers tells whether an instance was
// replaced or deregistered while a call about it was in flight.
type keptInstance struct {
	reg *api.AgentServiceRegistration
	// resent is set, under Registry.mu, when the background loop is about
	// to send reg to the agent again.
	resent bool
}

var _ discovery.Registry = (*Registry)(nil)

// NewRegistry returns a registry that registers through client, as built
// by [NewClient]. Its background loop starts with the first registration.
func NewRegistry(client *api.Client, cfg RegistryConfig) *Registry {
	ctx, cancel := context.WithCancel(context.Background())
	return &Registry{
		client: client,
		cfg:    cfg.withDefaults(),
		ctx:    ctx,
		cancel: cancel,
		kept:   make(map[string]*keptInstance),
		done:   make(chan struct{}),
	}
}

// Register implements [discovery.Registry]: it registers inst with the
// agent, with its health check, and keeps it registered until
// [Registry.Deregister] or [Registry.Close]. A new instance starts
// passing, since it registers once it listens, and turns critical if a
// check fails, within about [RegistryConfig.CheckInterval]. Registering the
// same ID again replaces the instance and its check. When the agent
// refuses or does not answer, Register returns the error and keeps what
// it kept before.
func (r *Registry) Register(ctx context.Context, inst discovery.Instance) error {
	reg, err := r.registration(inst)
	if err != nil {
		return err
	}
	k := &keptInstance{reg: reg}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return fmt.Errorf("consul: register %s: registry is closed", inst.ID)
	}
	// Kept before the call, as settle requires.
	prev := r.kept[reg.ID]
	r.kept[reg.ID] = k
	r.mu.Unlock()

	if err := r.register(ctx, reg); err != nil {
		r.mu.Lock()
		if r.kept[reg.ID] == k {
			if prev != nil {
				r.kept[reg.ID] = prev
			} else {
				delete(r.kept, reg.ID)
			}
		}
		resent := k.resent
		r.mu.Unlock()
		if resent {
			// The background loop sent k meanwhile: undo that, if the
			// agent lets us.
			_ = r.settle(ctx, reg.ID, k)
		}
		return err
	}
	r.settleOrWarn(ctx, reg.ID, k)

	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.running && !r.closed {
		r.running = true
		go r.keep()
	}
	return nil
}

// Deregister implements [discovery.Registry]: it stops keeping the
// instance and removes it, and its check, from the agent at once, so
// resolvers drop it before the instance stops serving. Unknown IDs are not
// an error. It does not wait for the background loop, even one stalled on
// an unresponsive agent, and an instance the loop was registering again
// meanwhile is removed once the loop's call ends.
func (r *Registry) Deregister(ctx context.Context, id string) error {
	r.mu.Lock()
	delete(r.kept, id) // before the call, as settle requires
	r.mu.Unlock()
	if err := r.deregister(ctx, id); err != nil {
		return err
	}
	r.settleOrWarn(ctx, id, nil)
	return nil
}

// Close stops keeping instances registered, cancelling a re-registration
// in flight. It does not deregister them: call [Registry.Deregister] first
// to leave gracefully; instances left behind fail their checks once their
// servers stop and the agent removes them after
// [RegistryConfig.DeregisterCriticalAfter].
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	running := r.running
	r.mu.Unlock()
	r.cancel()
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

// register sends reg to the agent.
func (r *Registry) register(ctx context.Context, reg *api.AgentServiceRegistration) error {
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := r.client.Agent().ServiceRegisterOpts(reg, opts); err != nil {
		return fmt.Errorf("consul: register %s (service %s at %s:%d): %w", reg.ID, reg.Name, reg.Address, reg.Port, err)
	}
	return nil
}

// deregister removes the instance id from the agent; one the agent does
// not hold is not an error.
func (r *Registry) deregister(ctx context.Context, id string) error {
	err := r.client.Agent().ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(ctx))
	var status api.StatusError
	if err == nil || (errors.As(err, &status) && status.Code == http.StatusNotFound) {
		return nil
	}
	return fmt.Errorf("consul: deregister %s: %w", id, err)
}

// settle runs after a call that sent the agent sent for instance id (nil:
// a deregistration) and makes the agent hold what r keeps for id, should
// a concurrent Register, Deregister or resync have changed that.
//
// Calls to the agent are not serialized, so the agent may apply them in
// any order. But every change to kept is made before its call starts, and
// every caller compares kept with what it sent once its call is done. The
// call the agent applies last is thus followed by a comparison that sees
// the latest kept state, since that state was set before the call that
// set it began; if they differ, settle sends the latest state again, and
// compares again. A deregistered instance is so removed again should a
// resync's registration reach the agent after the deregistration. Only a
// call that fails yet reaches the agent later still (a timed-out request
// the agent had received) escapes this.
func (r *Registry) settle(ctx context.Context, id string, sent *keptInstance) error {
	for {
		r.mu.Lock()
		want := r.kept[id]
		r.mu.Unlock()
		if want == sent {
			return nil
		}
		var err error
		if want == nil {
			err = r.deregister(ctx, id)
		} else {
			err = r.register(ctx, want.reg)
		}
		if err != nil {
			return fmt.Errorf("consul: instance %s changed during a call: %w", id, err)
		}
		sent = want
	}
}

// settleOrWarn settles after a call that succeeded. The change it may send
// is another caller's, which settles it too, so it only logs a failure.
func (r *Registry) settleOrWarn(ctx context.Context, id string, sent *keptInstance) {
	if err := r.settle(ctx, id, sent); err != nil {
		r.cfg.Logger.Warn("consul: cannot apply a concurrent change", slog.Any("error", err))
	}
}

// keep registers again, every ResyncInterval, the kept instances the
// agent does not hold, until Close.
func (r *Registry) keep() {
	defer close(r.done)
	ticker := time.NewTicker(r.cfg.ResyncInterval)
	defer ticker.Stop()
	agentDown := false
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-ticker.C:
		}
		err := r.resync(r.ctx)
		if r.ctx.Err() != nil {
			return
		}
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

// resync lists the agent's services and registers again the kept
// instances it lacks, without holding r.mu during either call.
func (r *Registry) resync(ctx context.Context) error {
	r.mu.Lock()
	idle := len(r.kept) == 0
	r.mu.Unlock()
	if idle {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	held, err := r.client.Agent().ServicesWithFilterOpts("", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("list agent services: %w", err)
	}
	// Taken after the list: an instance deregistered during it is not lost
	// but gone, and one registered during it is registered twice, which is
	// harmless.
	r.mu.Lock()
	var lost []*keptInstance
	for id, k := range r.kept {
		if _, ok := held[id]; !ok {
			k.resent = true
			lost = append(lost, k)
		}
	}
	r.mu.Unlock()
	slices.SortFunc(lost, func(a, b *keptInstance) int { return strings.Compare(a.reg.ID, b.reg.ID) })
	var errs []error
	for _, k := range lost {
		if ctx.Err() != nil {
			errs = append(errs, fmt.Errorf("register lost instances again: %w", ctx.Err()))
			break
		}
		err := r.register(ctx, k.reg)
		if err == nil {
			r.cfg.Logger.Info("consul: registered again an instance the agent had lost",
				slog.String("id", k.reg.ID), slog.String("service", k.reg.Name))
		} else {
			errs = append(errs, err)
		}
		// Settle even after a failure, which may have reached the agent,
		// and even after Close: if k was deregistered meanwhile, the agent
		// must not keep it.
		settleCtx, cancelSettle := context.WithTimeout(context.WithoutCancel(ctx), requestTimeout)
		if err := r.settle(settleCtx, k.reg.ID, k); err != nil {
			errs = append(errs, err)
		}
		cancelSettle()
	}
	return errors.Join(errs...)
}
