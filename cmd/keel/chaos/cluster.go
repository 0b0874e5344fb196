package chaos

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver, to read the services' books
)

// proc is one OS process of the platform under drill: a service
// instance or the edge, started from its binary, restartable on the same
// address (as a restarted pod keeps its name).
type proc struct {
	service string // logical name
	slot    int    // instance number within the service
	bin     string
	addr    string // host:port it listens on, fixed across restarts
	env     []string
	logPath string

	mu          sync.Mutex
	cmd         *exec.Cmd
	done        chan struct{}
	incarnation int
	paused      bool
}

func (p *proc) name() string { return fmt.Sprintf("%s-%d", p.service, p.slot) }

// start runs the binary and waits until it logs "started".
func (p *proc) start(timeout time.Duration) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s already running", p.name())
		}
	}
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin)
	cmd.Dir = filepath.Dir(filepath.Dir(p.logPath)) // the drill's directory
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Env = append(cmd.Env, "KEEL_SERVER_ADDR="+p.addr)
	// Dies with the drill, whatever ends it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logFile.Close()
		return err
	}
	cmd.Stdout = logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("start %s: %w", p.name(), err)
	}
	p.incarnation++
	started := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer logFile.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var once sync.Once
		for sc.Scan() {
			line := sc.Bytes()
			_, _ = logFile.Write(append(line, '\n'))
			var rec struct{ Msg string }
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "started" {
				once.Do(func() { close(started) })
			}
		}
		_ = cmd.Wait()
	}()
	p.cmd, p.done, p.paused = cmd, done, false
	select {
	case <-started:
		return nil
	case <-done:
		return fmt.Errorf("%s exited before it started: %v (log %s)\n%s", p.name(), cmd.ProcessState, p.logPath, tailFile(p.logPath, 2000))
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		return fmt.Errorf("%s did not start within %v (log %s)\n%s", p.name(), timeout, p.logPath, tailFile(p.logPath, 2000))
	}
}

// signal sends sig to the running process, if any.
func (p *proc) signal(sig syscall.Signal) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	switch sig {
	case syscall.SIGSTOP:
		p.paused = true
	case syscall.SIGCONT:
		p.paused = false
	}
}

// kill kills the process with SIGKILL and waits until it is gone.
func (p *proc) kill() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
}

// stop asks the process to stop (SIGTERM) and kills it after timeout.
func (p *proc) stop(timeout time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT)
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(timeout):
		p.kill()
	}
}

func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// consulAgent is a Consul dev agent on loopback that can be stopped and
// started again on the same ports and data directory.
type consulAgent struct {
	bin, dir string
	addr     string
	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
}

func newConsulAgent(bin, dir string) (*consulAgent, error) {
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		return nil, err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, err
	}
	a := &consulAgent{bin: bin, dir: dir, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))}
	hcl := fmt.Sprintf("ports {\n  http = %d\n  serf_lan = %d\n  server = %d\n  dns = -1\n  grpc = -1\n  grpc_tls = -1\n  serf_wan = -1\n}\n",
		ports[0], ports[1], ports[2])
	if err := os.WriteFile(filepath.Join(dir, "agent.hcl"), []byte(hcl), 0o600); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *consulAgent) start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	logFile, err := os.OpenFile(filepath.Join(a.dir, "consul.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(a.bin, "agent", "-dev",
		"-bind", "127.0.0.1", "-client", "127.0.0.1", "-advertise", "127.0.0.1",
		"-data-dir", filepath.Join(a.dir, "data"),
		"-config-file", filepath.Join(a.dir, "agent.hcl"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run consul: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	a.cmd, a.done = cmd, done
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("consul agent exited during start:\n%s", tailFile(filepath.Join(a.dir, "consul.log"), 2000))
		default:
		}
		res, err := client.Get("http://" + a.addr + "/v1/status/leader")
		if err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if s := strings.Trim(strings.TrimSpace(string(b)), `"`); res.StatusCode == 200 && s != "" {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("consul agent: no leader within 30s")
}

// stop stops the agent gracefully (SIGTERM, SIGKILL after 10s).
func (a *consulAgent) stop() {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.cmd = nil
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// postgres is a throwaway PostgreSQL cluster with a database per service.
type postgres struct {
	bin, root, data, asUser string
	port                    int
}

// startPostgres starts a cluster in a new directory under base (the
// system's temporary directory when base is empty).
func startPostgres(ctx context.Context, base string) (*postgres, error) {
	bin := os.Getenv("KEEL_PG_BIN")
	if bin == "" {
		dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		for _, d := range dirs {
			if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
				bin = d
			}
		}
	}
	if bin == "" {
		return nil, errors.New("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (install them with scripts/test-deps.sh) or KEEL_PG_BIN")
	}
	pg := &postgres{bin: bin}
	root, err := os.MkdirTemp(base, "postgres-")
	if err != nil {
		return nil, err
	}
	pg.root, pg.data = root, filepath.Join(root, "data")
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs the postgres OS user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(root, uid, gid); err != nil {
			return nil, err
		}
		pg.asUser = "postgres"
	}
	if err := pg.run("initdb", "-D", pg.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"); err != nil {
		return nil, err
	}
	ports, err := freePorts(1)
	if err != nil {
		return nil, err
	}
	pg.port = ports[0]
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400", pg.port, root)
	if err := pg.run("pg_ctl", "-D", pg.data, "-l", filepath.Join(root, "server.log"), "-o", opts, "-w", "-t", "60", "start"); err != nil {
		return nil, err
	}
	admin, err := sql.Open("pgx", pg.dsn("postgres"))
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	for _, db := range []string{"user", "inventory", "payment", "order"} {
		if _, err := admin.ExecContext(ctx, `CREATE DATABASE "`+db+`"`); err != nil {
			return nil, fmt.Errorf("create database %s: %w", db, err)
		}
	}
	return pg, nil
}

func (pg *postgres) dsn(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", pg.port, db)
}

// stop stops the server; keep leaves its files (start it again with
// pg_ctl -D <root>/data start to read the books after a drill).
func (pg *postgres) stop(keep bool) {
	_ = pg.run("pg_ctl", "-D", pg.data, "-m", "fast", "-w", "stop")
	if !keep {
		_ = os.RemoveAll(pg.root)
	}
}

func (pg *postgres) run(name string, args ...string) error {
	path := filepath.Join(pg.bin, name)
	var cmd *exec.Cmd
	if pg.asUser != "" {
		cmd = exec.Command("runuser", append([]string{"-u", pg.asUser, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = pg.root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}

// freePorts returns n ports free on 127.0.0.1 now, distinct.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func freeAddr() (string, error) {
	p, err := freePorts(1)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p[0])), nil
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// moduleRoot finds the directory of Keel's go.mod from the working
// directory up.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/keelplatform/keel\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the Keel module (no go.mod naming github.com/keelplatform/keel above the working directory)")
		}
		dir = parent
	}
}
