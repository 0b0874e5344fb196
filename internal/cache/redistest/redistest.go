// Package redistest gives tests a real, throwaway redis-server.
//
// [Start] runs redis-server on a free loopback port, without persistence
// (--save "" --appendonly no), waits until it answers PING and stops it
// when the test ends. Every call starts its own server, so tests may run
// in parallel; a server starts in milliseconds. [Server.Kill] and
// [Server.Restart] let a test take Redis away and bring it back, empty,
// on the same port; [Server.Pause] and [Server.Resume] make it hang.
//
// The binary is KEEL_REDIS_SERVER when set, else /usr/bin/redis-server
// (Debian's package, Redis 7: client-side caching needs RESP3 and CLIENT
// TRACKING), else redis-server on PATH. When there is none, Start fails
// the test, never skips it, saying how to install it
// (scripts/test-deps.sh does). Should the test binary die without
// running its cleanups, a small watchdog process kills the server and
// removes its files within a second.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
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

// startTimeout bounds how long a server may take to answer PING.
const startTimeout = 10 * time.Second

// candidates are where redis-server is looked for after
// KEEL_REDIS_SERVER. Tests change it to pretend the machine has none.
var candidates = []string{"/usr/bin/redis-server"}

// Server is a running redis-server owned by one test. Its methods are
// safe for concurrent use.
type Server struct {
	t        testing.TB
	bin      string
	dir      string // redis.log, redis.pid
	port     int
	watchdog *exec.Cmd

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd has been waited for
	paused bool
}

// Start starts a redis-server for t and stops it when t ends. It fails
// t, with a message saying how to install redis-server, when there is
// none, and on any other error.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := findBinary()
	if err != nil {
		t.Fatalf("%s\n(%v)", installHint, err)
	}
	s := &Server{t: t, bin: bin, dir: t.TempDir()}
	if err := s.startWatchdog(); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	t.Cleanup(s.stop)
	// A free port can be taken by someone else between our probe and the
	// server's bind: try a few.
	for attempt := 1; ; attempt++ {
		s.port, err = freePort()
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
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

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
	if s.cmd == nil {
		s.t.Fatalf("redistest: %v: the server is not running", sig)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("redistest: %v: %v", sig, err)
	}
	s.paused = paused
}

// start runs redis-server on s.port and waits until it answers PING.
func (s *Server) start() error {
	cmd := exec.Command(s.bin,
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--dir", s.dir,
		"--pidfile", filepath.Join(s.dir, "redis.pid"),
		"--logfile", filepath.Join(s.dir, "redis.log"),
	)
	// Killed with the test binary's thread if the process dies; the
	// watchdog covers the rest.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited, s.paused = cmd, exited, false
	s.mu.Unlock()

	deadline := time.Now().Add(startTimeout)
	for {
		if err := ping(s.Addr()); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("no answer to PING on %s within %s: %v\nserver log:\n%s", s.Addr(), startTimeout, err, s.log())
		}
		select {
		case <-exited:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			return fmt.Errorf("redis-server exited at start: %v\nserver log:\n%s", cmd.ProcessState, s.log())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// kill kills the server, if running, and waits for it. The caller holds
// s.mu.
func (s *Server) kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
}

func (s *Server) stop() {
	s.mu.Lock()
	if s.paused && s.cmd != nil {
		_ = s.cmd.Process.Signal(syscall.SIGCONT)
	}
	s.kill()
	s.mu.Unlock()
	if s.watchdog != nil {
		_ = s.watchdog.Process.Kill()
		_ = s.watchdog.Wait()
	}
}

func (s *Server) log() string {
	b, err := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// watchdogScript waits for the test binary ($1) to exit, then kills the
// server whose pid is in $2/redis.pid and removes $2.
const watchdogScript = `
while kill -0 "$1" 2>/dev/null; do sleep 1; done
[ -f "$2/redis.pid" ] && kill -9 "$(cat "$2/redis.pid")" 2>/dev/null
rm -rf "$2"
`

func (s *Server) startWatchdog() error {
	cmd := exec.Command("/bin/sh", "-c", watchdogScript, "redistest-watchdog", strconv.Itoa(os.Getpid()), s.dir)
	// Own process group: a Ctrl-C to "go test" must not kill the watchdog
	// before it has cleaned up. No stdio, so "go test" does not wait for it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start watchdog: %w", err)
	}
	s.watchdog = cmd
	return nil
}

// ping sends PING in RESP and wants +PONG.
func ping(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

// findBinary finds redis-server.
func findBinary() (string, error) {
	if p := os.Getenv("KEEL_REDIS_SERVER"); p != "" {
		if !isExecutable(p) {
			return "", fmt.Errorf("KEEL_REDIS_SERVER=%s is not an executable file", p)
		}
		return p, nil
	}
	for _, p := range candidates {
		if isExecutable(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	return "", errors.New("redis-server not found")
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
