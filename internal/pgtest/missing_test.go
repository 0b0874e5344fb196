package pgtest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// helperVar makes TestHelperNoPostgreSQL act; it is set only in the
// copies of this test binary that TestMissingPostgreSQL runs.
const helperVar = "PGTEST_HELPER_NO_POSTGRESQL"

// TestMissingPostgreSQL runs a test that calls Start on a machine without
// PostgreSQL, as far as pgtest can tell: it must fail, saying how to
// install the server binaries, and not skip, so a machine without them
// cannot pass the gate. Under -short it skips, with the same message.
func TestMissingPostgreSQL(t *testing.T) {
	t.Parallel()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	hint := []string{"PostgreSQL server binaries (initdb, pg_ctl) were not found", "./scripts/test-deps.sh", "apt-get install postgresql"}
	tests := []struct {
		name     string
		args     []string
		wantFail bool
		want     []string
	}{
		{name: "fails", want: append([]string{"--- FAIL: TestHelperNoPostgreSQL", "this test FAILS"}, hint...), wantFail: true},
		{name: "skips with -short", args: []string{"-test.short"}, want: append([]string{"--- SKIP: TestHelperNoPostgreSQL", "SKIPPED (-short)"}, hint...)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(self, append([]string{"-test.run=^TestHelperNoPostgreSQL$", "-test.v", "-test.count=1"}, tt.args...)...)
			// No pg_config or initdb on PATH either.
			cmd.Env = append(os.Environ(), helperVar+"=1", "PATH="+t.TempDir())
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if err != nil && !errors.As(err, &exit) {
				t.Fatal(err)
			}
			if failed := err != nil; failed != tt.wantFail {
				t.Errorf("test failed: %t, want %t (%v)", failed, tt.wantFail, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output does not contain %q", w)
				}
			}
			if strings.Contains(string(out), "Start returned") {
				t.Errorf("Start returned without PostgreSQL")
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}

// TestHelperNoPostgreSQL is run by TestMissingPostgreSQL; on its own it
// does nothing.
func TestHelperNoPostgreSQL(t *testing.T) {
	if os.Getenv(helperVar) == "" {
		return
	}
	binDirs = filepath.Join(t.TempDir(), "*", "bin")
	Start(t)
	t.Log("Start returned")
}
