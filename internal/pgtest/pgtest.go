// Package pgtest gives tests a real, throwaway PostgreSQL.
//
// The first call to [Start] in a test binary runs initdb and pg_ctl to start
// one private cluster on a free loopback port, with fsync off; every call
// then creates a fresh database in it, so tests never see each other's rows.
// The cluster lives until the test binary ends. Call [Main] from TestMain to
// stop it and remove its files as soon as the tests are done:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// Without Main, and also when the binary dies early (a panic, a -timeout, a
// kill), a small watchdog process started with the cluster notices that the
// test binary is gone, stops the cluster with "pg_ctl stop -m immediate" and
// removes its directory within about a second.
//
// The PostgreSQL server binaries (initdb, pg_ctl) are looked up in
// /usr/lib/postgresql/<version>/bin, then through "pg_config --bindir", then
// on PATH. When they are missing, Start fails the test with a message saying
// how to install them (scripts/test-deps.sh does): a machine without
// PostgreSQL must not pass the tests that need it by skipping them. Only
// with -short (go test -short, a quick run that never gates anything) does
// Start skip the test instead. Any other failure fails the test. initdb
// refuses to run as root, so when the tests run as root the cluster is
// created and run as the "postgres" user through runuser.
package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
)

// osUser is the account the cluster runs as when the tests run as root.
const osUser = "postgres"

// installHint is shown when the server binaries are missing; %s says
// what becomes of the test.
const installHint = `
**********************************************************************
pgtest: PostgreSQL server binaries (initdb, pg_ctl) were not found, so
this test %s. Tests against a real PostgreSQL need them; install them
with the script the gate runs, from the repository root (as root: it
uses apt-get):
    ./scripts/test-deps.sh
or by hand:
    apt-get install postgresql        (Debian/Ubuntu; or postgresql-15)
They are looked up in /usr/lib/postgresql/*/bin, via pg_config --bindir,
and on PATH.
**********************************************************************`

var (
	once    sync.Once
	shared  *cluster
	initErr error
	dbSeq   atomic.Int64
)

// errNoBinaries marks a machine without PostgreSQL: tests fail with
// installHint (skip with it under -short).
var errNoBinaries = errors.New("PostgreSQL server binaries not found")

// binDirs matches the directories Debian and Ubuntu install the server
// binaries in, one per major version. Tests change it to pretend the
// machine has none.
var binDirs = "/usr/lib/postgresql/*/bin"

// Start returns the DSN of a new, empty database in this test binary's
// PostgreSQL cluster, starting the cluster on first use. The DSN has the
// form postgres://postgres@127.0.0.1:PORT/NAME?sslmode=disable and suits
// the pgx driver. The database is dropped when t ends.
//
// Start fails t, with a message saying how to install PostgreSQL, if it is
// not installed (under -short it skips t instead), and fails t on any other
// error. It is safe to call from parallel tests.
func Start(t testing.TB) (dsn string) {
	t.Helper()
	once.Do(func() { shared, initErr = startCluster() })
	if errors.Is(initErr, errNoBinaries) {
		if testing.Short() {
			t.Skipf(installHint, "is SKIPPED (-short)")
		}
		t.Fatalf(installHint, "FAILS")
	}
	if initErr != nil {
		t.Fatalf("pgtest: start PostgreSQL: %v", initErr)
	}
	name := fmt.Sprintf("t%d_%s", dbSeq.Add(1), sanitize(t.Name()))
	if err := shared.createDatabase(name); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := shared.dropDatabase(name); err != nil {
			t.Logf("pgtest: %v", err)
		}
	})
	return shared.dsn(name)
}

// Main runs the tests and then stops the cluster, if one was started, and
// removes its files. It does not return: it exits with the tests' status.
// Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	if shared != nil {
		if err := shared.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		}
	}
	os.Exit(code)
}

// cluster is one running PostgreSQL instance.
type cluster struct {
	bin     string // directory with initdb and pg_ctl
	root    string // temporary directory: data/, sockets, log
	data    string
	port    int
	asUser  string // "postgres" when running as root, else ""
	admin   *sql.DB
	watcher *exec.Cmd
	stopped sync.Once
}

func startCluster() (*cluster, error) {
	bin, err := findBinDir()
	if err != nil {
		return nil, err
	}
	c := &cluster{bin: bin}
	var uid, gid = -1, -1
	if os.Geteuid() == 0 {
		c.asUser = osUser
		u, err := user.Lookup(osUser)
		if err != nil {
			return nil, fmt.Errorf("running as root needs the %q OS user to run the server: %w", osUser, err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	c.root, err = os.MkdirTemp(tempBase(), "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("create cluster dir: %w", err)
	}
	if uid >= 0 {
		if err := os.Chown(c.root, uid, gid); err != nil {
			_ = os.RemoveAll(c.root)
			return nil, fmt.Errorf("chown cluster dir to %s: %w", osUser, err)
		}
	}
	c.data = filepath.Join(c.root, "data")
	if err := c.run("initdb", "-D", c.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"); err != nil {
		_ = os.RemoveAll(c.root)
		return nil, err
	}
	// The watchdog must exist before the server does, so no exit path
	// leaves a server behind.
	if err := c.startWatchdog(); err != nil {
		_ = os.RemoveAll(c.root)
		return nil, err
	}
	// A free port can be taken by someone else between our probe and the
	// server's bind (parallel test binaries do this): retry a few times.
	for attempt := 1; ; attempt++ {
		c.port, err = freePort()
		if err != nil {
			break
		}
		opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off", c.port, c.root)
		err = c.run("pg_ctl", "-D", c.data, "-l", filepath.Join(c.root, "server.log"), "-o", opts, "-w", "-t", "60", "start")
		if err == nil || attempt == 3 {
			break
		}
	}
	if err != nil {
		err = fmt.Errorf("%w\nserver log:\n%s", err, tail(filepath.Join(c.root, "server.log")))
		_ = c.stop()
		return nil, err
	}
	c.admin, err = sql.Open("pgx", c.dsn("postgres"))
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = c.admin.PingContext(ctx)
		cancel()
	}
	if err != nil {
		_ = c.stop()
		return nil, fmt.Errorf("connect to the new cluster: %w", err)
	}
	return c, nil
}

func (c *cluster) dsn(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

func (c *cluster) createDatabase(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.admin.ExecContext(ctx, `CREATE DATABASE "`+name+`"`); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

func (c *cluster) dropDatabase(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.admin.ExecContext(ctx, `DROP DATABASE IF EXISTS "`+name+`" WITH (FORCE)`); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}

// stop stops the server at once and removes the cluster's files. It is
// idempotent.
func (c *cluster) stop() error {
	var err error
	c.stopped.Do(func() {
		if c.admin != nil {
			_ = c.admin.Close()
		}
		if _, statErr := os.Stat(filepath.Join(c.data, "postmaster.pid")); statErr == nil {
			err = c.run("pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop")
		}
		if c.watcher != nil {
			_ = c.watcher.Process.Kill()
			_ = c.watcher.Wait()
		}
		if rmErr := os.RemoveAll(c.root); rmErr != nil && err == nil {
			err = fmt.Errorf("remove cluster dir: %w", rmErr)
		}
	})
	return err
}

// watchdogScript waits for the test binary ($1) to exit, then stops the
// server and removes the cluster directory. Arguments: pid, root, pg_ctl,
// data dir, OS user (empty when not root).
const watchdogScript = `
while kill -0 "$1" 2>/dev/null; do sleep 1; done
if [ -f "$4/postmaster.pid" ]; then
	if [ -n "$5" ]; then runuser -u "$5" -- "$3" -D "$4" -m immediate -w stop
	else "$3" -D "$4" -m immediate -w stop; fi
fi
rm -rf "$2"
`

func (c *cluster) startWatchdog() error {
	cmd := exec.Command("/bin/sh", "-c", watchdogScript, "pgtest-watchdog",
		strconv.Itoa(os.Getpid()), c.root, filepath.Join(c.bin, "pg_ctl"), c.data, c.asUser)
	// Own process group: a Ctrl-C to "go test" must not kill the watchdog
	// before it has cleaned up. No stdio, so "go test" does not wait for it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start watchdog: %w", err)
	}
	c.watcher = cmd
	return nil
}

// run runs a PostgreSQL binary, as the postgres OS user when we are root.
func (c *cluster) run(name string, args ...string) error {
	path := filepath.Join(c.bin, name)
	var cmd *exec.Cmd
	if c.asUser != "" {
		cmd = exec.Command("runuser", append([]string{"-u", c.asUser, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = c.root // the server user may not be able to read our cwd
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// findBinDir finds the directory holding initdb and pg_ctl.
func findBinDir() (string, error) {
	var candidates []string
	if dirs, _ := filepath.Glob(binDirs); len(dirs) > 0 {
		// Newest major version first.
		sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
		candidates = append(candidates, dirs...)
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			candidates = append(candidates, filepath.Dir(real))
		}
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, dir := range candidates {
		if isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "pg_ctl")) {
			return dir, nil
		}
	}
	return "", errNoBinaries
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// tempBase picks where the cluster directory goes. As root the server runs
// as another user, who must be able to reach it; a private TMPDIR would not
// do, so fall back to /tmp.
func tempBase() string {
	base := os.TempDir()
	if os.Geteuid() != 0 {
		return base
	}
	for dir := base; ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if dir == filepath.Dir(dir) {
			return base
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var unsafeChars = regexp.MustCompile(`[^a-z0-9_]+`)

// sanitize turns a test name into a short, safe database-name suffix;
// the sequence number in front keeps names unique.
func sanitize(name string) string {
	s := unsafeChars.ReplaceAllString(strings.ToLower(name), "_")
	if len(s) > 40 {
		s = s[:40]
	}
	return s
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
