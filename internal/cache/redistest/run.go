package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BinEnv names an environment variable holding the path of a
// redis-server binary to use instead of Debian's.
const BinEnv = "KEEL_REDIS_SERVER"

// ReadyTimeout bounds how long [Run] waits for redis-server to answer.
const ReadyTimeout = 10 * time.Second

// stopTimeout is how long [Redis.Stop] waits after SIGTERM before SIGKILL.
const stopTimeout = 10 * time.Second

// ErrNotInstalled is returned by [Binary] when there is no redis-server.
var ErrNotInstalled = errors.New("redis-server not found")

// candidates are where redis-server is looked for after [BinEnv]. Tests
// change it to pretend the machine has none.
var candidates = []string{"/usr/bin/redis-server"}

// Binary returns the path of redis-server: $KEEL_REDIS_SERVER when set,
// else /usr/bin/redis-server (Debian's package, Redis 7: client-side
// caching needs RESP3 and CLIENT TRACKING), else redis-server on PATH.
// When there is none it returns an error wrapping [ErrNotInstalled].
func Binary() (string, error) {
	if p := os.Getenv(BinEnv); p != "" {
		if !isExecutable(p) {
			return "", fmt.Errorf("%s=%s is not an executable file: %w", BinEnv, p, ErrNotInstalled)
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
	return "", fmt.Errorf("%w in $%s, %s or on PATH", ErrNotInstalled, BinEnv, strings.Join(candidates, ", "))
}

// Redis is a running redis-server started by [Run]. Its methods are safe
// for concurrent use.
type Redis struct {
	addr     string
	dir      string
	cmd      *exec.Cmd
	exited   chan struct{} // closed once cmd has been waited for
	watchdog *exec.Cmd
	stopOnce sync.Once
}

// Run starts the redis-server binary bin listening on addr (host:port)
// without persistence (--save "" --appendonly no), with its working
// directory, pid file (redis.pid) and log (redis.log) in dir, which is
// created if needed, and returns once that very process answers: PING,
// and INFO gives its pid, so another server already on addr is not
// mistaken for it. If it exits or does not answer within [ReadyTimeout],
// Run stops it and returns an error with the tail of its log. The caller
// stops it with [Redis.Stop].
//
// redis-server runs in its own process group (a Ctrl-C meant for its
// parent does not stop it before the parent's processes are done with
// it), and a small watchdog process kills it within a second should the
// parent die without stopping it.
func Run(bin, dir, addr string) (*Redis, error) {
	return run(bin, dir, addr, false)
}

// run is [Run]; removeDir makes the watchdog also remove dir.
func run(bin, dir, addr string, removeDir bool) (*Redis, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("redis-server address %q: %w", addr, err)
	}
	// redis-server changes into --dir before it opens the files named
	// after it: they must not be relative.
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, fmt.Errorf("redis-server directory: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("redis-server directory: %w", err)
	}
	cmd := exec.Command(bin,
		"--port", port,
		"--bind", host,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--dir", dir,
		"--pidfile", filepath.Join(dir, "redis.pid"),
		"--logfile", filepath.Join(dir, "redis.log"),
	)
	// Own process group: a Ctrl-C to the parent reaches the parent only,
	// which stops redis-server once nothing uses it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	r := &Redis{addr: addr, dir: dir, cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(r.exited)
	}()
	r.watchdog = startWatchdog(cmd.Process.Pid, dir, removeDir)
	if err := r.waitReady(); err != nil {
		r.kill()
		return nil, fmt.Errorf("%w\nredis-server log (tail):\n%s", err, r.Log())
	}
	return r, nil
}

// Addr returns the host:port the server listens on.
func (r *Redis) Addr() string { return r.addr }

// Pid returns the process id of redis-server.
func (r *Redis) Pid() int { return r.cmd.Process.Pid }

// Exited returns a channel closed once redis-server has exited.
func (r *Redis) Exited() <-chan struct{} { return r.exited }

// Log returns the tail of redis-server's log, for error messages.
func (r *Redis) Log() string {
	b, err := os.ReadFile(filepath.Join(r.dir, "redis.log"))
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Stop stops redis-server gracefully (SIGTERM; SIGKILL after 10s) and
// waits for it to exit. Its data is lost: nothing is persisted. Later
// calls do nothing.
func (r *Redis) Stop() {
	r.stopOnce.Do(func() {
		_ = r.cmd.Process.Signal(syscall.SIGCONT) // in case it was paused
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.exited:
		case <-time.After(stopTimeout):
			_ = r.cmd.Process.Kill()
			<-r.exited
		}
		r.stopWatchdog()
	})
}

// kill kills redis-server with SIGKILL, as a crash would, and waits for
// it to exit.
func (r *Redis) kill() {
	r.stopOnce.Do(func() {
		_ = r.cmd.Process.Kill()
		<-r.exited
		r.stopWatchdog()
	})
}

func (r *Redis) stopWatchdog() {
	if r.watchdog != nil {
		_ = r.watchdog.Process.Kill()
		_ = r.watchdog.Wait()
	}
}

// signal sends sig to redis-server.
func (r *Redis) signal(sig syscall.Signal) error {
	return r.cmd.Process.Signal(sig)
}

// waitReady polls the server until it answers as this process, it exits,
// or ReadyTimeout passes.
func (r *Redis) waitReady() error {
	deadline := time.Now().Add(ReadyTimeout)
	for {
		pid, err := serverPid(r.addr)
		if err == nil && pid != r.Pid() {
			err = fmt.Errorf("another redis-server (pid %d) answers on %s", pid, r.addr)
		}
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server did not answer on %s within %s: %w", r.addr, ReadyTimeout, err)
		}
		select {
		case <-r.exited:
			return fmt.Errorf("redis-server exited at start (%v)", r.cmd.ProcessState)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// watchdogScript waits for the parent process ($1) to exit, then kills
// redis-server ($2) and, if $3 is set, removes that directory. It exits
// at once when killed by a normal stop.
const watchdogScript = `
while kill -0 "$1" 2>/dev/null; do sleep 1; done
kill -9 "$2" 2>/dev/null
[ -n "$3" ] && rm -rf "$3"
`

// startWatchdog starts the watchdog of redis-server's pid, or returns nil
// if it cannot: the server still runs, it just is not cleaned up after a
// crash.
func startWatchdog(pid int, dir string, removeDir bool) *exec.Cmd {
	if !removeDir {
		dir = ""
	}
	cmd := exec.Command("/bin/sh", "-c", watchdogScript, "redis-watchdog",
		strconv.Itoa(os.Getpid()), strconv.Itoa(pid), dir)
	// Own process group: a Ctrl-C to the parent must not kill the watchdog
	// before it has cleaned up. No stdio, so "go test" does not wait for it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if cmd.Start() != nil {
		return nil
	}
	return cmd
}

// Ping sends PING to the server at addr and wants PONG.
func Ping(addr string) error {
	_, err := serverPid(addr)
	return err
}

// serverPid sends PING and INFO server to the server at addr and returns
// the process_id INFO reports.
func serverPid(addr string) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")); err != nil {
		return 0, err
	}
	rd := bufio.NewReader(conn)
	line, err := rd.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return 0, fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	if line, err = rd.ReadString('\n'); err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(line), "$"))
	if err != nil || !strings.HasPrefix(line, "$") {
		return 0, fmt.Errorf("INFO answered %q", strings.TrimSpace(line))
	}
	info := make([]byte, n)
	if _, err := io.ReadFull(rd, info); err != nil {
		return 0, err
	}
	for l := range strings.Lines(string(info)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "process_id:"); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, errors.New("INFO server gave no process_id")
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}
