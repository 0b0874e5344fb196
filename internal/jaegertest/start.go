package jaegertest

import (
	"errors"
	"path/filepath"
	"runtime"
	"sync"
	"time"
)

// TB is the part of testing.TB that [Start] uses; a *testing.T or
// *testing.B is one. (Start takes this rather than testing.TB so that the
// package, which `keel up --tracing` uses too, does not link the testing
// package into the CLI.)
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

var binary struct {
	once sync.Once
	path string
	err  error
}

// Start starts a Jaeger for t on free loopback ports, waits until it is
// ready, and stops it when t ends. Every call starts its own Jaeger, so
// tests may run in parallel; one is ready in well under a second.
//
// The first call in a test binary finds the Jaeger binary ([Binary] with
// scripts/get-jaeger.sh), which may build it (minutes, once per machine;
// the progress goes to t.Logf). Start fails t, never skips it, when there
// is no binary or Jaeger does not start.
func Start(t TB) *Jaeger {
	t.Helper()
	binary.once.Do(func() {
		script, err := Script()
		if err != nil {
			binary.err = err
			return
		}
		binary.path, binary.err = Binary(script, func(line string) { t.Logf("%s", line) })
	})
	if binary.err != nil {
		t.Fatalf("jaegertest: get a jaeger binary: %v", binary.err)
	}
	dir := t.TempDir()
	began := time.Now()
	// A port found free can be taken before Jaeger binds it (parallel
	// tests do this): try again with new ports.
	for attempt := 1; ; attempt++ {
		addrs, err := FreeAddrs()
		var j *Jaeger
		if err == nil {
			j, err = Run(binary.path, dir, addrs)
		}
		if err == nil {
			t.Cleanup(j.Stop)
			t.Logf("jaegertest: jaeger ready in %v: OTLP/HTTP %s, UI and API %s (files in %s)",
				time.Since(began).Round(time.Millisecond), j.OTLPEndpoint(), j.UIURL(), dir)
			return j
		}
		if attempt == 3 {
			t.Fatalf("jaegertest: start jaeger: %v", err)
		}
		t.Logf("jaegertest: start jaeger (attempt %d): %v; retrying on other ports", attempt, err)
	}
}

// Script returns the path of scripts/get-jaeger.sh in the source tree this
// package was compiled from.
func Script() (string, error) {
	_, self, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(self) {
		return "", errors.New("cannot locate jaegertest's source to find scripts/get-jaeger.sh")
	}
	return filepath.Join(filepath.Dir(self), "..", "..", "scripts", "get-jaeger.sh"), nil
}
