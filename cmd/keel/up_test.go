package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/testkit"
)

// TestUpPrintsAWorkingCurlLineAndStopsCleanly runs `keel up` as a user
// does, runs the curl line it prints, and stops it as Ctrl-C does.
func TestUpPrintsAWorkingCurlLineAndStopsCleanly(t *testing.T) {
	upAndCurl(t, "--env", "test", "--config-dir", "../../consul/kv", "--addr", "127.0.0.1:0", "--data-dir", t.TempDir())
}

// TestUpWithConsulStartsAnAgent runs `keel up --consul` without
// CONSUL_HTTP_ADDR: it starts a dev agent with consul/agent.sh, pushes the
// configuration, registers everything there, and stops the agent at exit.
func TestUpWithConsulStartsAnAgent(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "")
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	agentDir := t.TempDir()
	stdout := upAndCurl(t, "--consul", "--consul-dir", agentDir, "--env", "test", "--config-dir", "../../consul/kv",
		"--addr", "127.0.0.1:0", "--data-dir", t.TempDir())
	m := regexp.MustCompile(`discovery: Consul at (127\.0\.0\.1:\d+)`).FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("no Consul address printed:\n%s", stdout)
	}
	if _, err := os.Stat(filepath.Join(agentDir, "consul.pid")); !os.IsNotExist(err) {
		t.Fatalf("the dev agent was not stopped (consul.pid: %v)", err)
	}
	if _, err := http.Get("http://" + m[1] + "/v1/status/leader"); err == nil {
		t.Fatal("the dev agent still answers after keel up ended")
	}
}

// upAndCurl runs `keel up` with args, checks that the curl line it prints
// works, then stops it as Ctrl-C does and returns what it printed. While it
// runs, with --consul, it also checks that the user service is registered
// and its configuration is in Consul KV.
func upAndCurl(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr testkit.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"up"}, args...), &stdout, &stderr)
	}()

	curl := regexp.MustCompile(`(?s)curl -s -X POST (\S+) \\\s+-H 'Content-Type: application/json' \\\s+-d '([^']+)'`)
	var m []string
	for deadline := time.Now().Add(30 * time.Second); m == nil; {
		if m = curl.FindStringSubmatch(stdout.String()); m == nil {
			if time.Now().After(deadline) {
				t.Fatalf("no curl line printed; stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	res, err := http.Post(m[1], "application/json", strings.NewReader(m[2]))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), `"email":"ada@example.com"`) {
		t.Fatalf("the printed curl line got %d %s", res.StatusCode, body)
	}

	if addr := regexp.MustCompile(`discovery: Consul at (\S+)`).FindStringSubmatch(stdout.String()); addr != nil {
		for _, check := range []struct{ path, want string }{
			{"/v1/health/service/user?passing", `"ID": "user-127.0.0.1-`},
			{"/v1/kv/keel/test/user/token_ttl?raw", "1h"},
		} {
			res, err := http.Get("http://" + addr[1] + check.path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if !strings.Contains(string(body), check.want) {
				t.Fatalf("%s: got %s, want %s", check.path, body, check.want)
			}
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("keel up returned %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("keel up did not stop")
	}
	return stdout.String()
}

func TestUnknownCommandFails(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"frobnicate"}, &out, &out); err == nil || !strings.Contains(err.Error(), "frobnicate") {
		t.Fatalf("want an error naming the command, got %v", err)
	}
}
