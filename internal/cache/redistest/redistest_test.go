package redistest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperVar makes TestHelperNoRedis act; it is set only in the copy of
// this test binary that TestMissingRedisServer runs.
const helperVar = "REDISTEST_HELPER_NO_REDIS"

// TestMissingRedisServer runs a test that calls Start on a machine
// without redis-server, as far as redistest can tell: it must fail,
// saying how to install it, and not skip, so a machine without it cannot
// pass the gate.
func TestMissingRedisServer(t *testing.T) {
	t.Parallel()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{nil, {"-test.short"}} {
		cmd := exec.Command(self, append([]string{"-test.run=^TestHelperNoRedis$", "-test.v", "-test.count=1"}, args...)...)
		env := []string{helperVar + "=1", "PATH=" + t.TempDir()}
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "KEEL_REDIS_SERVER=") && !strings.HasPrefix(kv, "PATH=") {
				env = append(env, kv)
			}
		}
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("args %v: the test passed or did not run (%v):\n%s", args, err, out)
		}
		for _, want := range []string{"--- FAIL: TestHelperNoRedis", "redis-server was not found", "./scripts/test-deps.sh", "apt-get install redis-server"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("args %v: output does not contain %q:\n%s", args, want, out)
			}
		}
		if strings.Contains(string(out), "Start returned") || strings.Contains(string(out), "SKIP") {
			t.Errorf("args %v: Start returned or skipped without redis-server:\n%s", args, out)
		}
	}
}

// TestHelperNoRedis is run by TestMissingRedisServer; on its own it does
// nothing.
func TestHelperNoRedis(t *testing.T) {
	if os.Getenv(helperVar) == "" {
		return
	}
	candidates = nil
	Start(t)
	t.Log("Start returned")
}

// TestKillRestartPause takes a server through its life: up, killed (no
// answer), back on the same port, hung, resumed.
func TestKillRestartPause(t *testing.T) {
	t.Parallel()
	s := Start(t)
	if err := Ping(s.Addr()); err != nil {
		t.Fatalf("after Start: %v", err)
	}
	s.Kill()
	if err := Ping(s.Addr()); err == nil {
		t.Fatal("after Kill: PING still answered")
	}
	s.Restart()
	if err := Ping(s.Addr()); err != nil {
		t.Fatalf("after Restart: %v", err)
	}
	s.Pause()
	if err := Ping(s.Addr()); err == nil {
		t.Fatal("after Pause: PING answered")
	}
	s.Resume()
	if err := Ping(s.Addr()); err != nil {
		t.Fatalf("after Resume: %v", err)
	}
}

// TestRunOnATakenAddressFails: Run waits for the server it started, not
// for any server on the address, so a port another redis-server holds
// is an error, and that other server is left alone.
func TestRunOnATakenAddressFails(t *testing.T) {
	t.Parallel()
	other := Start(t)
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	r, err := Run(bin, t.TempDir(), other.Addr())
	if err == nil {
		r.Stop()
		t.Fatalf("Run on %s, which another server holds, succeeded", other.Addr())
	}
	if !strings.Contains(err.Error(), "Address already in use") && !strings.Contains(err.Error(), "another redis-server") {
		t.Fatalf("the error does not say the address is taken: %v", err)
	}
	if err := Ping(other.Addr()); err != nil {
		t.Fatalf("the other server no longer answers: %v", err)
	}
}

// TestRunAndStop runs a server as `keel up --redis` does, with its files
// under a relative directory, and stops it.
func TestRunAndStop(t *testing.T) {
	t.Chdir(t.TempDir())
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	r, err := Run(bin, filepath.Join(".keel", "redis"), addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := Ping(r.Addr()); err != nil {
		r.Stop()
		t.Fatalf("after Run: %v", err)
	}
	if _, err := os.Stat(filepath.Join(".keel", "redis", "redis.log")); err != nil {
		r.Stop()
		t.Fatalf("no log where it was asked for: %v", err)
	}
	pid := r.Pid()
	if !watchdogRunning(t, pid) {
		t.Fatal("no watchdog runs for the server")
	}
	r.Stop()
	select {
	case <-r.Exited():
	default:
		t.Fatal("Stop returned before the server exited")
	}
	if watchdogRunning(t, pid) {
		t.Fatal("the server's watchdog still runs after Stop")
	}
	if err := Ping(addr); err == nil {
		t.Fatal("after Stop: PING still answered")
	}
}

// TestBinary: KEEL_REDIS_SERVER is used when it names an executable
// file, and is an error wrapping ErrNotInstalled otherwise.
func TestBinary(t *testing.T) {
	dir := t.TempDir()
	exe, plain := filepath.Join(dir, "redis-server"), filepath.Join(dir, "plain")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plain, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(BinEnv, exe)
	if got, err := Binary(); err != nil || got != exe {
		t.Errorf("%s=%s (executable): Binary() = %q, %v; want it", BinEnv, exe, got, err)
	}
	for _, bad := range []string{plain, dir, filepath.Join(dir, "missing")} {
		t.Setenv(BinEnv, bad)
		if got, err := Binary(); !errors.Is(err, ErrNotInstalled) {
			t.Errorf("%s=%s: Binary() = %q, %v; want ErrNotInstalled", BinEnv, bad, got, err)
		}
	}
}

// helperStartFails makes TestHelperStartFails act; set only in the copy
// of this test binary that TestStartGivesUp runs.
const helperStartFails = "REDISTEST_HELPER_START_FAILS"

// TestStartGivesUp: when the server cannot start, Start tries three
// times, then fails the test saying so.
func TestStartGivesUp(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// A redis-server that counts its runs and exits at once.
	bin, runs := filepath.Join(dir, "redis-server"), filepath.Join(dir, "runs")
	script := "#!/bin/sh\necho run >> " + runs + "\nexit 1\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	out := runHelper(t, "TestHelperStartFails", helperStartFails+"=1", BinEnv+"="+bin)
	if !strings.Contains(out, "--- FAIL: TestHelperStartFails") || !strings.Contains(out, "redistest: start redis-server") {
		t.Fatalf("Start did not fail the test saying the server did not start:\n%s", out)
	}
	b, err := os.ReadFile(runs)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(b), "run"); n != 3 {
		t.Fatalf("redis-server was run %d times, want 3", n)
	}
}

// TestHelperStartFails is run by TestStartGivesUp; on its own it does
// nothing.
func TestHelperStartFails(t *testing.T) {
	if os.Getenv(helperStartFails) == "" {
		return
	}
	Start(t)
	t.Log("Start returned")
}

// helperOrphan makes TestHelperOrphan act; set only in the copy of this
// test binary that TestWatchdogAfterParentDies runs.
const helperOrphan = "REDISTEST_HELPER_ORPHAN"

// TestWatchdogAfterParentDies: when the process that started a server
// exits without stopping it, the server is killed within a second or so;
// a test's server's files are removed with it, those of a server started
// by Run are kept.
func TestWatchdogAfterParentDies(t *testing.T) {
	t.Parallel()
	runDir := t.TempDir()
	out := runHelper(t, "TestHelperOrphan", helperOrphan+"="+runDir)
	var startAddr, startDir, runAddr string
	for l := range strings.Lines(out) {
		f := strings.Fields(l)
		switch {
		case len(f) == 3 && f[0] == "START":
			startAddr, startDir = f[1], f[2]
		case len(f) == 2 && f[0] == "RUN":
			runAddr = f[1]
		}
	}
	if startAddr == "" || runAddr == "" {
		t.Fatalf("the helper did not start its servers:\n%s", out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for Ping(startAddr) == nil || Ping(runAddr) == nil {
		if time.Now().After(deadline) {
			t.Fatal("the servers still answer 10s after the process that started them exited")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		if _, err := os.Stat(startDir); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the files of the test's server, %s, were not removed", startDir)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(runDir, "redis.log")); err != nil {
		t.Fatalf("the files of the server started by Run were removed: %v", err)
	}
}

// TestHelperOrphan is run by TestWatchdogAfterParentDies: it starts a
// server with Start and one with Run, prints where, and exits without
// stopping them. On its own it does nothing.
func TestHelperOrphan(t *testing.T) {
	runDir := os.Getenv(helperOrphan)
	if runDir == "" {
		return
	}
	s := Start(t)
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Run(bin, runDir, addr); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("START %s %s\nRUN %s\n", s.Addr(), s.dir, addr)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL) // dies without cleanup
}

// watchdogRunning reports whether a process runs the watchdog of the
// redis-server pid for this process.
func watchdogRunning(t *testing.T, pid int) bool {
	t.Helper()
	want := fmt.Sprintf("redis-watchdog\x00%d\x00%d\x00", os.Getpid(), pid)
	cmdlines, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range cmdlines {
		if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), want) {
			return true
		}
	}
	return false
}

// runHelper runs the test named name of this test binary in a new
// process with env added, and returns its output.
func runHelper(t *testing.T, name string, env ...string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, "-test.run=^"+name+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	out, _ := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s did not end within 30s:\n%s", name, out)
	}
	return string(out)
}
