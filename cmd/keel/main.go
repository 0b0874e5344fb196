// Command keel runs and manages a Keel platform.
//
//	keel up       start every service and the edge on loopback
//	keel drill    run the chaos drill (package chaos)
//	keel version  print the version
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "keel:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		usage(stderr)
		return fmt.Errorf("missing command")
	}
	switch args[0] {
	case "up":
		return up(ctx, args[1:], stdout, stderr)
	case "config":
		return configCmd(ctx, args[1:], stdout, stderr)
	case "drill":
		return drill(ctx, args[1:], stdout, stderr)
	case "graph":
		return graph(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "keel", version)
		return nil
	case "help", "-h", "--help":
		usage(stdout)
		return nil
	default:
		usage(stderr)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Usage: keel <command> [flags]

Commands:
  up        start every service and the edge on loopback (Ctrl-C stops them)
  config    push seed config files to Consul KV, or diff them (push|diff --env ENV)
  drill     chaos drill: faults under traffic, then the books reconciled (fails on any discrepancy)
  graph     the services' dependency graph from the contracts (Mermaid, dot or JSON); --check fails on a cycle or a mismatch with the code
  version   print the version

Run "keel <command> -h" for a command's flags.
`)
}
