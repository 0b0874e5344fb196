package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdkresource "go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/redis/rueidis"

	"github.com/keelplatform/keel/cmd/keel/platform"
	"github.com/keelplatform/keel/internal/cache/redistest"
	"github.com/keelplatform/keel/internal/jaegertest"
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

// TestUpWithTracingRunsJaeger runs `keel up --tracing` as a user does: it
// starts Jaeger (scripts/get-jaeger.sh gives the binary), prints the UI
// URL, which answers, and points the processes' OTEL_* environment at it,
// so that a span exported with that environment can be read back from the
// printed URL. When keel up stops, Jaeger has stopped and the environment
// is as it was.
func TestUpWithTracingRunsJaeger(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_TRACES_SAMPLER", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr testkit.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"up", "--tracing", "--jaeger-dir", t.TempDir(),
			"--env", "test", "--config-dir", "../../consul/kv", "--addr", "127.0.0.1:0", "--data-dir", t.TempDir()}, &stdout, &stderr)
	}()
	banner := regexp.MustCompile(`tracing: Jaeger UI at (http://127\.0\.0\.1:\d+) \(OTLP/HTTP at (http://127\.0\.0\.1:\d+)\)(?s:.*)Ctrl-C stops everything`)
	var m []string
	// The first run on a machine builds Jaeger: minutes.
	for deadline := time.Now().Add(20 * time.Minute); m == nil; {
		if m = banner.FindStringSubmatch(stdout.String()); m == nil {
			select {
			case err := <-done:
				t.Fatalf("keel up --tracing ended: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("no Jaeger UI URL printed; stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
			}
		}
	}
	uiURL, otlpURL := m[1], m[2]
	pid := regexp.MustCompile(`keel: Jaeger is up \(pid (\d+)\)`).FindStringSubmatch(stderr.String())
	if pid == nil {
		t.Fatalf("no Jaeger pid logged:\n%s", stderr.String())
	}

	// The UI URL answers: the UI page and the API behind it.
	for _, path := range []string{"/", "/api/services"} {
		res, err := http.Get(uiURL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("GET %s%s: %s %s", uiURL, path, res.Status, body)
		}
	}

	// The processes' environment points at this Jaeger.
	if got := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); got != otlpURL {
		t.Fatalf("OTEL_EXPORTER_OTLP_ENDPOINT = %q, want %q", got, otlpURL)
	}
	if got := os.Getenv("OTEL_TRACES_SAMPLER"); got != "parentbased_always_on" {
		t.Fatalf("OTEL_TRACES_SAMPLER = %q", got)
	}
	exporter, err := otlptracehttp.New(ctx) // configured by that environment only
	if err != nil {
		t.Fatal(err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter),
		sdktrace.WithResource(sdkresource.NewSchemaless(attribute.String("service.name", "keel-up-probe"))))
	_, span := tp.Tracer("keel").Start(ctx, "probe")
	span.End()
	if err := tp.Shutdown(ctx); err != nil {
		t.Fatalf("export to %s: %v", otlpURL, err)
	}
	waitCtx, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	defer cancelWait()
	spans, err := (&jaegertest.Client{URL: uiURL}).WaitTrace(waitCtx, span.SpanContext().TraceID().String(), 1)
	if err != nil {
		t.Fatalf("read the span back from %s: %v", uiURL, err)
	}
	if spans[0].Service != "keel-up-probe" || spans[0].Operation != "probe" {
		t.Fatalf("read back %+v", spans[0])
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
	if _, err := http.Get(uiURL + "/"); err == nil {
		t.Fatal("Jaeger still answers after keel up ended")
	}
	n, _ := strconv.Atoi(pid[1])
	if err := syscall.Kill(n, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("Jaeger (pid %d) still exists after keel up ended: %v", n, err)
	}
	if got := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); got != "" {
		t.Fatalf("OTEL_EXPORTER_OTLP_ENDPOINT left as %q", got)
	}
}

// TestUpWithRedisStartsRedisAndCachesInIt runs `keel up --redis` without
// KEEL_CACHE_REDIS_ADDR: it starts a redis-server, prints its address, the
// inventory caches the items it reads in that server, and the server is
// gone once keel up ends.
func TestUpWithRedisStartsRedisAndCachesInIt(t *testing.T) {
	t.Setenv(redisAddrVar, "")
	redisDir := t.TempDir()
	stderr := upWithRedis(t, "", "--redis-dir", redisDir)
	pid := regexp.MustCompile(`keel: redis-server is up \(pid (\d+)\)`).FindStringSubmatch(stderr)
	if pid == nil {
		t.Fatalf("no redis-server pid logged:\n%s", stderr)
	}
	n, _ := strconv.Atoi(pid[1])
	if err := syscall.Kill(n, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("redis-server (pid %d) still exists after keel up ended: %v", n, err)
	}
	if _, err := os.Stat(filepath.Join(redisDir, "redis.log")); err != nil {
		t.Fatalf("no redis-server log in --redis-dir: %v", err)
	}
}

// TestUpWithRedisUsesTheServerTheEnvironmentNames: with
// KEEL_CACHE_REDIS_ADDR set, `keel up --redis` starts no redis-server and
// the services cache in the one named.
func TestUpWithRedisUsesTheServerTheEnvironmentNames(t *testing.T) {
	server := redistest.Start(t)
	t.Setenv(redisAddrVar, server.Addr())
	stderr := upWithRedis(t, server.Addr(), "--redis-dir", t.TempDir())
	if strings.Contains(stderr, "starting redis-server") {
		t.Fatalf("started a redis-server although %s is set:\n%s", redisAddrVar, stderr)
	}
	if err := redistest.Ping(server.Addr()); err != nil {
		t.Fatalf("keel up stopped the Redis it did not start: %v", err)
	}
}

// TestUpWithRedisWithoutRedisServerSaysHowToInstallIt: --redis on a
// machine without redis-server fails at once, naming the install script.
func TestUpWithRedisWithoutRedisServerSaysHowToInstallIt(t *testing.T) {
	t.Setenv(redisAddrVar, "")
	t.Setenv(redistest.BinEnv, filepath.Join(t.TempDir(), "redis-server"))
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"up", "--redis", "--redis-dir", t.TempDir(),
		"--env", "test", "--config-dir", "../../consul/kv", "--addr", "127.0.0.1:0", "--data-dir", t.TempDir()}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "redis-server") || !strings.Contains(err.Error(), "scripts/test-deps.sh") {
		t.Fatalf("want an error naming redis-server and scripts/test-deps.sh, got %v", err)
	}
	if strings.Contains(stdout.String(), "Keel is up") {
		t.Fatalf("the platform started without Redis:\n%s", stdout.String())
	}
}

// upWithRedis runs `keel up --redis` with args, waits for its banner, which
// must name the Redis it caches in (want, or any loopback address when
// want is empty), reads a demo item twice through the edge, checks that
// Redis holds it and that the second read was a cache hit, then stops
// keel up as Ctrl-C does and returns what it wrote to stderr.
func upWithRedis(t *testing.T, want string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr testkit.Buffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"up", "--redis", "--env", "test", "--config-dir", "../../consul/kv",
			"--addr", "127.0.0.1:0", "--data-dir", t.TempDir()}, args...), &stdout, &stderr)
	}()
	banner := regexp.MustCompile(`edge at (http://\S+)(?s:.*)inventory@(127\.0\.0\.1:\d+)(?s:.*)cache: Redis at (127\.0\.0\.1:\d+) (?s:.*)Ctrl-C stops everything`)
	var m []string
	for deadline := time.Now().Add(30 * time.Second); m == nil; {
		if m = banner.FindStringSubmatch(stdout.String()); m == nil {
			select {
			case err := <-done:
				t.Fatalf("keel up --redis ended: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("no Redis address printed; stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
			}
		}
	}
	edgeURL, inventoryAddr, redisAddr := m[1], m[2], m[3]
	if want != "" && redisAddr != want {
		t.Fatalf("banner names Redis at %s, want %s", redisAddr, want)
	}

	sku := platform.DemoItems()[0].SKU
	for range 2 {
		res, err := http.Post(edgeURL+"/shop.inventory.v1.InventoryService/GetItem", "application/json",
			strings.NewReader(`{"sku":"`+sku+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || !strings.Contains(string(body), sku) {
			t.Fatalf("GetItem %s: %d %s", sku, res.StatusCode, body)
		}
	}

	// The item is in Redis, as the cache writes it: "v" and the value.
	rc, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{redisAddr}, DisableCache: true})
	if err != nil {
		t.Fatalf("connect to the printed Redis %s: %v", redisAddr, err)
	}
	keys, err := rc.Do(ctx, rc.B().Keys().Pattern("*inventory:item:"+sku).Build()).AsStrSlice()
	if err != nil || len(keys) != 1 {
		rc.Close()
		t.Fatalf("keys of item %s in Redis: %q, %v; want one", sku, keys, err)
	}
	val, err := rc.Do(ctx, rc.B().Get().Key(keys[0]).Build()).ToString()
	rc.Close()
	if err != nil || !strings.HasPrefix(val, "v") || !strings.Contains(val, sku) {
		t.Fatalf("Redis %s holds %q, %v; want the cached item", keys[0], val, err)
	}
	// One read loaded the item from the database, the other was a hit:
	// from the inventory's client-side copy or, within a second of the
	// item's creation (which invalidated it), from Redis.
	metrics := testkit.Scrape(t, "http://"+inventoryAddr+"/metrics")
	loads := metrics[`keel_cache_loads_total{cache="inventory:item"}`]
	hits := metrics[`keel_cache_hits_total{cache="inventory:item",tier="local"}`] +
		metrics[`keel_cache_hits_total{cache="inventory:item",tier="redis"}`]
	if loads != 1 || hits != 1 {
		t.Fatalf("two reads of %s: %v loads and %v hits, want 1 and 1", sku, loads, hits)
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
	if want == "" {
		if err := redistest.Ping(redisAddr); err == nil {
			t.Fatalf("the redis-server keel up started still answers on %s after it ended", redisAddr)
		}
	}
	return stderr.String()
}

// TestPickAddrFallsBackWhenTaken: keel up --tracing moves a Jaeger port
// that another program holds.
func TestPickAddrFallsBackWhenTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	taken := l.Addr().String()
	if got := pickAddr(taken, "127.0.0.1:1"); got != "127.0.0.1:1" {
		t.Fatalf("taken %s: got %s", taken, got)
	}
	l.Close()
	if got := pickAddr(taken, "127.0.0.1:1"); got != taken {
		t.Fatalf("free %s: got %s", taken, got)
	}
}

func TestUnknownCommandFails(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"frobnicate"}, &out, &out); err == nil || !strings.Contains(err.Error(), "frobnicate") {
		t.Fatalf("want an error naming the command, got %v", err)
	}
}
