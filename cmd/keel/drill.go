package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/keelplatform/keel/cmd/keel/chaos"
)

// drill runs the chaos drill (package chaos): the platform up the
// production way on loopback, open-loop traffic through the edge, faults
// on a seeded schedule, then the books reconciled. It fails on any
// discrepancy.
func drill(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("keel drill", flag.ContinueOnError)
	flags.SetOutput(stderr)
	opts := chaos.Options{Log: stderr}
	flags.DurationVar(&opts.Duration, "duration", 90*time.Second, "how long traffic runs, faults included (start-up and recovery come on top)")
	flags.Uint64Var(&opts.Seed, "seed", 1, "seed of the fault schedule and the traffic: the same seed, the same drill")
	flags.Float64Var(&opts.Rate, "rate", 5, "orders placed per second; product pages, catalogue reads, order views, logins and registrations follow in proportion")
	flags.IntVar(&opts.Instances, "instances", 2, "instances of every service (at least 2)")
	flags.IntVar(&opts.MaxFaults, "max-faults", 0, "at most this many faults (0: as many as fit in the duration)")
	flags.DurationVar(&opts.Recovery, "recovery", 60*time.Second, "how long the platform may take to recover once faults and traffic stop")
	flags.StringVar(&opts.Dir, "keep-dir", "", "keep binaries, logs and data in this directory (default: a temporary one, removed)")
	flags.StringVar(&opts.Sabotage, "sabotage", "", "break the books on purpose before reconciling, to see the drill fail: lost-order, double-charge, lost-account, provider-charge (comma-separated)")
	jsonPath := flags.String("json", "", "also write the report as JSON to this file")
	if err := flags.Parse(args); err != nil {
		return err
	}
	rep, err := chaos.Run(ctx, opts)
	if err != nil {
		return err
	}
	rep.Print(stdout)
	if *jsonPath != "" {
		if err := rep.WriteJSON(*jsonPath); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "keel: report written to %s\n", *jsonPath)
	}
	if !rep.Passed() {
		return fmt.Errorf("drill failed: %d discrepancies", len(rep.Discrepancies))
	}
	return nil
}
