package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/keelplatform/keel/cmd/keel/platform"
	"github.com/keelplatform/keel/internal/logging"
)

func up(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("keel up", flag.ContinueOnError)
	flags.SetOutput(stderr)
	opts := platform.Options{}
	flags.StringVar(&opts.EdgeAddr, "addr", "127.0.0.1:8080", "address of the edge, the platform's one front door")
	flags.StringVar(&opts.DataDir, "data-dir", "data", "directory for each service's SQLite file")
	logLevel := flags.String("log-level", "info", "log level: debug, info, warn or error")
	if err := flags.Parse(args); err != nil {
		return err
	}
	level, err := logging.ParseLevel(*logLevel)
	if err != nil {
		return err
	}
	var levelVar slog.LevelVar
	levelVar.Set(level)
	opts.Logger = logging.New(stderr, &levelVar, "keel")

	began := time.Now()
	p, err := platform.Start(ctx, opts)
	if err != nil {
		return err
	}
	url := "http://" + p.EdgeAddr()
	fmt.Fprintf(stdout, `
Keel is up in %s: edge at %s
  services: %s

Try:
  curl -s -X POST %s/shop.user.v1.UserService/Register \
    -H 'Content-Type: application/json' \
    -d '{"email":"ada@example.com","password":"correct horse","displayName":"Ada"}'

Ctrl-C stops everything.
`, time.Since(began).Round(time.Millisecond), url, strings.Join(p.Services(), ", "), url)
	return p.Wait()
}
