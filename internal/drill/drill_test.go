//go:build unix

package drill_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/keelplatform/keel/internal/drill"
)

// TestAtKillsAtTheChosenPointOnly runs points a, b, c in a child process
// that crashes at b: the child must die by SIGKILL after a, before c.
func TestAtKillsAtTheChosenPointOnly(t *testing.T) {
	if os.Getenv("DRILL_TEST_CHILD") != "" {
		crash := drill.At(os.Getenv(drill.Var))
		for _, p := range []string{"a", "b", "c"} {
			crash(p)
			fmt.Println("passed", p)
		}
		os.Exit(0)
	}
	for _, tc := range []struct {
		at     string
		killed bool
		passed []string
	}{
		{"b", true, []string{"passed a"}},
		{"", false, []string{"passed a", "passed b", "passed c"}},
		{"z", false, []string{"passed a", "passed b", "passed c"}},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestAtKillsAtTheChosenPointOnly$", "-test.count=1")
		cmd.Env = append(os.Environ(), "DRILL_TEST_CHILD=1", drill.Var+"="+tc.at)
		var out bytes.Buffer
		cmd.Stdout = &out
		err := cmd.Run()
		var exit *exec.ExitError
		killed := errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
		if killed != tc.killed || (err != nil && !killed) {
			t.Errorf("%s=%q: child ended with %v, want killed %v", drill.Var, tc.at, err, tc.killed)
		}
		if got := strings.Split(strings.TrimSpace(out.String()), "\n"); !slices.Equal(got, tc.passed) {
			t.Errorf("%s=%q: child printed %q, want %q", drill.Var, tc.at, got, tc.passed)
		}
	}
}
