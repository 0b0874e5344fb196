package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keelplatform/keel/cmd/keel/platform"
	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/internal/cache/redistest"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/jaegertest"
)

func up(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("keel up", flag.ContinueOnError)
	flags.SetOutput(stderr)
	opts := platform.Options{Log: stderr, Demo: true}
	flags.StringVar(&opts.EdgeAddr, "addr", "", "address of the edge, the platform's front door (default: server/addr of consul/kv/ENV/edge.yaml, 127.0.0.1:8080 in local)")
	flags.StringVar(&opts.DataDir, "data-dir", "", "directory of each service's SQLite file (default: database/data_dir of the service's settings, data in local)")
	flags.StringVar(&opts.ConfigDir, "config-dir", "consul/kv", "directory of the configuration files <env>/<service>.yaml")
	envName := flags.String("env", os.Getenv(config.EnvVar), "configuration environment: local, test or prod (default local)")
	useConsul := flags.Bool("consul", false, "register in Consul and take configuration from Consul KV: the agent at CONSUL_HTTP_ADDR, or a dev agent started by consul/agent.sh")
	consulDir := flags.String("consul-dir", ".keel/consul", "where the dev agent started by --consul keeps its files")
	tracing := flags.Bool("tracing", false, "run a local Jaeger (UI on 127.0.0.1:16686, OTLP/HTTP on 127.0.0.1:4318 unless taken) and send every process's traces to it")
	jaegerDir := flags.String("jaeger-dir", ".keel/jaeger", "where the Jaeger started by --tracing keeps its configuration and log")
	useRedis := flags.Bool("redis", false, "cache (and the edge's rate limits) in Redis: the server at "+redisAddrVar+", or a local redis-server (on 127.0.0.1:6379 unless taken, nothing persisted) run until keel up ends")
	redisDir := flags.String("redis-dir", ".keel/redis", "where the redis-server started by --redis keeps its log and pid file")
	if err := flags.Parse(args); err != nil {
		return err
	}
	env, err := config.ParseEnv(*envName)
	if err != nil {
		return err
	}
	opts.Env = env

	began := time.Now()
	tracingLine := ""
	if *tracing {
		// The script sits at the root of the tree the configuration files
		// belong to: <root>/consul/kv -> <root>/scripts/get-jaeger.sh.
		root := filepath.Dir(filepath.Dir(filepath.Clean(opts.ConfigDir)))
		j, err := startJaeger(filepath.Join(root, "scripts", "get-jaeger.sh"), *jaegerDir, stderr)
		if err != nil {
			return err
		}
		// Deferred first, so it runs last: the processes have stopped, and
		// flushed their spans, before Jaeger does.
		defer func() {
			j.Stop()
			fmt.Fprintf(stderr, "keel: Jaeger stopped\n")
		}()
		defer setTracingEnv(j, stderr)()
		tracingLine = fmt.Sprintf("  tracing: Jaeger UI at %s (OTLP/HTTP at %s)\n", j.UIURL(), j.OTLPEndpoint())
	}
	cacheLine := ""
	if *useRedis {
		if addr := os.Getenv(redisAddrVar); addr != "" {
			// The services read it themselves, as every setting's
			// variable; the edge's rate limits are pointed at it too.
			opts.RedisAddr = addr
			cacheLine = fmt.Sprintf("  cache: Redis at %s (%s)\n", addr, redisAddrVar)
		} else {
			// The install script sits at the root of the tree the
			// configuration files belong to: <root>/scripts/test-deps.sh.
			root := filepath.Dir(filepath.Dir(filepath.Clean(opts.ConfigDir)))
			r, err := startRedis(filepath.Join(root, "scripts", "test-deps.sh"), *redisDir, stderr)
			if err != nil {
				return err
			}
			// Deferred before the platform starts, so it runs once every
			// process has stopped using Redis.
			defer func() {
				r.Stop()
				fmt.Fprintf(stderr, "keel: redis-server stopped\n")
			}()
			opts.RedisAddr = r.Addr()
			cacheLine = fmt.Sprintf("  cache: Redis at %s (redis-server, files in %s)\n", r.Addr(), *redisDir)
		}
	}
	discovery := "embedded static registry"
	if *useConsul {
		// The agent script sits beside the configuration files: consul/agent.sh.
		script := filepath.Join(filepath.Dir(filepath.Clean(opts.ConfigDir)), "agent.sh")
		client, addr, stopAgent, err := connectConsul(ctx, script, *consulDir, stderr)
		if err != nil {
			return err
		}
		defer stopAgent()
		changes, err := consul.Push(ctx, client, env, opts.ConfigDir, configValidatorOptions()...)
		if err != nil {
			return fmt.Errorf("push %s configuration to Consul KV: %w", env, err)
		}
		fmt.Fprintf(stderr, "keel: pushed %s configuration to Consul KV (%d keys changed)\n", env, len(changes))
		backend := consul.NewBackend(client, slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
		defer backend.Close()
		opts.Backend = backend
		discovery = "Consul at " + addr // never the token
	}

	p, err := platform.Start(ctx, opts)
	if err != nil {
		return err
	}
	url := "http://" + p.EdgeAddr()
	fmt.Fprintf(stdout, `
Keel is up in %s: edge at %s
  environment: %s, discovery: %s
  services: %s
%s%s
Try:
  curl -s -X POST %s/shop.user.v1.UserService/Register \
    -H 'Content-Type: application/json' \
    -d '{"email":"ada@example.com","password":"correct horse","displayName":"Ada"}'

Ctrl-C stops everything.
`, time.Since(began).Round(time.Millisecond), url, env, discovery, strings.Join(p.Services(), ", "), cacheLine, tracingLine, url)
	return p.Wait()
}

func configValidatorOptions() []consul.PushOption {
	var opts []consul.PushOption
	for svc, validate := range configValidators() {
		opts = append(opts, consul.WithValidator(svc, validate))
	}
	return opts
}

// connectConsul returns a client for the agent at CONSUL_HTTP_ADDR or,
// when that is unset, for a dev agent it starts with consul/agent.sh (and
// stops again when keel up ends).
func connectConsul(ctx context.Context, script, dir string, stderr io.Writer) (*api.Client, string, func(), error) {
	if os.Getenv("CONSUL_HTTP_ADDR") != "" {
		cfg := consul.ConfigFromEnv()
		client, err := consul.NewClient(cfg)
		return client, cfg.Addr, func() {}, err
	}
	fmt.Fprintf(stderr, "keel: starting a Consul dev agent (files in %s)\n", dir)
	start := exec.CommandContext(ctx, script, "start", dir)
	start.Stderr = stderr
	out, err := start.Output()
	if err != nil {
		return nil, "", nil, fmt.Errorf("start a Consul dev agent with %s: %w", script, err)
	}
	cfg := consul.Config{}
	scanner := bufio.NewScanner(strings.NewReader(string(out)))
	for scanner.Scan() {
		key, value, _ := strings.Cut(scanner.Text(), "=")
		switch key {
		case "CONSUL_HTTP_ADDR":
			cfg.Addr = value
		case "CONSUL_HTTP_TOKEN":
			cfg.Token = value
		}
	}
	stop := func() {
		cmd := exec.Command(script, "stop", dir)
		cmd.Stderr = stderr
		_ = cmd.Run()
	}
	if cfg.Addr == "" {
		stop()
		return nil, "", nil, fmt.Errorf("%s printed no CONSUL_HTTP_ADDR", script)
	}
	client, err := consul.NewClient(cfg)
	if err != nil {
		stop()
		return nil, "", nil, err
	}
	return client, cfg.Addr, stop, nil
}

// redisAddrVar is the variable of the services' cache/redis_addr
// setting: when it is set, --redis uses that Redis and starts none.
const redisAddrVar = "KEEL_CACHE_REDIS_ADDR"

// redisAddr is where --redis runs redis-server when the port is free:
// Redis's usual port, which redis-cli and other tools expect.
const redisAddr = "127.0.0.1:6379"

// startRedis starts redis-server for keel up --redis: the binary
// redistest.Binary finds, on 127.0.0.1:6379 if free and a free port
// otherwise, nothing persisted, its log and pid file in dir. When there is
// no redis-server it says to run installScript (scripts/test-deps.sh).
func startRedis(installScript, dir string, stderr io.Writer) (*redistest.Redis, error) {
	bin, err := redistest.Binary()
	if err != nil {
		return nil, fmt.Errorf("--redis needs redis-server (Redis 7 or newer): %w; install it with %s (as root: it runs apt-get install redis-server), or set %s to a redis-server binary",
			err, installScript, redistest.BinEnv)
	}
	fallback, err := freeLoopbackAddr()
	if err != nil {
		return nil, err
	}
	addr := pickAddr(redisAddr, fallback)
	if addr != redisAddr {
		fmt.Fprintf(stderr, "keel: %s is taken; redis-server is on %s instead\n", redisAddr, addr)
	}
	fmt.Fprintf(stderr, "keel: starting redis-server on %s (files in %s)\n", addr, dir)
	r, err := redistest.Run(bin, dir, addr)
	if err != nil {
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	fmt.Fprintf(stderr, "keel: redis-server is up (pid %d)\n", r.Pid())
	return r, nil
}

// freeLoopbackAddr returns a host:port on 127.0.0.1 that is free now.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// Jaeger's ports for a developer: its usual ones, which a browser bookmark
// and an exporter's default (OTLP/HTTP on localhost:4318) expect.
const (
	jaegerUIAddr       = "127.0.0.1:16686"
	jaegerOTLPHTTPAddr = "127.0.0.1:4318"
	jaegerOTLPGRPCAddr = "127.0.0.1:4317"
	jaegerQueryGRPC    = "127.0.0.1:16685"
)

// startJaeger starts Jaeger for keel up --tracing: the binary from
// KEEL_JAEGER_BIN or script (scripts/get-jaeger.sh, which builds it the
// first time), its files in dir, on Jaeger's usual ports where they are
// free and on free ones where they are not.
func startJaeger(script, dir string, stderr io.Writer) (*jaegertest.Jaeger, error) {
	bin, err := jaegertest.Binary(script, func(line string) { fmt.Fprintln(stderr, line) })
	if err != nil {
		return nil, fmt.Errorf("get a Jaeger binary: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	addrs, err := jaegertest.FreeAddrs()
	if err != nil {
		return nil, err
	}
	for _, a := range []struct {
		name      string
		preferred string
		addr      *string
	}{
		{"UI", jaegerUIAddr, &addrs.QueryHTTP},
		{"OTLP/HTTP", jaegerOTLPHTTPAddr, &addrs.OTLPHTTP},
		{"OTLP/gRPC", jaegerOTLPGRPCAddr, &addrs.OTLPGRPC},
		{"query gRPC", jaegerQueryGRPC, &addrs.QueryGRPC},
	} {
		if *a.addr = pickAddr(a.preferred, *a.addr); *a.addr != a.preferred {
			fmt.Fprintf(stderr, "keel: %s is taken; Jaeger's %s is on %s instead\n", a.preferred, a.name, *a.addr)
		}
	}
	fmt.Fprintf(stderr, "keel: starting Jaeger %s (files in %s)\n", jaegertest.Version, dir)
	j, err := jaegertest.Run(bin, dir, addrs)
	if err != nil {
		return nil, fmt.Errorf("start Jaeger: %w", err)
	}
	fmt.Fprintf(stderr, "keel: Jaeger is up (pid %d)\n", j.Pid())
	return j, nil
}

// pickAddr returns preferred if it can be listened on now, else fallback.
func pickAddr(preferred, fallback string) string {
	l, err := net.Listen("tcp", preferred)
	if err != nil {
		return fallback
	}
	_ = l.Close()
	return preferred
}

// tracingSampler is the sampler keel up --tracing asks for unless
// OTEL_TRACES_SAMPLER says otherwise: every trace a process starts is
// kept, and a process follows its caller's decision.
const tracingSampler = "parentbased_always_on"

// setTracingEnv points the OpenTelemetry SDK of every process keel up
// boots at Jaeger, through the standard variables: the processes run in
// this one, whose environment they read. It returns a func that restores
// the environment as it was.
func setTracingEnv(j *jaegertest.Jaeger, stderr io.Writer) (restore func()) {
	set := map[string]string{
		// Signal-specific settings win over the generic ones: drop them, or
		// the traces would not reach this Jaeger.
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "",
	}
	for _, kv := range j.Env() { // OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL
		name, value, _ := strings.Cut(kv, "=")
		set[name] = value
	}
	if os.Getenv("OTEL_TRACES_SAMPLER") == "" {
		set["OTEL_TRACES_SAMPLER"] = tracingSampler
	}
	type saved struct {
		value string
		ok    bool
	}
	old := map[string]saved{}
	for name, value := range set {
		prev, ok := os.LookupEnv(name)
		old[name] = saved{prev, ok}
		if prev != "" && prev != value {
			fmt.Fprintf(stderr, "keel: --tracing replaces %s=%s\n", name, prev)
		}
		if value == "" {
			_ = os.Unsetenv(name)
		} else {
			_ = os.Setenv(name, value)
		}
	}
	return func() {
		for name, s := range old {
			if s.ok {
				_ = os.Setenv(name, s.value)
			} else {
				_ = os.Unsetenv(name)
			}
		}
	}
}
