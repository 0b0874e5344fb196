package redistest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
	r.Stop()
	select {
	case <-r.Exited():
	default:
		t.Fatal("Stop returned before the server exited")
	}
	if err := Ping(addr); err == nil {
		t.Fatal("after Stop: PING still answered")
	}
}
