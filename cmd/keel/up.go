package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/keelplatform/keel/cmd/keel/platform"
	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/internal/config"
)

func up(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("keel up", flag.ContinueOnError)
	flags.SetOutput(stderr)
	opts := platform.Options{Log: stderr}
	flags.StringVar(&opts.EdgeAddr, "addr", "", "address of the edge, the platform's front door (default: server/addr of consul/kv/ENV/edge.yaml, 127.0.0.1:8080 in local)")
	flags.StringVar(&opts.DataDir, "data-dir", "", "directory of each service's SQLite file (default: database/data_dir of the service's settings, data in local)")
	flags.StringVar(&opts.ConfigDir, "config-dir", "consul/kv", "directory of the configuration files <env>/<service>.yaml")
	envName := flags.String("env", os.Getenv(config.EnvVar), "configuration environment: local, test or prod (default local)")
	useConsul := flags.Bool("consul", false, "register in Consul and take configuration from Consul KV: the agent at CONSUL_HTTP_ADDR, or a dev agent started by consul/agent.sh")
	consulDir := flags.String("consul-dir", ".keel/consul", "where the dev agent started by --consul keeps its files")
	if err := flags.Parse(args); err != nil {
		return err
	}
	env, err := config.ParseEnv(*envName)
	if err != nil {
		return err
	}
	opts.Env = env

	began := time.Now()
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

Try:
  curl -s -X POST %s/shop.user.v1.UserService/Register \
    -H 'Content-Type: application/json' \
    -d '{"email":"ada@example.com","password":"correct horse","displayName":"Ada"}'

Ctrl-C stops everything.
`, time.Since(began).Round(time.Millisecond), url, env, discovery, strings.Join(p.Services(), ", "), url)
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
