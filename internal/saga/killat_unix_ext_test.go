//go:build unix

package saga_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/keelplatform/keel/internal/saga"
)

// TestKillAtKillsTheProcess runs a saga in a child process with
// KillAt("after-action:charge-payment") and checks that the child died
// by SIGKILL right there: the charge ran, its success was not saved.
func TestKillAtKillsTheProcess(t *testing.T) {
	if at := os.Getenv("SAGA_TEST_KILL_AT"); at != "" {
		killedChild(at)
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillAtKillsTheProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SAGA_TEST_KILL_AT=after-action:charge-payment")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("child: %v, want it killed\n%s", err, out.String())
	}
	ws, ok := exit.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want SIGKILL\n%s", exit, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if last := lines[len(lines)-1]; last != "called "+saga.ActionKey("order-1", charge) {
		t.Errorf("the child's last words were %q, want the charge call and nothing saved after it\n%s", last, out.String())
	}
}

// killedChild runs a saga that KillAt(at) kills, printing each write and
// each call.
func killedChild(at string) {
	l := newLedger()
	l.onCall = func(key string, _ int) { fmt.Println("called", key) }
	opts := options("child")
	opts.Boundary = saga.KillAt(at)
	opts.Observer = func(ev saga.Event, rec saga.Record) { fmt.Println("saved", entry(ev, rec)) }
	o, err := saga.New(&saga.MemStore{}, placeOrder(l), opts)
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	_, err = o.Run(context.Background(), "order-1", order{})
	fmt.Println("survived:", err)
	os.Exit(3)
}
