package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"

	"github.com/keelplatform/keel/cmd/keel/platform"
	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/internal/config"
)

// errConfigDiffers makes `keel config diff` exit with status 1 when Consul
// KV and the seed files differ.
var errConfigDiffers = errors.New("consul KV differs from the seed files")

// configValidators checks a process's seed file before `keel config push`
// writes anything, by process name (the file's base name): every process
// of the platform's list ([platform.All]) against its real settings type.
// A file of no known process is only checked for shape: YAML that parses,
// a mapping at the top, every leaf a scalar or a list.
func configValidators() map[string]func(data []byte) error {
	validators := map[string]func(data []byte) error{}
	for _, p := range platform.All() {
		validators[p.Name] = func(b []byte) error { return p.CheckSeed(p.Name+".yaml", b) }
	}
	return validators
}

func configUsage(w io.Writer) {
	fmt.Fprint(w, `Usage:
  keel config push --env ENV [--dir consul/kv]
        check every seed file of ENV, then make Consul KV keel/ENV/ mirror
        them: keys in the files are written (one transaction per service),
        keys only in KV are deleted
  keel config diff --env ENV [--dir consul/kv]
        show how Consul KV keel/ENV/ differs from the seed files; exit
        status 0 when they match, 1 when they differ or on error

ENV is local, test or prod. The agent is CONSUL_HTTP_ADDR (default
127.0.0.1:8500) with the token CONSUL_HTTP_TOKEN.
`)
}

// configCmd runs `keel config push|diff`.
func configCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "push" && args[0] != "diff") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			configUsage(stdout)
			return nil
		}
		configUsage(stderr)
		return errors.New("config: want push or diff")
	}
	sub := args[0]
	flags := flag.NewFlagSet("keel config "+sub, flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() { configUsage(stderr) }
	envName := flags.String("env", "", "environment: local, test or prod (required)")
	dir := flags.String("dir", "consul/kv", "directory of seed files, one subdirectory per environment")
	if err := flags.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("config %s: %w", sub, err)
	}
	if flags.NArg() > 0 {
		return fmt.Errorf("config %s: unexpected arguments %q", sub, flags.Args())
	}
	if *envName == "" {
		return fmt.Errorf("config %s: --env is required (local, test or prod)", sub)
	}
	env, err := config.ParseEnv(*envName)
	if err != nil {
		return fmt.Errorf("config %s: %w", sub, err)
	}
	client, err := consul.NewClient(consul.ConfigFromEnv())
	if err != nil {
		return fmt.Errorf("config %s: %w", sub, err)
	}
	files := filepath.Join(*dir, string(env))
	kv := "Consul KV keel/" + string(env) + "/"
	switch sub {
	case "push":
		var opts []consul.PushOption
		opts = append(opts, configValidatorOptions()...)
		changes, err := consul.Push(ctx, client, env, *dir, opts...)
		if err != nil {
			return fmt.Errorf("config push: %w", err)
		}
		printChanges(stdout, changes)
		if len(changes) == 0 {
			fmt.Fprintf(stdout, "%s already matches %s\n", kv, files)
			return nil
		}
		fmt.Fprintf(stdout, "pushed %s to %s: %d %s\n", files, kv, len(changes), plural(len(changes), "change", "changes"))
		return nil
	default:
		changes, err := consul.Diff(ctx, client, env, *dir)
		if err != nil {
			return fmt.Errorf("config diff: %w", err)
		}
		printChanges(stdout, changes)
		if len(changes) == 0 {
			fmt.Fprintf(stdout, "%s matches %s\n", kv, files)
			return nil
		}
		fmt.Fprintf(stdout, "%d %s between %s and %s (keel config push --env %s makes KV match the files)\n",
			len(changes), plural(len(changes), "key differs", "keys differ"), files, kv, env)
		return errConfigDiffers
	}
}

// printChanges writes one line per change, seen from KV towards the files:
// "+ key = value" for a key only in the files (push adds it), "- key =
// value" for one only in KV (push deletes it), and "~ key: old -> new" for
// one whose value differs (push writes the file's value).
func printChanges(w io.Writer, changes []consul.Change) {
	for _, c := range changes {
		switch c.Kind {
		case consul.OnlyInFile:
			fmt.Fprintf(w, "+ %s = %s\n", c.Key, c.File)
		case consul.OnlyInKV:
			fmt.Fprintf(w, "- %s = %s\n", c.Key, c.KV)
		default:
			fmt.Fprintf(w, "~ %s: %s -> %s\n", c.Key, c.KV, c.File)
		}
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
