// Package drill kills the process at a named point of its work, for crash
// tests that run a service as a real process and check what another run
// of it recovers. A service names its points (the payment service's
// "charge:after-provider", the order saga's boundaries) and calls the
// func [At] returns at each; the process dies with SIGKILL at the one
// the test chose, usually through the [Var] environment variable:
//
//	crash := drill.At(os.Getenv(drill.Var))
//	...
//	crash("charge:after-provider") // nothing happens unless chosen
//
// A process started without the variable pays one nil check per point.
package drill

import (
	"os"
)

// Var is the environment variable that names the point at which a
// service binary kills itself, for crash tests. Unset in production.
const Var = "KEEL_CRASH_AT"

// At returns a func that kills the process (SIGKILL on Unix: no deferred
// calls, no flushing, as a power cut would) when called with the point
// name, and does nothing when called with another. It returns a func
// that never kills when name is empty.
func At(name string) func(point string) {
	if name == "" {
		return func(string) {}
	}
	return func(point string) {
		if point == name {
			Kill()
		}
	}
}

// Kill kills the process at once with SIGKILL and does not return.
func Kill() {
	if self, err := os.FindProcess(os.Getpid()); err == nil {
		_ = self.Kill()
	}
	select {} // the signal is on its way
}
