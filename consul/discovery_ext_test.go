package consul_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/consul/consultest"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
)

// keelInstance is a real Keel server on loopback, answering gRPC health
// over h2c like every Keel service.
type keelInstance struct {
	inst discovery.Instance
	stop context.CancelFunc
	done chan struct{}
}

// serveInstance starts a Keel server for service and returns it, not yet
// registered. It stops when the test ends.
func serveInstance(t *testing.T, service, id string) *keelInstance {
	t.Helper()
	srv := server.New(server.Config{}, slog.New(slog.DiscardHandler))
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	k := &keelInstance{
		inst: discovery.Instance{
			ID: id, Service: service, Addr: srv.Addr(),
			Tags: []string{"grpc", "connect"},
			Meta: map[string]string{"version": "v1.2.3"},
		},
		stop: cancel,
		done: make(chan struct{}),
	}
	go func() {
		defer close(k.done)
		if err := srv.Serve(ctx); err != nil {
			t.Errorf("serve %s: %v", id, err)
		}
	}()
	t.Cleanup(k.shutdown)
	return k
}

// shutdown stops the server and waits until it no longer listens.
func (k *keelInstance) shutdown() {
	k.stop()
	<-k.done
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newClient connects to agent the way a Keel process does.
func newClient(t *testing.T, agent *consultest.Agent) *api.Client {
	t.Helper()
	client, err := consul.NewClient(consul.Config{Addr: agent.Addr(), Token: agent.Token()})
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func newRegistry(t *testing.T, client *api.Client) *consul.Registry {
	reg := consul.NewRegistry(client, consul.RegistryConfig{Logger: testLogger(t)})
	t.Cleanup(func() { _ = reg.Close() })
	return reg
}

func newResolver(t *testing.T, client *api.Client) *consul.Resolver {
	res := consul.NewResolver(client, consul.ResolverConfig{Logger: testLogger(t)})
	t.Cleanup(func() { _ = res.Close() })
	return res
}

func register(t *testing.T, reg *consul.Registry, k *keelInstance) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := reg.Register(ctx, k.inst); err != nil {
		t.Fatal(err)
	}
}

// ids lists the IDs res resolves for service, or nil with the error.
func ids(res discovery.Resolver, service string) ([]string, error) {
	list, err := res.Instances(service)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(list))
	for i, inst := range list {
		out[i] = inst.ID
	}
	return out, nil
}

// waitIDs waits until res resolves exactly want for service and returns
// how long that took. It looks again each time the instances change.
func waitIDs(t *testing.T, res *consul.Resolver, service string, timeout time.Duration, want ...string) time.Duration {
	t.Helper()
	began := time.Now()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		changed := res.Changed(service) // before reading, so no change is missed
		got, err := ids(res, service)
		if slices.Equal(got, want) || (len(want) == 0 && errors.Is(err, discovery.ErrNoInstances)) {
			return time.Since(began)
		}
		select {
		case <-changed:
		case <-timer.C:
			t.Fatalf("after %v, %s resolves to %v (err %v), want %v", timeout, service, got, err, want)
		}
	}
}

// failedCalls is an http.RoundTripper that counts the calls that got no
// answer.
type failedCalls struct {
	base http.RoundTripper
	n    atomic.Int64
}

func (f *failedCalls) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := f.base.RoundTrip(req)
	if err != nil {
		f.n.Add(1)
	}
	return resp, err
}

// countingClient is a client for agent whose failed calls calls counts.
func countingClient(t *testing.T, agent *consultest.Agent) (client *api.Client, calls *failedCalls) {
	t.Helper()
	calls = &failedCalls{base: http.DefaultTransport.(*http.Transport).Clone()}
	client, err := api.NewClient(&api.Config{Address: agent.Addr(), Token: agent.Token(), HttpClient: &http.Client{Transport: calls}})
	if err != nil {
		t.Fatal(err)
	}
	return client, calls
}

func TestRegistryGRPCCheckPassesAgainstKeelServer(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := newClient(t, agent)
	reg, res := newRegistry(t, client), newResolver(t, client)
	k := serveInstance(t, "user", "user-1")

	began := time.Now()
	register(t, reg, k)
	waitIDs(t, res, "user", 10*time.Second, "user-1")
	t.Logf("registered instance passing its gRPC check and resolvable after %v", time.Since(began).Round(time.Millisecond))

	checks, _, err := client.Health().Checks("user", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(checks) != 1 || checks[0].Status != api.HealthPassing || checks[0].Type != "grpc" {
		t.Fatalf("checks = %+v, want one passing grpc check", checks)
	}
	list, err := res.Instances("user")
	if err != nil {
		t.Fatal(err)
	}
	got := list[0]
	if got.Addr != k.inst.Addr || got.Service != "user" || !slices.Equal(got.Tags, k.inst.Tags) || got.Meta["version"] != "v1.2.3" {
		t.Fatalf("resolved %+v, want %+v", got, k.inst)
	}
}

func TestRegistryRegisterIsIdempotent(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := newClient(t, agent)
	reg, res := newRegistry(t, client), newResolver(t, client)
	k := serveInstance(t, "inventory", "inventory-1")
	register(t, reg, k)
	k.inst.Tags = []string{"grpc"}
	register(t, reg, k)
	waitIDs(t, res, "inventory", 10*time.Second, "inventory-1")
	services, err := client.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(services) != 1 || !slices.Equal(services["inventory-1"].Tags, []string{"grpc"}) {
		t.Fatalf("agent services = %+v, want inventory-1 once, with the new tags", services)
	}
	if err := reg.Deregister(context.Background(), "never-registered"); err != nil {
		t.Fatalf("deregister unknown id: %v", err)
	}
}

func TestRegistryRejectsBadInstances(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	reg := newRegistry(t, newClient(t, agent))
	for _, inst := range []discovery.Instance{
		{ID: "a", Service: "user"},
		{ID: "a", Service: "user", Addr: "127.0.0.1"},
		{ID: "a", Service: "user", Addr: "127.0.0.1:http"},
		{ID: "a", Service: "user", Addr: "127.0.0.1:1", Meta: map[string]string{"bad key!": "x"}},
	} {
		if err := reg.Register(context.Background(), inst); err == nil {
			t.Errorf("Register(%+v) succeeded, want an error", inst)
		}
	}
}

func TestResolverFollowsInstances(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := newClient(t, agent)
	reg, res := newRegistry(t, client), newResolver(t, client)
	graceful := serveInstance(t, "payment", "payment-1")
	crashed := serveInstance(t, "payment", "payment-2")
	register(t, reg, graceful)
	register(t, reg, crashed)
	waitIDs(t, res, "payment", 10*time.Second, "payment-1", "payment-2")

	// A graceful stop deregisters first, then stops serving.
	changed := res.Changed("payment")
	began := time.Now()
	if err := reg.Deregister(context.Background(), "payment-1"); err != nil {
		t.Fatal(err)
	}
	graceful.shutdown()
	waitIDs(t, res, "payment", 5*time.Second, "payment-2")
	t.Logf("deregistered instance gone from the resolver %v after Deregister", time.Since(began).Round(time.Millisecond))
	select {
	case <-changed:
	default:
		t.Error("Changed channel not closed after the instances changed")
	}

	// A crash: the server stops without deregistering; its check fails.
	crashed.shutdown()
	took := waitIDs(t, res, "payment", 15*time.Second)
	t.Logf("killed instance gone from the resolver %v after its server stopped", took.Round(time.Millisecond))
	if _, err := res.Instances("payment"); !errors.Is(err, discovery.ErrNoInstances) {
		t.Fatalf("Instances after all stopped: err = %v, want ErrNoInstances", err)
	}
}

func TestResolverKeepsInstancesWhileAgentIsDown(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := newClient(t, agent)
	resolverClient, calls := countingClient(t, agent)
	reg, res := newRegistry(t, client), newResolver(t, resolverClient)
	k := serveInstance(t, "order", "order-1")
	register(t, reg, k)
	waitIDs(t, res, "order", 10*time.Second, "order-1")

	// While the agent is down, the watch's queries fail and it retries with
	// backoff: through several failures it answers with what it knew.
	agent.Stop()
	failedBefore := calls.n.Load()
	const failures = 4
	for deadline := time.Now().Add(15 * time.Second); calls.n.Load() < failedBefore+failures; {
		if got, err := ids(res, "order"); err != nil || !slices.Equal(got, []string{"order-1"}) {
			t.Fatalf("agent down, after %d failed queries: resolved %v, %v; want the last known order-1",
				calls.n.Load()-failedBefore, got, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d failed queries 15s after the agent stopped, want %d", calls.n.Load()-failedBefore, failures)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got, err := ids(res, "order"); err != nil || !slices.Equal(got, []string{"order-1"}) {
		t.Fatalf("agent down, after %d failed queries: resolved %v, %v; want the last known order-1", failures, got, err)
	}

	began := time.Now()
	agent.Restart()
	t.Logf("agent restarted in %v", time.Since(began).Round(time.Millisecond))
	k2 := serveInstance(t, "order", "order-2")
	register(t, reg, k2)
	took := waitIDs(t, res, "order", 15*time.Second, "order-1", "order-2")
	t.Logf("after the restart, the watch saw a new registration in %v", took.Round(time.Millisecond))
}

func TestRegistryRegistersAgainWhenAgentLosesState(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	client := newClient(t, agent)
	reg, res := newRegistry(t, client), newResolver(t, client)
	k := serveInstance(t, "storefront", "storefront-1")
	register(t, reg, k)
	waitIDs(t, res, "storefront", 10*time.Second, "storefront-1")

	agent.Kill()
	agent.RestartEmpty()
	began := time.Now()
	for {
		// The resolver must not report "no instances" while the agent,
		// back without its data, waits for the registration to return.
		got, err := ids(res, "storefront")
		if err != nil || !slices.Equal(got, []string{"storefront-1"}) {
			t.Fatalf("after the agent lost its state: resolved %v, %v; want storefront-1 throughout", got, err)
		}
		services, err := client.Agent().Services()
		if err == nil && services["storefront-1"] != nil {
			checks, _, err := client.Health().Checks("storefront", nil)
			if err == nil && len(checks) == 1 && checks[0].Status == api.HealthPassing {
				break
			}
		}
		if time.Since(began) > 15*time.Second {
			t.Fatalf("instance not registered again and passing 15s after the agent restarted empty")
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("registered again and passing %v after the agent came back empty", time.Since(began).Round(time.Millisecond))
}

func TestResolverUnknownService(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	res := newResolver(t, newClient(t, agent))
	began := time.Now()
	_, err := res.Instances("nobody")
	if !errors.Is(err, discovery.ErrNoInstances) {
		t.Fatalf("err = %v, want ErrNoInstances", err)
	}
	if took := time.Since(began); took > time.Second {
		t.Errorf("first answer for an unknown service took %v; Consul answers at once", took)
	}
}

func TestResolverWithoutConsul(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1: every query fails at once.
	client, err := api.NewClient(&api.Config{Address: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	res := consul.NewResolver(client, consul.ResolverConfig{FirstAnswerWait: 300 * time.Millisecond})
	defer res.Close()
	began := time.Now()
	_, err = res.Instances("user")
	took := time.Since(began)
	if !errors.Is(err, discovery.ErrNoInstances) {
		t.Fatalf("err = %v, want ErrNoInstances", err)
	}
	if took < 250*time.Millisecond || took > 2*time.Second {
		t.Errorf("first call returned after %v, want about FirstAnswerWait (300ms)", took)
	}
	began = time.Now()
	if _, err := res.Instances("user"); err == nil || time.Since(began) > 50*time.Millisecond {
		t.Errorf("second call: err %v after %v; want an error at once", err, time.Since(began))
	}
	t.Logf("error without Consul: %v", err)
}

// TestResolverAbandonsStalledQuery starts a resolver whose path to the
// agent is silent, neither answering nor resetting. Its first query, which
// does not block, must be given up after about 5s whatever WaitTime says,
// and asked again on a new connection.
func TestResolverAbandonsStalledQuery(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	register(t, newRegistry(t, newClient(t, agent)), serveInstance(t, "user", "user-1"))
	proxy := startTCPProxy(t, agent.Addr())
	proxy.Freeze()
	client, err := api.NewClient(&api.Config{Address: proxy.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	res := consul.NewResolver(client, consul.ResolverConfig{FirstAnswerWait: 100 * time.Millisecond, Logger: testLogger(t)})
	t.Cleanup(func() { _ = res.Close() })
	if _, err := res.Instances("user"); !errors.Is(err, discovery.ErrNoInstances) {
		t.Fatalf("Instances over a silent path: err = %v, want ErrNoInstances", err)
	}
	waitFor(t, 5*time.Second, "query on the silent connection", func() bool { return proxy.Swallowed() > 0 })
	proxy.Recover() // new connections only: the one the query waits on stays silent
	took := waitIDs(t, res, "user", 15*time.Second, "user-1")
	t.Logf("resolved %v after the path came back for new connections", took.Round(time.Millisecond))
}
