package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/keelplatform/keel/consul/consultest"
)

// TestConfigPushDiff runs `keel config push` and `keel config diff` against
// a real agent with ACLs, as an operator would with CONSUL_HTTP_ADDR and
// CONSUL_HTTP_TOKEN set.
func TestConfigPushDiff(t *testing.T) {
	agent := consultest.Start(t, consultest.WithACL())
	t.Setenv("CONSUL_HTTP_ADDR", agent.Addr())
	t.Setenv("CONSUL_HTTP_TOKEN", agent.Token())
	dir := filepath.Join("..", "..", "consul", "kv")
	keel := func(args ...string) (string, error) {
		var stdout, stderr strings.Builder
		err := run(t.Context(), args, &stdout, &stderr)
		return stdout.String() + stderr.String(), err
	}

	out, err := keel("config", "diff", "--env", "local", "--dir", dir)
	if !errors.Is(err, errConfigDiffers) || !strings.Contains(out, "+ keel/local/user/log_level = info") {
		t.Errorf("diff before push: %v\n%s", err, out)
	}
	out, err = keel("config", "push", "--env", "local", "--dir", dir)
	if err != nil || !strings.Contains(out, "pushed ") {
		t.Fatalf("push: %v\n%s", err, out)
	}
	out, err = keel("config", "diff", "--env", "local", "--dir", dir)
	if err != nil || !strings.Contains(out, "matches") {
		t.Errorf("diff after push: %v\n%s", err, out)
	}

	if _, err := agent.Client().KV().Put(&api.KVPair{Key: "keel/local/user/log_level", Value: []byte("warn")}, nil); err != nil {
		t.Fatal(err)
	}
	out, err = keel("config", "diff", "--env", "local", "--dir", dir)
	if !errors.Is(err, errConfigDiffers) || !strings.Contains(out, "~ keel/local/user/log_level: warn -> info") || !strings.Contains(out, "1 key differs") {
		t.Errorf("diff after a KV edit: %v\n%s", err, out)
	}
	t.Logf("keel config diff:\n%s", out)
	out, err = keel("config", "push", "--env", "local", "--dir", dir)
	if err != nil || !strings.Contains(out, "~ keel/local/user/log_level: warn -> info") {
		t.Errorf("second push: %v\n%s", err, out)
	}
	if out, err = keel("config", "push", "--env", "local", "--dir", dir); err != nil || !strings.Contains(out, "already matches") {
		t.Errorf("third push: %v\n%s", err, out)
	}
}

func TestConfigFlags(t *testing.T) {
	bad := t.TempDir()
	if err := os.MkdirAll(filepath.Join(bad, "test"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bad, "test", "user.yaml"), []byte("log_level:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	agent := consultest.Start(t)
	t.Setenv("CONSUL_HTTP_ADDR", agent.Addr())
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	tests := []struct {
		args []string
		want string
	}{
		{args: []string{"config"}, want: "want push or diff"},
		{args: []string{"config", "pull"}, want: "want push or diff"},
		{args: []string{"config", "push"}, want: "--env is required"},
		{args: []string{"config", "diff", "--env", "staging"}, want: `unknown environment "staging"`},
		{args: []string{"config", "push", "--env", "test", "--dir", bad}, want: "key log_level has no value"},
		{args: []string{"config", "diff", "--env", "test", "--dir", t.TempDir()}, want: "read seed files"},
	}
	for _, tt := range tests {
		var stdout, stderr strings.Builder
		err := run(t.Context(), tt.args, &stdout, &stderr)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("keel %s: error %v, want one containing %q", strings.Join(tt.args, " "), err, tt.want)
		}
	}
	pairs, _, err := agent.Client().KV().List("keel/", nil)
	if err != nil || len(pairs) != 0 {
		t.Errorf("KV after refused commands: %d keys, %v; want none", len(pairs), err)
	}
}
