package testkit

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Build compiles the main package pkg (an import path, e.g.
// "github.com/keelplatform/keel/services/order") into dir and returns
// the binary's path, for tests that run a service as its own process.
// Call it from TestMain, once per package.
func Build(dir, pkg string) (string, error) {
	bin := filepath.Join(dir, filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return bin, nil
}

// Process is a Keel binary running as its own process, its JSON log
// lines collected.
type Process struct {
	cmd  *exec.Cmd
	addr string
	done chan struct{} // closed once the process has exited
	err  error         // how it exited, once done is closed

	mu   sync.Mutex
	logs []string
}

// startTimeout bounds how long a process may take to log "started".
const startTimeout = 60 * time.Second

// Start runs binary with env added to the test's environment, waits
// until it logs that it started (boot's "started" line, which carries
// its address) and returns it. The process is killed when the test
// ends. A process that exits or fails to start in time fails the test,
// with its logs.
func Start(t testing.TB, binary string, env ...string) *Process {
	t.Helper()
	cmd := exec.Command(binary)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", binary, err)
	}
	p := &Process{cmd: cmd, done: make(chan struct{})}
	started := make(chan string, 1)
	go func() {
		scanner := bufio.NewScanner(stderr)
		scanner.Buffer(make([]byte, 1<<20), 1<<20)
		for scanner.Scan() {
			line := scanner.Text()
			p.mu.Lock()
			p.logs = append(p.logs, line)
			p.mu.Unlock()
			var rec struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "started" && rec.Addr != "" {
				select {
				case started <- rec.Addr:
				default:
				}
			}
		}
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.Kill)
	select {
	case p.addr = <-started:
		return p
	case <-p.done:
		t.Fatalf("%s exited before it started: %v\n%s", filepath.Base(binary), p.err, p.Logs())
	case <-time.After(startTimeout):
		p.Kill()
		t.Fatalf("%s did not start within %s\n%s", filepath.Base(binary), startTimeout, p.Logs())
	}
	return nil
}

// Addr is the address the process listens on.
func (p *Process) Addr() string { return p.addr }

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Killed reports whether the process has exited by SIGKILL, as a crash
// drill kills it. It waits for the process to exit, up to timeout.
func (p *Process) Killed(timeout time.Duration) bool {
	select {
	case <-p.done:
	case <-time.After(timeout):
		return false
	}
	exit, ok := p.err.(*exec.ExitError)
	if !ok {
		return false
	}
	ws, ok := exit.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// Kill kills the process with SIGKILL, if it still runs, and waits for
// it to exit.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Stop asks the process to shut down with SIGTERM and waits for it to
// exit, killing it after timeout.
func (p *Process) Stop(timeout time.Duration) error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("did not stop within %s; killed", timeout)
	}
}

// Logs returns the lines the process has logged so far.
func (p *Process) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.logs, "\n")
}
