// Package consultest gives tests a real, throwaway Consul agent.
//
// [Start] runs `consul agent -dev` bound to 127.0.0.1 on free ports (DNS,
// gRPC and serf WAN disabled), waits until it has a leader and stops it
// when the test ends. Every call starts its own agent, so tests may run in
// parallel; an agent starts in well under a second.
//
// The binary comes from consul/get-consul.sh, which builds Consul from
// source the first time on a machine (several minutes; progress is logged
// through t.Log) and caches it. KEEL_CONSUL_BIN names a binary to use
// instead. Start fails the test, never skips it, when there is no binary.
//
// A dev agent keeps its raft state (catalog, KV, ACL tokens other than the
// management one) in memory: [Agent.Restart] brings it back on the same
// ports with the same data directory, from which the agent restores the
// services registered with it, but the catalog and KV start empty.
// [Agent.RestartEmpty] also drops those services, as a replaced agent
// would. Should the test binary die without running its cleanups, a small
// watchdog process kills the agent and removes its files within a second.
package consultest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/consul/api"
)

// Option changes how [Start] configures an agent.
type Option func(*options)

type options struct {
	acl bool
}

// WithACL enables ACLs with default policy "deny" and a generated initial
// management token, returned by [Agent.Token], which is also the agent's
// own token and the one [Agent.Client] sends.
func WithACL() Option {
	return func(o *options) { o.acl = true }
}

// startTimeout bounds how long an agent may take to elect itself leader.
const startTimeout = 30 * time.Second

// stopTimeout is how long [Agent.Stop] waits after SIGTERM before SIGKILL.
const stopTimeout = 10 * time.Second

// Agent is a running Consul dev agent owned by one test. Its methods are
// safe for concurrent use.
type Agent struct {
	t        testing.TB
	bin      string
	dir      string // agent.hcl, consul.log, consul.pid, data/
	addr     string
	token    string
	client   *api.Client
	watchdog *exec.Cmd

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// Start starts an agent for t and stops it, gracefully, when t ends. It
// fails t if the agent cannot be built or started.
func Start(t testing.TB, opts ...Option) *Agent {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	bin, err := consulBinary(t)
	if err != nil {
		t.Fatalf("consultest: get a consul binary: %v", err)
	}
	a := &Agent{t: t, bin: bin, dir: t.TempDir()}
	if o.acl {
		a.token = uuid.NewString()
	}
	if err := a.startWatchdog(); err != nil {
		t.Fatalf("consultest: %v", err)
	}
	t.Cleanup(a.cleanup)
	began := time.Now()
	// A port found free can be taken before the agent binds it (parallel
	// tests do this): try again with new ports.
	for attempt := 1; ; attempt++ {
		if err = a.writeConfig(); err == nil {
			err = a.start()
		}
		if err == nil {
			break
		}
		if attempt == 3 {
			t.Fatalf("consultest: start agent: %v", err)
		}
		t.Logf("consultest: start agent (attempt %d): %v; retrying on other ports", attempt, err)
	}
	a.client, err = api.NewClient(&api.Config{Address: a.addr, Token: a.token})
	if err != nil {
		t.Fatalf("consultest: client: %v", err)
	}
	t.Logf("consultest: agent on %s ready in %v (files in %s)", a.addr, time.Since(began).Round(time.Millisecond), a.dir)
	return a
}

// Addr returns the agent's HTTP address, host:port, as CONSUL_HTTP_ADDR
// takes it.
func (a *Agent) Addr() string { return a.addr }

// Token returns the management token when the agent runs [WithACL], or "".
func (a *Agent) Token() string { return a.token }

// Client returns a client for the agent that sends [Agent.Token]. It keeps
// working across restarts.
func (a *Agent) Client() *api.Client { return a.client }

// Stop stops the agent gracefully (SIGTERM; SIGKILL after 10s). It is a
// no-op when the agent is not running.
func (a *Agent) Stop() {
	a.t.Helper()
	a.signal(syscall.SIGTERM, stopTimeout)
}

// Kill stops the agent abruptly with SIGKILL, as a crash would.
func (a *Agent) Kill() {
	a.t.Helper()
	a.signal(syscall.SIGKILL, stopTimeout)
}

// Restart stops the agent, if running, and starts it again on the same
// ports with the same data directory and token. The agent restores the
// services and checks registered with it; the catalog and KV, kept in
// memory by a dev agent, start empty and refill as the agent syncs.
func (a *Agent) Restart() {
	a.t.Helper()
	a.Stop()
	if err := a.start(); err != nil {
		a.t.Fatalf("consultest: restart agent: %v", err)
	}
}

// RestartEmpty is [Agent.Restart] with an emptied data directory: the
// agent comes back on the same address knowing no services, as a replaced
// agent would, so processes must register again.
func (a *Agent) RestartEmpty() {
	a.t.Helper()
	a.Stop()
	if err := os.RemoveAll(filepath.Join(a.dir, "data")); err != nil {
		a.t.Fatalf("consultest: empty data directory: %v", err)
	}
	if err := a.start(); err != nil {
		a.t.Fatalf("consultest: restart agent: %v", err)
	}
}

// Log returns the agent's log so far, for failure messages.
func (a *Agent) Log() string {
	b, err := os.ReadFile(filepath.Join(a.dir, "consul.log"))
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return string(b)
}

func (a *Agent) cleanup() {
	a.signal(syscall.SIGTERM, stopTimeout)
	if a.watchdog != nil {
		_ = a.watchdog.Process.Kill()
		_ = a.watchdog.Wait()
	}
}

// writeConfig picks free ports and writes agent.hcl; the token, if any,
// goes there rather than on the command line.
func (a *Agent) writeConfig() error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	a.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	var b strings.Builder
	fmt.Fprintf(&b, "ports {\n  http = %d\n  serf_lan = %d\n  server = %d\n", ports[0], ports[1], ports[2])
	b.WriteString("  dns = -1\n  grpc = -1\n  grpc_tls = -1\n  serf_wan = -1\n}\n")
	if a.token != "" {
		fmt.Fprintf(&b, "acl {\n  enabled = true\n  default_policy = \"deny\"\n  down_policy = \"extend-cache\"\n"+
			"  tokens {\n    initial_management = %q\n    agent = %q\n  }\n}\n", a.token, a.token)
	}
	if err := os.WriteFile(filepath.Join(a.dir, "agent.hcl"), []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write agent config: %w", err)
	}
	return nil
}

// start runs the agent and waits until it has a leader and, with ACLs,
// accepts its token.
func (a *Agent) start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		return errors.New("agent already running")
	}
	logFile, err := os.OpenFile(filepath.Join(a.dir, "consul.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open agent log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(a.bin, "agent", "-dev",
		"-bind", "127.0.0.1", "-client", "127.0.0.1", "-advertise", "127.0.0.1",
		"-data-dir", filepath.Join(a.dir, "data"),
		"-pid-file", filepath.Join(a.dir, "consul.pid"),
		"-config-file", filepath.Join(a.dir, "agent.hcl"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", a.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	if err := a.waitReady(exited); err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("%w\nagent log (tail):\n%s", err, tail(a.Log(), 3000))
	}
	a.cmd, a.exited = cmd, exited
	return nil
}

func (a *Agent) waitReady(exited <-chan struct{}) error {
	httpClient := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-exited:
			return errors.New("agent exited during start")
		default:
		}
		if a.ready(httpClient) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent on %s has no leader after %v", a.addr, startTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (a *Agent) ready(httpClient *http.Client) bool {
	leader, ok := get(httpClient, "http://"+a.addr+"/v1/status/leader", "")
	if !ok || leader == "" || leader == `""` {
		return false
	}
	if a.token == "" {
		return true
	}
	// The management token exists once the new leader has bootstrapped ACLs.
	_, ok = get(httpClient, "http://"+a.addr+"/v1/acl/token/self", a.token)
	return ok
}

func get(httpClient *http.Client, url, token string) (string, bool) {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
	if err != nil {
		return "", false
	}
	if token != "" {
		req.Header.Set("X-Consul-Token", token)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(body)), err == nil && resp.StatusCode == http.StatusOK
}

// signal sends sig to the running agent and waits for it to exit, killing
// it after timeout.
func (a *Agent) signal(sig syscall.Signal, timeout time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return
	}
	_ = a.cmd.Process.Signal(sig)
	select {
	case <-a.exited:
	case <-time.After(timeout):
		a.t.Logf("consultest: agent still running %v after %v; killing it", timeout, sig)
		_ = a.cmd.Process.Kill()
		<-a.exited
	}
	a.cmd, a.exited = nil, nil
}

// watchdogScript waits for the test binary ($1) to exit, then kills the
// agent whose pid file is $2 and removes its directory $3. It exits at
// once when killed by a normal cleanup.
const watchdogScript = `
while kill -0 "$1" 2>/dev/null; do sleep 1; done
[ -f "$2" ] && kill -9 "$(cat "$2")" 2>/dev/null
rm -rf "$3"
`

func (a *Agent) startWatchdog() error {
	cmd := exec.Command("/bin/sh", "-c", watchdogScript, "consultest-watchdog",
		strconv.Itoa(os.Getpid()), filepath.Join(a.dir, "consul.pid"), a.dir)
	// Own process group: a Ctrl-C to "go test" must not kill the watchdog
	// before it has cleaned up. No stdio, so "go test" does not wait for it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start watchdog: %w", err)
	}
	a.watchdog = cmd
	return nil
}

// consulBinary returns KEEL_CONSUL_BIN or the binary get-consul.sh prints,
// relaying the script's progress to t.Log while it builds.
func consulBinary(t testing.TB) (string, error) {
	if bin := os.Getenv("KEEL_CONSUL_BIN"); bin != "" {
		return bin, nil
	}
	_, self, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate consultest's source to find get-consul.sh")
	}
	script := filepath.Join(filepath.Dir(self), "..", "get-consul.sh")
	cmd := exec.Command(script)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return "", fmt.Errorf("run %s: %w", script, err)
	}
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("run %s: %w", script, err)
	}
	var last []string
	buf := make([]byte, 4096)
	var line strings.Builder
	for {
		n, readErr := stderr.Read(buf)
		for _, c := range string(buf[:n]) {
			if c != '\n' {
				line.WriteRune(c)
				continue
			}
			t.Log(line.String())
			last = append(last, line.String())
			if len(last) > 20 {
				last = last[1:]
			}
			line.Reset()
		}
		if readErr != nil {
			break
		}
	}
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("%s: %w\n%s", script, err, strings.Join(last, "\n"))
	}
	bin := strings.TrimSpace(stdout.String())
	if bin == "" {
		return "", fmt.Errorf("%s printed no binary path", script)
	}
	return bin, nil
}

// freePorts returns n distinct ports free on 127.0.0.1 for both TCP and
// UDP (serf gossips over both).
func freePorts(n int) ([]int, error) {
	var ports []int
	var held []io.Closer
	defer func() {
		for _, c := range held {
			_ = c.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		held = append(held, l)
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // UDP side taken: keep the TCP one held so it is not picked again
		}
		held = append(held, u)
		ports = append(ports, port)
	}
	return ports, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
