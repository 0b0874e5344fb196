package chaos_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keelplatform/keel/cmd/keel/chaos"
	"github.com/keelplatform/keel/internal/testkit"
)

// TestChaosDrill runs a short drill, seed 1: the whole platform as
// separate processes on loopback, open-loop traffic through the edge
// while every kind of fault is injected once, then the books
// reconciled. Any discrepancy fails it, named in the report.
func TestChaosDrill(t *testing.T) {
	if testing.Short() {
		t.Skip("a 90s drill of the whole platform; not with -short")
	}
	log := &testkit.Buffer{}
	// The bound covers building six binaries on a busy machine (minutes
	// when the gate compiles other packages at the same time).
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	rep, err := chaos.Run(ctx, chaos.Options{
		Duration: 90 * time.Second, Seed: 1, Rate: 4, Instances: 2,
		Recovery: 45 * time.Second, Log: log,
	})
	if err != nil {
		t.Fatalf("drill did not run: %v\n%s", err, log)
	}
	var report strings.Builder
	rep.Print(&report)
	t.Log(log.String())
	t.Log(report.String())
	if err := rep.WriteJSON(filepath.Join(t.TempDir(), "drill.json")); err != nil {
		t.Fatal(err)
	}
	if len(rep.Faults) < 10 {
		t.Errorf("only %d faults injected; the short drill covers every kind", len(rep.Faults))
	}
	for _, f := range rep.Faults {
		if f.Error != "" {
			t.Errorf("fault %s %s: %s", f.Kind, f.Target, f.Error)
		}
	}
	if rep.Books == nil || rep.Books.Orders.Confirmed == 0 {
		t.Errorf("no order confirmed: the drill exercised nothing")
	}
	if !rep.Passed() {
		if path := os.Getenv("KEEL_DRILL_JSON"); path != "" {
			_ = rep.WriteJSON(path)
		}
		t.Fatalf("the drill found %d discrepancies:\n  %s", len(rep.Discrepancies), strings.Join(rep.Discrepancies, "\n  "))
	}
}
