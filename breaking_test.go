package keel_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBreakingGate runs scripts/breaking.sh, the gate behind `make
// breaking`, on a scratch repository holding a copy of the contracts, and
// checks that real breaks fail it while compatible changes pass.
func TestBreakingGate(t *testing.T) {
	if testing.Short() {
		t.Skip("runs buf several times; skipped with -short")
	}
	repo := scratchRepo(t)
	const userProto = "proto/shop/user/v1/user.proto"

	cases := []struct {
		name      string
		from, to  string
		wantBreak string // a phrase of buf's report, or "" for no break
	}{
		{"change a field's type", "  string display_name = 3;\n  // create_time", "  int64 display_name = 3;\n  // create_time", `changed type from "string" to "int64"`},
		{"remove a field", "  // display_name is the name shown to other people.\n  string display_name = 3;\n", "", `Previously present field "3" with name "display_name" on message "User" was deleted`},
		{"rename an RPC", "rpc GetUser(GetUserRequest)", "rpc FetchUser(GetUserRequest)", `Previously present RPC "GetUser" on service "UserService" was deleted`},
		{"add a field", "  google.protobuf.Timestamp update_time = 5;\n}", "  google.protobuf.Timestamp update_time = 5;\n  // locale is the user's preferred locale.\n  string locale = 6;\n}", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			git(t, repo, "checkout", "--", "proto")
			edit(t, filepath.Join(repo, userProto), tc.from, tc.to)
			out, err := runGate(repo, "BASE_REF=HEAD")
			if tc.wantBreak == "" {
				if err != nil {
					t.Fatalf("gate failed a compatible change: %v\n%s", err, out)
				}
				return
			}
			assertBreak(t, out, err, tc.wantBreak)
		})
	}
	git(t, repo, "checkout", "--", "proto")

	t.Run("a break in an earlier commit of a push fails", func(t *testing.T) {
		// Two commits after the accepted contracts: the first breaks, the
		// second is harmless. Comparing with the previous commit alone
		// would miss the break.
		defer git(t, repo, "reset", "-q", "--hard", "main")
		edit(t, filepath.Join(repo, userProto), "  string display_name = 3;\n  // create_time", "  int64 display_name = 3;\n  // create_time")
		git(t, repo, "commit", "-qam", "change display_name's type")
		edit(t, filepath.Join(repo, userProto), "  google.protobuf.Timestamp update_time = 5;\n}", "  google.protobuf.Timestamp update_time = 5;\n  // locale of the user.\n  string locale = 6;\n}")
		git(t, repo, "commit", "-qam", "add locale")
		out, err := runGate(repo)
		assertBreak(t, out, err, `changed type from "string" to "int64"`)
	})
	t.Run("accepting moves the baseline", func(t *testing.T) {
		defer git(t, repo, "reset", "-q", "--hard", "main")
		edit(t, filepath.Join(repo, userProto), "rpc GetUser(GetUserRequest)", "rpc FetchUser(GetUserRequest)")
		git(t, repo, "commit", "-qam", "rename GetUser")
		out, err := runGate(repo)
		assertBreak(t, out, err, `Previously present RPC "GetUser" on service "UserService" was deleted`)
		// The deliberate step: accept the commit, then the gate passes.
		cmd := exec.Command("make", "--no-print-directory", "accept-contracts")
		cmd.Dir = repo
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make accept-contracts: %v\n%s", err, out)
		}
		git(t, repo, "commit", "-qam", "accept the rename")
		if out, err := runGate(repo); err != nil {
			t.Fatalf("gate failed against the contracts just accepted: %v\n%s", err, out)
		}
	})
	t.Run("no accepted contracts is an error", func(t *testing.T) {
		defer git(t, repo, "reset", "-q", "--hard", "main")
		if err := os.Remove(filepath.Join(repo, "proto", "ACCEPTED")); err != nil {
			t.Fatal(err)
		}
		git(t, repo, "commit", "-qam", "forget the baseline")
		out, err := runGate(repo)
		if err == nil || !strings.Contains(out, "names no accepted contracts") {
			t.Fatalf("gate without a baseline: %v\n%s", err, out)
		}
	})
}

// scratchRepo makes a git repository with main's contracts, the gate's
// scripts and the pinned tools, with one commit on main.
func scratchRepo(t *testing.T) string {
	t.Helper()
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	repo := t.TempDir()
	for _, path := range []string{"go.mod", "go.sum", "proto", "scripts", "buf.yaml", "Makefile", "tools/go.mod", "tools/go.sum", "tools/package.json", "tools/package-lock.json"} {
		cmd := exec.Command("cp", "-r", filepath.Join(root, path), filepath.Join(repo, filepath.Dir(path))+"/")
		if err := os.MkdirAll(filepath.Join(repo, filepath.Dir(path)), 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("copy %s: %v\n%s", path, err, out)
		}
	}
	// Reuse the installed generators rather than installing them again.
	if err := os.Symlink(filepath.Join(root, "tools", "node_modules"), filepath.Join(repo, "tools", "node_modules")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, ".gitignore"), []byte("third_party/\ntools/node_modules\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, repo, "init", "-q", "-b", "main")
	git(t, repo, "add", "-A")
	git(t, repo, "commit", "-qm", "contracts")
	// Accept these contracts, as the repository's own proto/ACCEPTED does.
	head := strings.TrimSpace(gitOutput(t, repo, "rev-parse", "HEAD"))
	if err := os.WriteFile(filepath.Join(repo, "proto", "ACCEPTED"), []byte(head+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, repo, "commit", "-qam", "accept the contracts")
	return repo
}

// assertBreak checks that the gate failed because of a breaking change
// (and not because a tool failed), reported with the given phrase.
func assertBreak(t *testing.T, out string, err error, phrase string) {
	t.Helper()
	if err == nil {
		t.Fatalf("gate passed a breaking change:\n%s", out)
	}
	if !strings.Contains(out, "contracts break") || !strings.Contains(out, phrase) {
		t.Fatalf("gate failed, but not with the break %q: %v\n%s", phrase, err, out)
	}
}

func runGate(repo string, env ...string) (string, error) {
	cmd := exec.Command("bash", "scripts/breaking.sh")
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func git(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=keel", "-c", "user.email=keel@localhost"}, args...)...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

func gitOutput(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git %v: %v", args, err)
	}
	return string(out)
}

func edit(t *testing.T, path, from, to string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), from) {
		t.Fatalf("%s does not contain %q", path, from)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(string(data), from, to, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}
