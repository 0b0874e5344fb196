package consul_test

import (
	"context"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/consul/consultest"
)

// fastResync is a resync interval short enough for tests to go through
// several rounds quickly.
const fastResync = 20 * time.Millisecond

// prompt bounds calls that must not wait for a stalled call, well below
// the 5s the registry's own calls may take.
const prompt = time.Second

const (
	listServices    = "GET /v1/agent/services"
	registerService = "PUT /v1/agent/service/register"
)

// proxiedRegistry starts an agent with a registry that reaches it through
// a proxy that can stall chosen calls, and a client that reaches it
// directly.
func proxiedRegistry(t *testing.T) (*consul.Registry, *agentProxy, *api.Client) {
	t.Helper()
	agent := consultest.Start(t)
	proxy := startAgentProxy(t, agent.Addr())
	reg := consul.NewRegistry(proxy.client(t), consul.RegistryConfig{ResyncInterval: fastResync, Logger: testLogger(t)})
	t.Cleanup(func() { _ = reg.Close() })
	return reg, proxy, agent.Client()
}

// agentService returns the agent's registration of id, or nil.
func agentService(t *testing.T, client *api.Client, id string) *api.AgentService {
	t.Helper()
	services, err := client.Agent().Services()
	if err != nil {
		t.Fatalf("list agent services: %v", err)
	}
	return services[id]
}

// once matches the first call to "METHOD /path" what, and no other.
func once(what string) func(*http.Request) bool {
	var matched atomic.Bool
	return func(r *http.Request) bool {
		return r.Method+" "+r.URL.Path == what && matched.CompareAndSwap(false, true)
	}
}

// waitResyncs waits until the registry has listed the agent's services n
// more times, i.e. until n more resync rounds began.
func waitResyncs(t *testing.T, proxy *agentProxy, n int) {
	t.Helper()
	from := proxy.count(listServices)
	waitFor(t, 10*time.Second, "resync rounds", func() bool { return proxy.count(listServices) >= from+n })
}

// TestRegistryDeregisterDoesNotWaitForStalledResync stalls the background
// loop's call to the agent and checks that Deregister, as at shutdown, and
// Close still return at once.
func TestRegistryDeregisterDoesNotWaitForStalledResync(t *testing.T) {
	t.Parallel()
	reg, proxy, direct := proxiedRegistry(t)
	k := serveInstance(t, "order", "order-1")
	register(t, reg, k)

	stalled := proxy.hold(func(r *http.Request) bool { return r.Method+" "+r.URL.Path == listServices })
	if what := stalled.waitHeld(t, 10*time.Second); what != listServices {
		t.Fatalf("held %s, want the resync's %s", what, listServices)
	}
	took, err := within(t, 10*time.Second, "Deregister", func() error {
		return reg.Deregister(context.Background(), "order-1")
	})
	t.Logf("Deregister during a stalled resync took %v", took.Round(time.Millisecond))
	if err != nil {
		t.Fatalf("Deregister: %v", err)
	}
	if took > prompt {
		t.Errorf("Deregister took %v while a resync was stalled, want under %v", took, prompt)
	}
	if s := agentService(t, direct, "order-1"); s != nil {
		t.Errorf("agent still holds order-1 after Deregister: %+v", s)
	}
	took, _ = within(t, 10*time.Second, "Close", reg.Close)
	t.Logf("Close during a stalled resync took %v", took.Round(time.Millisecond))
	if took > prompt {
		t.Errorf("Close took %v while a resync was stalled, want under %v", took, prompt)
	}
}

// TestRegistryResyncDoesNotResurrectDeregistered races a re-registration
// by the background loop with Deregister, the loop's call reaching the
// agent last: the instance must not stay registered.
func TestRegistryResyncDoesNotResurrectDeregistered(t *testing.T) {
	t.Parallel()
	reg, proxy, direct := proxiedRegistry(t)
	ghost, keeper := serveInstance(t, "payment", "payment-1"), serveInstance(t, "payment", "payment-2")
	register(t, reg, ghost)
	register(t, reg, keeper) // keeps the loop checking once payment-1 is gone

	resync := proxy.hold(func(r *http.Request) bool { return r.Method+" "+r.URL.Path == registerService })
	// The agent loses payment-1; the loop sends it again, and that call
	// stalls on its way.
	if err := direct.Agent().ServiceDeregister("payment-1"); err != nil {
		t.Fatal(err)
	}
	if what := resync.waitHeld(t, 10*time.Second); what != registerService {
		t.Fatalf("held %s, want the resync's %s", what, registerService)
	}
	took, err := within(t, 10*time.Second, "Deregister", func() error {
		return reg.Deregister(context.Background(), "payment-1")
	})
	if err != nil || took > prompt {
		t.Fatalf("Deregister during the loop's registration: %v after %v; want success under %v", err, took, prompt)
	}
	// The loop's registration reaches the agent after the deregistration.
	resync.Release()
	if status := resync.waitForwarded(t, 10*time.Second); status != http.StatusOK {
		t.Fatalf("the loop's registration got %d from the agent, want it accepted (200)", status)
	}
	waitFor(t, 10*time.Second, "payment-1 removed again", func() bool { return agentService(t, direct, "payment-1") == nil })
	waitResyncs(t, proxy, 3)
	if s := agentService(t, direct, "payment-1"); s != nil {
		t.Fatalf("deregistered payment-1 registered again: %+v", s)
	}
	if agentService(t, direct, "payment-2") == nil {
		t.Fatal("payment-2, still kept, is gone from the agent")
	}
}

// TestRegistryResyncDoesNotRevertNewerRegistration races a re-registration
// by the background loop with a Register that changes the instance, the
// loop's older registration reaching the agent last: the agent must end
// up with the newer one.
func TestRegistryResyncDoesNotRevertNewerRegistration(t *testing.T) {
	t.Parallel()
	reg, proxy, direct := proxiedRegistry(t)
	k := serveInstance(t, "inventory", "inventory-1")
	register(t, reg, k)

	resync := proxy.hold(once(registerService)) // only the loop's call: Register's must go through
	if err := direct.Agent().ServiceDeregister("inventory-1"); err != nil {
		t.Fatal(err)
	}
	if what := resync.waitHeld(t, 10*time.Second); what != registerService {
		t.Fatalf("held %s, want the resync's %s", what, registerService)
	}
	newer := k.inst
	newer.Tags = []string{"grpc", "v2"}
	took, err := within(t, 10*time.Second, "Register", func() error {
		return reg.Register(context.Background(), newer)
	})
	if err != nil || took > prompt {
		t.Fatalf("Register during the loop's registration: %v after %v; want success under %v", err, took, prompt)
	}
	resync.Release()
	if status := resync.waitForwarded(t, 10*time.Second); status != http.StatusOK {
		t.Fatalf("the loop's registration got %d from the agent, want it accepted (200)", status)
	}
	hasNewer := func() bool {
		s := agentService(t, direct, "inventory-1")
		return s != nil && slices.Equal(s.Tags, newer.Tags)
	}
	waitFor(t, 10*time.Second, "inventory-1 with the newer tags", hasNewer)
	waitResyncs(t, proxy, 3)
	if !hasNewer() {
		t.Fatalf("agent holds %+v, want the newer registration with tags %v", agentService(t, direct, "inventory-1"), newer.Tags)
	}
}

// TestRegistryRegisterRacingResyncKeepsNewer races a re-registration by
// the background loop with a Register that changes the instance, in the
// order a registry that recorded the change only after its call would
// miss: Register's call reaches the agent first, the loop's older one
// next, and the loop looks at what is kept before Register hears back.
func TestRegistryRegisterRacingResyncKeepsNewer(t *testing.T) {
	t.Parallel()
	reg, proxy, direct := proxiedRegistry(t)
	k := serveInstance(t, "user", "user-1")
	register(t, reg, k)

	resync := proxy.hold(once(registerService))
	if err := direct.Agent().ServiceDeregister("user-1"); err != nil {
		t.Fatal(err)
	}
	if what := resync.waitHeld(t, 10*time.Second); what != registerService {
		t.Fatalf("held %s, want the resync's %s", what, registerService)
	}
	// Register's call reaches the agent; its answer is held.
	answer := proxy.holdAnswer(once(registerService))
	newer := k.inst
	newer.Tags = []string{"grpc", "v2"}
	registered := make(chan error, 1)
	go func() { registered <- reg.Register(context.Background(), newer) }()
	answer.waitHeld(t, 10*time.Second)
	// The loop's older registration reaches the agent next, and the loop
	// goes on to its next round while Register still waits.
	resync.Release()
	if status := resync.waitForwarded(t, 10*time.Second); status != http.StatusOK {
		t.Fatalf("the loop's registration got %d from the agent, want it accepted (200)", status)
	}
	waitResyncs(t, proxy, 1)
	answer.Release()
	select {
	case err := <-registered:
		if err != nil {
			t.Fatalf("Register: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Register did not return 10s after its answer was released")
	}
	hasNewer := func() bool {
		s := agentService(t, direct, "user-1")
		return s != nil && slices.Equal(s.Tags, newer.Tags)
	}
	waitFor(t, 10*time.Second, "user-1 with the newer tags", hasNewer)
	waitResyncs(t, proxy, 3)
	if !hasNewer() {
		t.Fatalf("agent holds %+v, want the newer registration with tags %v", agentService(t, direct, "user-1"), newer.Tags)
	}
}

// TestRegistryDeregisterRacingResyncStaysGone races a re-registration by
// the background loop with Deregister, in the order a registry that
// forgot the instance only after its call would miss: Deregister's call
// reaches the agent first, the loop's registration next, and the loop
// looks at what is kept before Deregister hears back.
func TestRegistryDeregisterRacingResyncStaysGone(t *testing.T) {
	t.Parallel()
	reg, proxy, direct := proxiedRegistry(t)
	ghost, keeper := serveInstance(t, "edge", "edge-1"), serveInstance(t, "edge", "edge-2")
	register(t, reg, ghost)
	register(t, reg, keeper)

	resync := proxy.hold(once(registerService))
	if err := direct.Agent().ServiceDeregister("edge-1"); err != nil {
		t.Fatal(err)
	}
	if what := resync.waitHeld(t, 10*time.Second); what != registerService {
		t.Fatalf("held %s, want the resync's %s", what, registerService)
	}
	// Deregister's call reaches the agent; its answer is held.
	answer := proxy.holdAnswer(once("PUT /v1/agent/service/deregister/edge-1"))
	deregistered := make(chan error, 1)
	go func() { deregistered <- reg.Deregister(context.Background(), "edge-1") }()
	answer.waitHeld(t, 10*time.Second)
	resync.Release()
	if status := resync.waitForwarded(t, 10*time.Second); status != http.StatusOK {
		t.Fatalf("the loop's registration got %d from the agent, want it accepted (200)", status)
	}
	waitResyncs(t, proxy, 1)
	answer.Release()
	select {
	case err := <-deregistered:
		if err != nil {
			t.Fatalf("Deregister: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Deregister did not return 10s after its answer was released")
	}
	waitFor(t, 10*time.Second, "edge-1 removed again", func() bool { return agentService(t, direct, "edge-1") == nil })
	waitResyncs(t, proxy, 3)
	if s := agentService(t, direct, "edge-1"); s != nil {
		t.Fatalf("deregistered edge-1 registered again: %+v", s)
	}
	if agentService(t, direct, "edge-2") == nil {
		t.Fatal("edge-2, still kept, is gone from the agent")
	}
}
