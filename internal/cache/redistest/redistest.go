// Package redistest runs a real redis-server on loopback: a throwaway one
// for each test that asks ([Start]), and the one `keel up --redis` runs
// ([Run]).
//
// Either way the server keeps nothing on disk (--save "" --appendonly
// no) and is ready when Start or Run returns: it answers PING, as the
// process that was started. [Start] picks a free loopback port and stops
// the server when the test ends; every call starts its own server, so
// tests may run in parallel, and a server starts in milliseconds.
// [Server.Kill] and [Server.Restart] let a test take Redis away and bring
// it back, empty, on the same port; [Server.Pause] and [Server.Resume]
// make it hang.
//
// The binary is KEEL_REDIS_SERVER when set, else /usr/bin/redis-server
// (Debian's package, Redis 7: client-side caching needs RESP3 and CLIENT
// TRACKING), else redis-server on PATH ([Binary]). When there is none,
// Start fails the test, never skips it, saying how to install it
// (scripts/test-deps.sh does). The server runs in its own process group,
// and should its parent die without stopping it, a small watchdog
// process kills it (and, for a test's server, removes its files) within a
// second.
package redistest

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"syscall"
)

// installHint is shown when redis-server is missing.
const installHint = `
**********************************************************************
redistest: redis-server was not found, so this test FAILS. Tests against
a real Redis need it (7.0 or newer); install it with the script the gate
runs, from the repository root (as root: it uses apt-get):
    ./scripts/test-deps.sh
or by hand:
    apt-get install redis-server      (Debian/Ubuntu)
It is looked up in $KEEL_REDIS_SERVER, /usr/bin/redis-server and on PATH.
**********************************************************************`

// TB is the part of testing.TB that [Start] uses; a *testing.T or
// *testing.B is one. (Start takes this rather than testing.TB so that the
// package, which `keel up --redis` uses too, does not link the testing
// package into the CLI.)
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// Server is a running redis-server owned by one test. Its methods are
// safe for concurrent use.
type Server struct {
	t    TB
	bin  string
	dir  string // redis.log, redis.pid
	addr string

	mu     sync.Mutex
	redis  *Redis // nil while killed
	paused bool
}

// Start starts a redis-server for t and stops it when t ends. It fails
// t, with a message saying how to install redis-server, when there is
// none, and on any other error.
func Start(t TB) *Server {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("%s\n(%v)", installHint, err)
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir()}
	t.Cleanup(s.stop)
	// A free port can be taken by someone else between our probe and the
	// server's bind: try a few.
	for attempt := 1; ; attempt++ {
		s.addr, err = freeAddr()
		if err == nil {
			err = s.start()
		}
		if err == nil {
			return s
		}
		if attempt == 3 {
			t.Fatalf("redistest: start redis-server: %v", err)
		}
	}
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Kill kills the server with SIGKILL, as a crash would, and waits until
// it is gone.
func (s *Server) Kill() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kill()
}

// Restart starts a new, empty server on the same port, after [Server.Kill]
// or while it runs (it is killed first), and waits until it answers.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	s.kill()
	s.mu.Unlock()
	if err := s.start(); err != nil {
		s.t.Fatalf("redistest: restart redis-server: %v", err)
	}
}

// Pause stops the server's process (SIGSTOP): it keeps its connections
// and accepts new ones but answers nothing, like a hung server, until
// [Server.Resume].
func (s *Server) Pause() { s.signal(syscall.SIGSTOP, true) }

// Resume lets a paused server go on (SIGCONT).
func (s *Server) Resume() { s.signal(syscall.SIGCONT, false) }

func (s *Server) signal(sig syscall.Signal, paused bool) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.redis == nil {
		s.t.Fatalf("redistest: %v: the server is not running", sig)
	}
	if err := s.redis.signal(sig); err != nil {
		s.t.Fatalf("redistest: %v: %v", sig, err)
	}
	s.paused = paused
}

// start runs redis-server on s.addr and waits until it answers.
func (s *Server) start() error {
	r, err := run(s.bin, s.dir, s.addr, true)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.redis, s.paused = r, false
	s.mu.Unlock()
	return nil
}

// kill kills the server, if running, and waits for it. The caller holds
// s.mu.
func (s *Server) kill() {
	if s.redis == nil {
		return
	}
	if s.paused {
		_ = s.redis.signal(syscall.SIGCONT)
	}
	s.redis.kill()
	s.redis = nil
}

func (s *Server) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kill()
}

// freeAddr returns a loopback host:port that is free now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(l.Addr().(*net.TCPAddr).Port)), nil
}
