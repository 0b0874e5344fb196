package consultest_test

import (
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/keelplatform/keel/consul/consultest"
)

func TestAgentsCoexistAndRestart(t *testing.T) {
	t.Parallel()
	plain := consultest.Start(t)
	secured := consultest.Start(t, consultest.WithACL())
	if plain.Addr() == secured.Addr() {
		t.Fatalf("two agents share %s", plain.Addr())
	}
	if plain.Token() != "" || secured.Token() == "" {
		t.Fatalf("tokens: plain %q, secured set %v; want none and one", plain.Token(), secured.Token() != "")
	}

	for _, agent := range []*consultest.Agent{plain, secured} {
		reg := &api.AgentServiceRegistration{ID: "svc-1", Name: "svc", Port: 1234, Address: "127.0.0.1"}
		if err := agent.Client().Agent().ServiceRegister(reg); err != nil {
			t.Fatalf("register on %s: %v", agent.Addr(), err)
		}
		addr := agent.Addr()
		agent.Kill()
		if _, err := agent.Client().Agent().Self(); err == nil {
			t.Fatalf("agent on %s answers after Kill", addr)
		}
		agent.Restart()
		if agent.Addr() != addr {
			t.Fatalf("restarted on %s, want %s", agent.Addr(), addr)
		}
		services, err := agent.Client().Agent().Services()
		if err != nil {
			t.Fatalf("after restart: %v", err)
		}
		if services["svc-1"] == nil {
			t.Fatalf("Restart lost the agent's own services: %v", services)
		}
		agent.RestartEmpty()
		services, err = agent.Client().Agent().Services()
		if err != nil {
			t.Fatalf("after empty restart: %v", err)
		}
		if len(services) != 0 {
			t.Fatalf("RestartEmpty kept services: %v", services)
		}
	}

	// The anonymous token is denied under the ACL agent's default policy.
	anonymous, err := api.NewClient(&api.Config{Address: secured.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anonymous.Agent().Self(); err == nil {
		t.Fatal("anonymous read of the ACL agent succeeded; want permission denied")
	}
}
