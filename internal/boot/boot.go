// Package boot starts a Keel process the same way everywhere: in its own
// binary, under `keel up`, and in tests. It builds the process's typed
// configuration from its layers and keeps it current, sets up logging,
// metrics and tracing, connects discovery, gives the process its peers
// under the call policy, and serves: the instance registers once it
// listens and deregisters first when it stops, before it drains. The
// process's Prometheus registry holds the keel_config_* metrics, and a
// process that mounts HTTP handlers ([AdminProcess]) serves the
// configuration's status at [ConfigStatusPath].
//
// Where discovery and configuration live is a [Backend]: [Static] is the
// embedded one (an in-process registry, files only); the consul package
// provides Consul.
package boot

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/client"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/depgraph"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/logging"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/telemetry"
)

// Backend is where processes find each other and their configuration.
type Backend interface {
	// Registry records the instances this process serves.
	Registry() discovery.Registry
	// Resolver finds the instances of peers.
	Resolver() discovery.Resolver
	// ConfigSource is the KV layer of service's configuration in env, or
	// nil when the backend has none.
	ConfigSource(env config.Env, service string) config.Source
	// Close stops the backend's watches and background work. It does not
	// deregister anything.
	Close() error
}

// Static is the embedded backend: the static registry is both registry and
// resolver, and configuration comes from files and the environment only.
type Static struct {
	// Discovery is the shared in-process registry.
	Discovery *discovery.Static
}

// Registry implements [Backend].
func (s Static) Registry() discovery.Registry { return s.Discovery }

// Resolver implements [Backend].
func (s Static) Resolver() discovery.Resolver { return s.Discovery }

// ConfigSource implements [Backend]: the static backend has no KV layer.
func (s Static) ConfigSource(config.Env, string) config.Source { return nil }

// Close implements [Backend].
func (s Static) Close() error { return nil }

// Process is a server a [Service] builds: a service or the edge.
type Process interface {
	// Listen binds the process's address.
	Listen() error
	// Close releases what the process holds (listeners, stores) when it
	// will not serve, because its start failed after it was built.
	Close() error
	// Addr is the bound host:port.
	Addr() string
	// OnStop registers a function to run first when shutdown starts.
	OnStop(func(context.Context))
	// Serve answers calls until ctx is done, then drains.
	Serve(ctx context.Context) error
}

// Settings is what every settings struct has: the common process settings
// (embed [config.Process] inline to get them).
type Settings interface {
	ProcessConfig() config.Process
}

// Env is what a service gets to build its process.
type Env[T Settings] struct {
	// Config holds the settings in effect and notifies changes.
	Config *config.Watcher[T]
	// Logger is the process's logger; its level follows log_level.
	Logger *slog.Logger
	// Resolver finds peers by logical name, for internal/client.
	Resolver discovery.Resolver
	// Secret reads a secret (a signing key, a DSN password) that never
	// belongs in configuration files or KV: environment variables by
	// default.
	Secret func(name string) (string, bool)
	// Metrics is the process's Prometheus registry, served at /metrics by
	// the server [Env.Server] builds.
	Metrics *prometheus.Registry
	// Telemetry is the process's tracing (off unless configured).
	Telemetry *telemetry.Telemetry
	// Peers calls other services under the call policy of the settings'
	// calls section, kept current as it changes, passing on the identity
	// of the call being handled.
	Peers *client.Peers
	// Identities verifies the identity the edge vouches for on the calls
	// the process answers, and passes it on to peers; keyed by
	// KEEL_IDENTITY_KEY (none, in local and test only: no identity is
	// believed; elsewhere [Start] refuses to start without it).
	Identities *auth.Identities
}

// Server returns a server configured by the process's common settings
// (listener, limits, shutdown, load shedding, the last kept current as
// the configuration changes), registering its metrics in [Env.Metrics]
// and tracing with [Env.Telemetry]; opts add to it.
func (e Env[T]) Server(opts ...server.Option) *server.Server {
	opts = append([]server.Option{
		server.WithRegistry(e.Metrics),
		server.WithTelemetry(e.Telemetry),
		server.WithInterceptors(e.Identities),
	}, opts...)
	srv := server.New(server.ConfigFrom(e.Config.Current().ProcessConfig()), e.Logger, opts...)
	e.Config.OnChange(func(_, cfg T) {
		srv.SetShedding(cfg.ProcessConfig().Shedding)
		srv.SetMaxTimeout(cfg.ProcessConfig().Server.MaxTimeout)
	})
	return srv
}

// Service describes a process to boot.
type Service[T Settings] struct {
	// Name is the logical name the process registers under, e.g. "user".
	Name string
	// Meta describes instances in discovery: contract package, version.
	Meta map[string]string
	// Defaults are the built-in settings, the lowest configuration layer.
	Defaults T
	// Build makes the process from its environment. It must not listen.
	Build func(ctx context.Context, env Env[T]) (Process, error)
}

// Options say where a process runs. The zero value of each field means its
// documented default.
type Options struct {
	// Env selects the configuration environment. Default: KEEL_ENV, or local.
	Env config.Env
	// ConfigDir holds the seed files <env>/<service>.yaml. Default:
	// KEEL_CONFIG_DIR, or "consul/kv". A missing directory leaves out the
	// file layer, with a warning.
	ConfigDir string
	// Backend is discovery and configuration. Default: a new [Static].
	Backend Backend
	// Log receives the JSON logs. Default os.Stderr.
	Log io.Writer
	// LookupEnv reads environment variables, for the environment layer of
	// configuration and for secrets. Default os.LookupEnv.
	LookupEnv func(string) (string, bool)
}

// Running is a booted process.
type Running struct {
	// Instance is how the process is registered in discovery.
	Instance discovery.Instance
	done     chan struct{}
	err      error
}

// Wait blocks until the process has stopped and returns why.
func (r *Running) Wait() error {
	<-r.done
	return r.err
}

// Start builds, listens and registers the process, then serves it in the
// background until ctx is done. It returns once the process listens.
// Outside the local and test environments it refuses to start a process
// without an identity key (KEEL_IDENTITY_KEY), which would answer anyone.
func Start[T Settings](ctx context.Context, svc Service[T], opts Options) (*Running, error) {
	if opts.LookupEnv == nil {
		opts.LookupEnv = os.LookupEnv
	}
	if opts.Log == nil {
		opts.Log = os.Stderr
	}
	if opts.Env == "" {
		v, _ := opts.LookupEnv(config.EnvVar)
		env, err := config.ParseEnv(v)
		if err != nil {
			return nil, err
		}
		opts.Env = env
	}
	if opts.ConfigDir == "" {
		opts.ConfigDir = "consul/kv"
		if v, ok := opts.LookupEnv("KEEL_CONFIG_DIR"); ok && v != "" {
			opts.ConfigDir = v
		}
	}
	if opts.Backend == nil {
		opts.Backend = Static{Discovery: discovery.NewStatic()}
	}

	var level slog.LevelVar
	logger := logging.New(opts.Log, &level, svc.Name)
	dir := opts.ConfigDir
	if _, err := os.Stat(dir); err != nil {
		logger.Warn("no configuration files; using built-in defaults, KV and environment", slog.String("dir", dir))
		dir = ""
	}
	source := opts.Backend.ConfigSource(opts.Env, svc.Name)
	watcher, err := config.Start(ctx, config.Options[T]{
		Service:   svc.Name,
		Env:       opts.Env,
		Dir:       dir,
		Source:    source,
		Defaults:  svc.Defaults,
		Logger:    logger,
		LookupEnv: opts.LookupEnv,
	})
	if err != nil {
		return nil, fmt.Errorf("%s: configuration: %w", svc.Name, err)
	}
	config.FollowLogLevel(watcher, &level)

	registry := prometheus.NewRegistry()
	tel, err := telemetry.New(svc.Name, opts.LookupEnv)
	if err != nil {
		watcher.Close()
		return nil, fmt.Errorf("%s: %w", svc.Name, err)
	}
	// Everything started from here on is released on a failed start.
	var proc Process
	fail := func(err error) (*Running, error) {
		if proc != nil {
			if cerr := proc.Close(); cerr != nil {
				logger.Warn("release after a failed start", slog.String("error", cerr.Error()))
			}
		}
		shutdownTelemetry(tel, logger)
		watcher.Close()
		return nil, fmt.Errorf("%s: %w", svc.Name, err)
	}
	identityKey, _ := opts.LookupEnv(auth.IdentityKeyVar)
	identities, err := auth.NewIdentities([]byte(identityKey), svc.Name)
	if err != nil {
		return fail(err)
	}
	if !identities.Keyed() {
		if !keylessAllowed(opts.Env) {
			return fail(errNoIdentityKey(opts.Env))
		}
		logger.Warn(auth.IdentityKeyVar + " is not set: this process believes no identity and requires none, so anyone who reaches it may call every method; set the environment's identity key wherever it takes traffic")
	}
	calls := watcher.Current().ProcessConfig().Calls
	declared, err := declaredPeers(svc.Meta["services"])
	if err != nil {
		return fail(err)
	}
	peers, err := client.New(opts.Backend.Resolver(), client.Options{
		Calls: &calls, Metrics: registry, Telemetry: tel,
		Interceptors: []connect.Interceptor{identities},
		Declared:     declared,
	})
	if err != nil {
		return fail(err)
	}
	watcher.OnChange(func(_, cfg T) { peers.SetSettings(cfg.ProcessConfig().Calls) })
	if err := registry.Register(newConfigCollector(watcher.Status, source != nil)); err != nil {
		return fail(fmt.Errorf("register configuration metrics: %w", err))
	}

	proc, err = svc.Build(ctx, Env[T]{
		Config:     watcher,
		Logger:     logger,
		Resolver:   opts.Backend.Resolver(),
		Secret:     opts.LookupEnv,
		Metrics:    registry,
		Telemetry:  tel,
		Peers:      peers,
		Identities: identities,
	})
	if err != nil {
		proc = nil // a failed Build releases what it made itself
		return fail(err)
	}
	if err := peers.Err(); err != nil {
		return fail(err)
	}
	if declared != nil {
		for _, peer := range declared.Peers {
			if !slices.Contains(peers.Connected(), peer) {
				logger.Warn("the contract declares a peer the service never calls; drop it from depends_on", slog.String("contract", declared.Contract), slog.String("peer", peer))
			}
		}
	}
	if h, ok := proc.(AdminProcess); ok {
		h.HandleAdmin("GET "+ConfigStatusPath, configStatusHandler(watcher.Status))
	}
	if shutdowner, ok := proc.(interface {
		SetShutdown(drainDelay, shutdownTimeout time.Duration)
	}); ok {
		apply := func(cfg T) {
			s := cfg.ProcessConfig().Server
			shutdowner.SetShutdown(s.DrainDelay, s.ShutdownTimeout)
		}
		apply(watcher.Current())
		watcher.OnChange(func(_, cfg T) { apply(cfg) })
	}
	if capper, ok := proc.(interface{ SetMaxTimeout(time.Duration) }); ok {
		capper.SetMaxTimeout(watcher.Current().ProcessConfig().Server.MaxTimeout)
		watcher.OnChange(func(_, cfg T) { capper.SetMaxTimeout(cfg.ProcessConfig().Server.MaxTimeout) })
	}
	if err := proc.Listen(); err != nil {
		return fail(err)
	}

	inst := discovery.Instance{
		ID:      fmt.Sprintf("%s-%s", svc.Name, strings.ReplaceAll(proc.Addr(), ":", "-")),
		Service: svc.Name,
		Addr:    proc.Addr(),
		Tags:    []string{"keel", "connect", "grpc", "grpc-web"},
		Meta: map[string]string{
			"env":       string(opts.Env),
			"version":   instanceVersion(opts.LookupEnv),
			"protocols": "connect,grpc,grpc-web",
		},
	}
	for k, v := range svc.Meta {
		inst.Meta[k] = v
	}
	instances := opts.Backend.Registry()
	if err := instances.Register(ctx, inst); err != nil {
		return fail(fmt.Errorf("register: %w", err))
	}
	proc.OnStop(func(ctx context.Context) {
		if err := instances.Deregister(ctx, inst.ID); err != nil {
			logger.Warn("deregister failed", slog.String("id", inst.ID), slog.String("error", err.Error()))
			return
		}
		logger.Info("deregistered", slog.String("id", inst.ID))
	})

	r := &Running{Instance: inst, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		defer watcher.Close()
		r.err = proc.Serve(ctx)
		peers.CloseIdleConnections()
		shutdownTelemetry(tel, logger)
	}()
	logger.Info("started", slog.String("env", string(opts.Env)), slog.String("addr", inst.Addr), slog.String("id", inst.ID))
	return r, nil
}

// keylessAllowed reports whether a process of env may run without an
// identity key, believing no identity and requiring none: on a
// developer's machine and in tests only. Anywhere else it would let
// anyone who reaches it call every method.
func keylessAllowed(env config.Env) bool {
	return env == config.EnvLocal || env == config.EnvTest
}

// errNoIdentityKey is why a process of env, where an identity key is
// required, does not start without one.
func errNoIdentityKey(env config.Env) error {
	return fmt.Errorf("%s is not set: in the %s environment every process needs the environment's identity key, at least %d bytes, the same for the edge and every service (it runs without one only with %s=%s or %s); set %s",
		auth.IdentityKeyVar, env, auth.MinKeyLen, config.EnvVar, config.EnvLocal, config.EnvTest, auth.IdentityKeyVar)
}

// shutdownTelemetry exports the spans still buffered, within a bound.
func shutdownTelemetry(tel *telemetry.Telemetry, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		logger.Warn("telemetry shutdown", slog.String("error", err.Error()))
	}
}

// Run starts the process and blocks until it stops.
func Run[T Settings](ctx context.Context, svc Service[T], opts Options) error {
	r, err := Start(ctx, svc, opts)
	if err != nil {
		return err
	}
	return r.Wait()
}

// VersionVar names the environment variable that sets the "version" an
// instance carries in discovery metadata, which the edge's canary
// routing selects instances by; without it, the binary's build version.
const VersionVar = "KEEL_VERSION"

// instanceVersion is the version an instance registers with:
// KEEL_VERSION, else the build's.
func instanceVersion(lookupEnv func(string) (string, bool)) string {
	if v, ok := lookupEnv(VersionVar); ok && v != "" {
		return v
	}
	return buildVersion()
}

// buildVersion is the VCS revision the binary was built from, or "dev".
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return s.Value[:12]
		}
	}
	return "dev"
}

// declaredPeers reads what the contract a process serves (its discovery
// metadata "services", the protobuf service's full name) declares in
// depends_on, by the logical names that serve those services; nil for a
// process that serves no contract of its own (the edge).
func declaredPeers(contract string) (*client.Declared, error) {
	if contract == "" {
		return nil, nil
	}
	deps, err := depgraph.DependsOn(contract)
	if err != nil {
		return nil, fmt.Errorf("read the peers its contract declares: %w", err)
	}
	d := &client.Declared{Contract: contract}
	for _, dep := range deps {
		name, ok := discovery.ServiceName(dep)
		if !ok {
			return nil, fmt.Errorf("%s depends on %q, which is not a fully qualified protobuf service", contract, dep)
		}
		d.Peers = append(d.Peers, name)
	}
	return d, nil
}
