// Package jaegertest runs a real Jaeger (v1.75.0, the OpenTelemetry
// collector based binary) on loopback, for tests and for `keel up
// --tracing`, and reads traces back from it.
//
// [Start] gives a test its own Jaeger on free ports and stops it when the
// test ends; [Run] is the same without a test, on ports the caller picks.
// Either way Jaeger keeps traces in memory only and listens on:
//
//   - an OTLP/HTTP receiver: a process exports to it with
//     OTEL_EXPORTER_OTLP_ENDPOINT=[Jaeger.OTLPEndpoint] (see [Jaeger.Env]);
//   - an OTLP/gRPC receiver;
//   - the query service: its HTTP API under /api/ and the UI at /
//     ([Jaeger.UIURL]), and its gRPC API;
//   - the health check extension (/status), which, with the query API,
//     tells when Jaeger is ready.
//
// The binary is KEEL_JAEGER_BIN when set, else the one
// scripts/get-jaeger.sh prints, which builds Jaeger from the Go module
// proxy the first time on a machine (several minutes) and caches it.
// Built that way the binary has no UI assets: / serves Jaeger's placeholder
// page, while the query API, which [Client] and the tests use, is complete.
//
// Jaeger runs in its own process group (a Ctrl-C meant for its parent does
// not stop it before the parent has flushed its spans) and a small
// watchdog process kills it within a second should the parent die
// without stopping it.
package jaegertest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Version is the Jaeger release scripts/get-jaeger.sh builds.
const Version = "1.75.0"

// BinEnv names an environment variable holding the path of a Jaeger
// binary to use instead of the one scripts/get-jaeger.sh provides.
const BinEnv = "KEEL_JAEGER_BIN"

// ReadyTimeout bounds how long [Run] waits for Jaeger to become ready.
const ReadyTimeout = 60 * time.Second

// stopTimeout is how long [Jaeger.Stop] waits after SIGTERM before SIGKILL.
const stopTimeout = 10 * time.Second

// Addrs are the loopback host:port addresses a Jaeger listens on.
type Addrs struct {
	// OTLPHTTP is the OTLP/HTTP receiver (/v1/traces).
	OTLPHTTP string
	// OTLPGRPC is the OTLP/gRPC receiver.
	OTLPGRPC string
	// QueryHTTP serves the query HTTP API (/api/...) and the UI (/).
	QueryHTTP string
	// QueryGRPC serves the query gRPC API.
	QueryGRPC string
	// Health serves the health check extension's /status.
	Health string
}

// FreeAddrs returns Addrs on distinct ports of 127.0.0.1 that are free
// now. Another process may take one before Jaeger binds it: retry [Run]
// with new ones if it fails.
func FreeAddrs() (Addrs, error) {
	ports, err := freePorts(5)
	if err != nil {
		return Addrs{}, err
	}
	addr := func(i int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[i])) }
	return Addrs{OTLPHTTP: addr(0), OTLPGRPC: addr(1), QueryHTTP: addr(2), QueryGRPC: addr(3), Health: addr(4)}, nil
}

// Config returns the Jaeger configuration (YAML, for --config) that [Run]
// uses: Jaeger's all-in-one configuration (cmd/jaeger/internal/all-in-one.yaml
// of v1.75.0) cut down to an in-memory store, the OTLP receivers, the
// query service and the health check, on the addresses in a, and nothing
// else: no Jaeger or Zipkin receivers, no remote sampling, no expvar,
// zpages or Prometheus listeners, and no traces or metrics of its own.
func Config(a Addrs) string {
	return fmt.Sprintf(`# Written by github.com/keelplatform/keel/internal/jaegertest.
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    traces:
      level: none
    logs:
      level: info

extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: %q
  jaeger_query:
    storage:
      traces: memstore
    # On by default in v2: Jaeger would trace its own queries, exporting
    # over OTLP/gRPC to localhost:4317, and wait 10s on exit for that.
    enable_tracing: false
    http:
      endpoint: %q
    grpc:
      endpoint: %q
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000

receivers:
  otlp:
    protocols:
      http:
        endpoint: %q
      grpc:
        endpoint: %q

processors:
  batch:

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`, a.Health, a.QueryHTTP, a.QueryGRPC, a.OTLPHTTP, a.OTLPGRPC)
}

// Jaeger is a running Jaeger process. Its methods are safe for concurrent
// use.
type Jaeger struct {
	addrs    Addrs
	dir      string
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd has been waited for
	watchdog *exec.Cmd
	stopOnce sync.Once
}

// Run starts the Jaeger binary bin listening on addrs, with its
// configuration (jaeger.yaml) and log (jaeger.log) in dir, which must
// exist, and returns once Jaeger is ready: its health check reports
// StatusOK and its query API answers. If Jaeger exits or is not ready
// within [ReadyTimeout], Run stops it and returns an error with the tail of
// its log. The caller stops it with [Jaeger.Stop].
//
// Jaeger gets the caller's environment without its OTEL_* variables, so
// that settings meant for the caller's own exporter do not make Jaeger
// trace itself.
func Run(bin, dir string, addrs Addrs) (*Jaeger, error) {
	config := filepath.Join(dir, "jaeger.yaml")
	if err := os.WriteFile(config, []byte(Config(addrs)), 0o600); err != nil {
		return nil, fmt.Errorf("write jaeger config: %w", err)
	}
	logFile, err := os.OpenFile(filepath.Join(dir, "jaeger.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open jaeger log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--config", "file:"+config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = withoutOTEL(os.Environ())
	// Own process group: a Ctrl-C to the parent reaches the parent only,
	// which stops Jaeger after its own processes have flushed their spans.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	j := &Jaeger{addrs: addrs, dir: dir, cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(j.exited)
	}()
	j.watchdog = startWatchdog(cmd.Process.Pid)
	if err := j.waitReady(); err != nil {
		j.Stop()
		return nil, fmt.Errorf("%w\njaeger log (tail):\n%s", err, tail(j.Log(), 3000))
	}
	return j, nil
}

// Addrs returns the addresses Jaeger listens on.
func (j *Jaeger) Addrs() Addrs { return j.addrs }

// OTLPEndpoint returns the base URL of the OTLP/HTTP receiver,
// http://127.0.0.1:PORT, as OTEL_EXPORTER_OTLP_ENDPOINT takes it (the SDK
// appends /v1/traces).
func (j *Jaeger) OTLPEndpoint() string { return "http://" + j.addrs.OTLPHTTP }

// UIURL returns the base URL of the query service, http://127.0.0.1:PORT:
// the UI at / and the HTTP API under /api/.
func (j *Jaeger) UIURL() string { return "http://" + j.addrs.QueryHTTP }

// Env returns the environment, as NAME=value entries, that makes an
// OpenTelemetry SDK export traces to this Jaeger over OTLP/HTTP:
// OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf.
func (j *Jaeger) Env() []string {
	return []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + j.OTLPEndpoint(),
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
	}
}

// Client returns a [Client] for this Jaeger's query API.
func (j *Jaeger) Client() *Client { return &Client{URL: j.UIURL()} }

// Trace returns the spans of the trace with the given hex id, as
// [Client.Trace] does.
func (j *Jaeger) Trace(ctx context.Context, traceID string) ([]Span, error) {
	return j.Client().Trace(ctx, traceID)
}

// WaitTrace waits until the trace has at least n spans, as
// [Client.WaitTrace] does.
func (j *Jaeger) WaitTrace(ctx context.Context, traceID string, n int) ([]Span, error) {
	return j.Client().WaitTrace(ctx, traceID, n)
}

// Exited returns a channel closed once the Jaeger process has exited.
func (j *Jaeger) Exited() <-chan struct{} { return j.exited }

// Pid returns the process id of Jaeger.
func (j *Jaeger) Pid() int { return j.cmd.Process.Pid }

// Log returns Jaeger's log so far, for failure messages.
func (j *Jaeger) Log() string {
	b, err := os.ReadFile(filepath.Join(j.dir, "jaeger.log"))
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	return string(b)
}

// Stop stops Jaeger gracefully (SIGTERM; SIGKILL after 10s) and waits for
// it to exit. Later calls do nothing. Traces are lost: they are kept in
// memory only.
func (j *Jaeger) Stop() {
	j.stopOnce.Do(func() {
		_ = j.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-j.exited:
		case <-time.After(stopTimeout):
			_ = j.cmd.Process.Kill()
			<-j.exited
		}
		if j.watchdog != nil {
			_ = j.watchdog.Process.Kill()
			_ = j.watchdog.Wait()
		}
	})
}

// waitReady polls the health check and the query API until both answer,
// Jaeger exits, or ReadyTimeout passes.
func (j *Jaeger) waitReady() error {
	httpClient := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(ReadyTimeout)
	var last string
	for {
		select {
		case <-j.exited:
			return errors.New("jaeger exited during start")
		default:
		}
		if last = j.notReady(httpClient); last == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("jaeger not ready after %v: %s", ReadyTimeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// notReady returns why Jaeger is not ready yet, or "" when it is.
func (j *Jaeger) notReady(httpClient *http.Client) string {
	status, body, err := get(httpClient, "http://"+j.addrs.Health+"/status")
	if err != nil {
		return "health check: " + err.Error()
	}
	var health struct {
		Status string `json:"status"`
	}
	if status != http.StatusOK || json.Unmarshal(body, &health) != nil || health.Status != "StatusOK" {
		return fmt.Sprintf("health check: %d %s", status, body)
	}
	status, body, err = get(httpClient, j.UIURL()+"/api/services")
	if err != nil {
		return "query API: " + err.Error()
	}
	if status != http.StatusOK {
		return fmt.Sprintf("query API: %d %s", status, body)
	}
	return ""
}

func get(httpClient *http.Client, url string) (int, []byte, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, body, err
}

// watchdogScript waits for the parent process ($1) to exit, then kills
// Jaeger ($2). It exits at once when killed by a normal stop.
const watchdogScript = `
while kill -0 "$1" 2>/dev/null; do sleep 1; done
kill -9 "$2" 2>/dev/null
`

// startWatchdog starts the watchdog for Jaeger's pid, or returns nil if it
// cannot: Jaeger still runs, it just is not cleaned up after a crash.
func startWatchdog(pid int) *exec.Cmd {
	cmd := exec.Command("/bin/sh", "-c", watchdogScript, "jaeger-watchdog",
		strconv.Itoa(os.Getpid()), strconv.Itoa(pid))
	// Own process group: a Ctrl-C to the parent must not kill the watchdog
	// before it has cleaned up. No stdio, so "go test" does not wait for it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if cmd.Start() != nil {
		return nil
	}
	return cmd
}

// Binary returns the path of a Jaeger binary: $KEEL_JAEGER_BIN when set,
// else the path that script (scripts/get-jaeger.sh) prints, building
// Jaeger first if it is not cached. Each line the script writes to stderr
// (its progress while it builds) goes to progress, if not nil.
func Binary(script string, progress func(line string)) (string, error) {
	if bin := os.Getenv(BinEnv); bin != "" {
		return bin, nil
	}
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
	lines := bufio.NewScanner(stderr)
	lines.Buffer(make([]byte, 64<<10), 1<<20)
	for lines.Scan() {
		if progress != nil {
			progress(lines.Text())
		}
		if last = append(last, lines.Text()); len(last) > 20 {
			last = last[1:]
		}
	}
	_, _ = io.Copy(io.Discard, stderr) // a line too long for the scanner
	if err := cmd.Wait(); err != nil {
		return "", fmt.Errorf("%s: %w\n%s", script, err, strings.Join(last, "\n"))
	}
	bin := strings.TrimSpace(stdout.String())
	if bin == "" {
		return "", fmt.Errorf("%s printed no binary path", script)
	}
	return bin, nil
}

// withoutOTEL returns env without its OTEL_* entries.
func withoutOTEL(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "OTEL_") {
			out = append(out, kv)
		}
	}
	return out
}

// freePorts returns n distinct TCP ports free on 127.0.0.1.
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
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
