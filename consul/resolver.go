package consul

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keelplatform/keel/internal/discovery"
)

// ResolverConfig tunes a [Resolver]. The zero value of each field means its
// documented default.
type ResolverConfig struct {
	// WaitTime is how long one blocking query may wait for a change before
	// Consul answers anyway. Default 5m. A query with no answer 5s after
	// WaitTime (plus the up to WaitTime/16 Consul adds; 5s flat for a
	// query that does not block) is abandoned as stalled, as on a
	// half-open connection, and retried.
	WaitTime time.Duration
	// FirstAnswerWait bounds how long the first [Resolver.Instances] call
	// for a service waits for Consul's first answer. Default 2s.
	FirstAnswerWait time.Duration
	// MaxBackoff caps the exponential backoff, from 100ms, between queries
	// while Consul is unreachable or failing; it bounds how long a watch
	// takes to notice that Consul is back. Default 2s.
	MaxBackoff time.Duration
	// OutageGrace is how long, after Consul comes back from an outage (or
	// its index goes backwards, as when an agent restarts without its
	// data), an answer with no instances is not believed while instances
	// were known before: restarted agents answer "none" until services
	// register again. A non-empty answer ends the grace at once. Default 10s.
	OutageGrace time.Duration
	// Logger receives outages and recoveries. Default: discard.
	Logger *slog.Logger
}

func (c ResolverConfig) withDefaults() ResolverConfig {
	if c.WaitTime <= 0 {
		c.WaitTime = 5 * time.Minute
	}
	if c.FirstAnswerWait <= 0 {
		c.FirstAnswerWait = 2 * time.Second
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 2 * time.Second
	}
	if c.OutageGrace <= 0 {
		c.OutageGrace = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// minBackoff is the first pause after a failed query.
const minBackoff = 100 * time.Millisecond

// errClosed is reported for services first asked about after Close.
var errClosed = errors.New("consul: resolver is closed")

// Resolver is a [discovery.Resolver] backed by Consul. The first
// [Resolver.Instances] call for a service starts a watch on its passing
// instances (a blocking query on /v1/health/service/NAME?passing) and waits
// up to [ResolverConfig.FirstAnswerWait] for the first answer; after that,
// Instances answers from memory without network I/O.
//
// A Consul outage never empties the answer: while queries fail, the
// resolver keeps the last instances it knew and retries with exponential
// backoff; see also [ResolverConfig.OutageGrace]. Resolver is safe for
// concurrent use; create it with [NewResolver] and stop its watches with
// [Resolver.Close].
type Resolver struct {
	client *api.Client
	cfg    ResolverConfig
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.RWMutex
	watches map[string]*watch
	closed  bool
}

var _ discovery.Resolver = (*Resolver)(nil)

// watch is the state of one service's watch.
type watch struct {
	service string
	// deadline is when callers stop waiting for the first answer.
	deadline time.Time
	// answered is closed after Consul's first answer.
	answered chan struct{}
	current  atomic.Pointer[snapshot]
	// lastErr is the last query error, reported while nothing is known.
	lastErr atomic.Pointer[error]
}

// snapshot is one immutable answer.
type snapshot struct {
	instances []discovery.Instance
	// changed is closed when a newer snapshot replaces this one.
	changed chan struct{}
}

// NewResolver returns a resolver that queries through client, as built by
// [NewClient]. It starts no watch until asked about a service.
func NewResolver(client *api.Client, cfg ResolverConfig) *Resolver {
	ctx, cancel := context.WithCancel(context.Background())
	return &Resolver{
		client:  client,
		cfg:     cfg.withDefaults(),
		ctx:     ctx,
		cancel:  cancel,
		watches: make(map[string]*watch),
	}
}

// Instances implements [discovery.Resolver]: it returns the passing
// instances of service, sorted by ID, or an error wrapping
// [discovery.ErrNoInstances]. The returned slice must not be modified.
func (r *Resolver) Instances(service string) ([]discovery.Instance, error) {
	w, err := r.watch(service)
	if err != nil {
		return nil, fmt.Errorf("service %q: %w: %w", service, discovery.ErrNoInstances, err)
	}
	select {
	case <-w.answered:
	default:
		if wait := time.Until(w.deadline); wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-w.answered:
			case <-timer.C:
			}
			timer.Stop()
		}
	}
	if list := w.current.Load().instances; len(list) > 0 {
		return list, nil
	}
	select {
	case <-w.answered:
		return nil, fmt.Errorf("service %q: %w in consul", service, discovery.ErrNoInstances)
	default:
	}
	cause := errors.New("no answer yet")
	if last := w.lastErr.Load(); last != nil {
		cause = *last
	}
	return nil, fmt.Errorf("service %q: %w: consul has not answered: %w", service, discovery.ErrNoInstances, cause)
}

// Changed returns a channel that is closed when the instances of service
// change, or when the resolver closes. Take the channel before reading
// [Resolver.Instances] so no change is missed:
//
//	changed := r.Changed("user")
//	list, err := r.Instances("user")
//	... <-changed ...
//
// Changed starts the service's watch if needed, without waiting for it.
func (r *Resolver) Changed(service string) <-chan struct{} {
	w, err := r.watch(service)
	if err != nil {
		closed := make(chan struct{})
		close(closed)
		return closed
	}
	return w.current.Load().changed
}

// Close stops all watches and closes every channel returned by
// [Resolver.Changed]. Afterwards Instances still answers, from the last
// known instances, for services it was watching, and fails for others.
func (r *Resolver) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, w := range r.watches {
		close(w.current.Load().changed)
	}
	return nil
}

// watch returns the watch of service, starting it on first use.
func (r *Resolver) watch(service string) (*watch, error) {
	r.mu.RLock()
	w := r.watches[service]
	r.mu.RUnlock()
	if w != nil {
		return w, nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if w := r.watches[service]; w != nil {
		return w, nil
	}
	if r.closed {
		return nil, errClosed
	}
	w = &watch{
		service:  service,
		deadline: time.Now().Add(r.cfg.FirstAnswerWait),
		answered: make(chan struct{}),
	}
	w.current.Store(&snapshot{changed: make(chan struct{})})
	r.watches[service] = w
	r.wg.Add(1)
	go r.run(w)
	return w, nil
}

// run keeps w's snapshot current until the resolver closes.
func (r *Resolver) run(w *watch) {
	defer r.wg.Done()
	log := r.cfg.Logger.With(slog.String("service", w.service))
	var (
		index     uint64
		backoff   time.Duration
		failing   bool
		holdEmpty time.Time // until then, an empty answer does not replace known instances
		answered  bool
	)
	for {
		waitTime := r.cfg.WaitTime
		if until := time.Until(holdEmpty); until > 0 && until < waitTime {
			// Ask again when the grace ends, even if nothing changes.
			waitTime = until
		}
		entries, meta, err := r.query(w.service, index, waitTime)
		if r.ctx.Err() != nil {
			return
		}
		if err != nil {
			w.lastErr.Store(&err)
			if !failing {
				failing = true
				log.Warn("consul: watch failing; keeping the last known instances", slog.Any("error", err))
			}
			// After an outage the agent may be a new one with a smaller
			// index: start over so the next query answers at once.
			index = 0
			backoff = min(max(2*backoff, minBackoff), r.cfg.MaxBackoff)
			if !r.sleep(jitter(backoff)) {
				return
			}
			continue
		}
		backoff = 0
		if failing || meta.LastIndex < index {
			if failing {
				log.Info("consul: watch recovered")
			}
			failing = false
			holdEmpty = time.Now().Add(r.cfg.OutageGrace)
		}
		switch {
		case meta.LastIndex < index:
			index = 0
		case meta.LastIndex == 0:
			index = 1 // an index of 0 would make the next query return at once, forever
		default:
			index = meta.LastIndex
		}
		list := instancesOf(entries)
		old := w.current.Load()
		if len(list) == 0 && len(old.instances) > 0 && time.Now().Before(holdEmpty) {
			log.Info("consul: no instances right after an outage; keeping the last known ones for now",
				slog.Int("kept", len(old.instances)))
		} else {
			if len(list) > 0 {
				holdEmpty = time.Time{}
			}
			if !answered || !sameInstances(old.instances, list) {
				w.current.Store(&snapshot{instances: list, changed: make(chan struct{})})
				close(old.changed)
			}
		}
		if !answered {
			answered = true
			close(w.answered)
		}
	}
}

// query runs one blocking query for the passing instances of service. Its
// context also bounds a connection that went silent (a vanished host sends
// no reset), which the HTTP client alone would wait on forever.
func (r *Resolver) query(service string, index uint64, wait time.Duration) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	ctx, cancel := context.WithTimeout(r.ctx, queryTimeout(index, wait))
	defer cancel()
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
	entries, meta, err := r.client.Health().Service(service, "", true, q)
	if err != nil {
		return nil, nil, fmt.Errorf("query passing instances of %q: %w", service, err)
	}
	return entries, meta, nil
}

// blockingQuerySlack is how long past its wait (and Consul's jitter) a
// blocking query may take to answer before it is given up as stalled.
const blockingQuerySlack = 5 * time.Second

// queryTimeout bounds one query at index that asks Consul to wait up to
// wait for a change: Consul adds up to wait/16 of jitter, then the answer
// has blockingQuerySlack to arrive. Past that, the connection is taken for
// dead (a half-open one never delivers an answer nor an error) and the
// query is abandoned so that its caller can retry on a new connection. At
// index 0 Consul answers at once, whatever wait says.
func queryTimeout(index uint64, wait time.Duration) time.Duration {
	if index == 0 {
		wait = 0
	}
	return wait + wait/16 + blockingQuerySlack
}

// sleep pauses for d unless the resolver closes first; it reports whether
// the resolver is still open.
func (r *Resolver) sleep(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-r.ctx.Done():
		return false
	}
}

// jitter spreads d by ±20% so watches of many processes do not retry in step.
func jitter(d time.Duration) time.Duration {
	return d - d/5 + rand.N(2*d/5+1)
}

// instancesOf converts Consul's answer, sorted by ID.
func instancesOf(entries []*api.ServiceEntry) []discovery.Instance {
	list := make([]discovery.Instance, 0, len(entries))
	for _, e := range entries {
		if e.Service == nil {
			continue
		}
		host := e.Service.Address
		if host == "" && e.Node != nil {
			host = e.Node.Address
		}
		list = append(list, discovery.Instance{
			ID:      e.Service.ID,
			Service: e.Service.Service,
			Addr:    net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
			Tags:    e.Service.Tags,
			Meta:    e.Service.Meta,
		})
	}
	slices.SortFunc(list, func(a, b discovery.Instance) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), cmp.Compare(a.Addr, b.Addr))
	})
	return list
}

func sameInstances(a, b []discovery.Instance) bool {
	return slices.EqualFunc(a, b, func(x, y discovery.Instance) bool {
		return x.ID == y.ID && x.Service == y.Service && x.Addr == y.Addr &&
			slices.Equal(x.Tags, y.Tags) && maps.Equal(x.Meta, y.Meta)
	})
}
