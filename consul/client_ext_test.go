package consul_test

import (
	"strings"
	"testing"

	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/consul/consultest"
)

func TestNewClientChecksTheToken(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t, consultest.WithACL())

	const wrong = "0badbad0-1111-4222-8333-444455556666"
	_, err := consul.NewClient(consul.Config{Addr: agent.Addr(), Token: wrong})
	if err == nil {
		t.Fatal("NewClient with a wrong token succeeded")
	}
	t.Logf("wrong token: %v", err)
	if strings.Contains(err.Error(), wrong) {
		t.Fatalf("error reveals the token: %v", err)
	}
	if !strings.Contains(err.Error(), "rejected the token") {
		t.Errorf("error does not say the token was rejected: %v", err)
	}

	client, err := consul.NewClient(consul.Config{Addr: agent.Addr(), Token: agent.Token()})
	if err != nil {
		t.Fatalf("NewClient with the management token: %v", err)
	}
	if _, err := client.Agent().Self(); err != nil {
		t.Fatalf("agent self with the management token: %v", err)
	}

	// Without a token the anonymous token applies: reachable, but denied.
	anonymous, err := consul.NewClient(consul.Config{Addr: agent.Addr()})
	if err != nil {
		t.Fatalf("NewClient without a token: %v", err)
	}
	if _, err := anonymous.Agent().Self(); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("reading the agent anonymously under default deny: err = %v, want 403", err)
	}
}

func TestNewClientUnreachableAgent(t *testing.T) {
	t.Parallel()
	const token = "5ec2e7ab-0000-4000-8000-000000000000"
	_, err := consul.NewClient(consul.Config{Addr: "127.0.0.1:1", Token: token})
	if err == nil {
		t.Fatal("NewClient succeeded against a closed port")
	}
	if strings.Contains(err.Error(), token) || !strings.Contains(err.Error(), "does not answer") {
		t.Fatalf("err = %v; want 'does not answer', without the token", err)
	}
	if _, err := consul.NewClient(consul.Config{Addr: "127.0.0.1:1", Scheme: "ftp"}); err == nil {
		t.Fatal("NewClient accepted scheme ftp")
	}
}

func TestNewClientWithoutACLsAcceptsAnyToken(t *testing.T) {
	t.Parallel()
	agent := consultest.Start(t)
	if _, err := consul.NewClient(consul.Config{Addr: agent.Addr(), Token: "ignored-when-acls-are-off"}); err != nil {
		t.Fatalf("NewClient with a token on an agent without ACLs: %v", err)
	}
}

func TestConfigFromEnv(t *testing.T) {
	for _, tc := range []struct {
		addr, ssl string
		want      consul.Config
	}{
		{addr: "", want: consul.Config{Token: "tok"}},
		{addr: "10.0.0.1:8500", want: consul.Config{Addr: "10.0.0.1:8500", Token: "tok"}},
		{addr: "https://consul.internal:8501", want: consul.Config{Addr: "consul.internal:8501", Token: "tok", Scheme: "https"}},
		{addr: "consul.internal:8501", ssl: "true", want: consul.Config{Addr: "consul.internal:8501", Token: "tok", Scheme: "https"}},
	} {
		t.Setenv("CONSUL_HTTP_ADDR", tc.addr)
		t.Setenv("CONSUL_HTTP_TOKEN", "tok")
		t.Setenv("CONSUL_HTTP_SSL", tc.ssl)
		if got := consul.ConfigFromEnv(); got != tc.want {
			t.Errorf("addr %q ssl %q: got %+v, want %+v", tc.addr, tc.ssl, got, tc.want)
		}
	}
	if s := (consul.Config{Token: "secret-token"}).String(); strings.Contains(s, "secret-token") {
		t.Errorf("Config.String reveals the token: %s", s)
	}
}
