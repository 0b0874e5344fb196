package platform_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/consul/api"

	"github.com/keelplatform/keel/cmd/keel/platform"
	"github.com/keelplatform/keel/consul"
	"github.com/keelplatform/keel/consul/consultest"
	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/cache/redistest"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/pgtest"
	"github.com/keelplatform/keel/internal/testkit"
)

// userBinary is the user service built once for the tests that run it as
// separate processes, so they can be stopped and killed like real ones.
var userBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keel-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	userBinary = filepath.Join(dir, "user")
	build := exec.Command("go", "build", "-o", userBinary, "github.com/keelplatform/keel/services/user")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build the user service:", err)
		os.Exit(1)
	}
	defer os.RemoveAll(dir)
	pgtest.Main(m)
}

const (
	testTokenKey    = "0123456789abcdef0123456789abcdef-e2e"
	testIdentityKey = "fedcba9876543210fedcba9876543210-e2e"
)

// testToken is a login token for user, as the user service would issue.
func testToken(t *testing.T, user string) string {
	t.Helper()
	token, _, err := auth.Issuer{Key: []byte(testTokenKey), TTL: time.Hour}.Issue(user)
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// userProcess is one user service instance running as its own process.
type userProcess struct {
	cmd  *exec.Cmd
	addr string
	id   string
	logs *lockedLines
	done chan struct{}
}

type lockedLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *lockedLines) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, s)
}

func (l *lockedLines) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.lines {
		if strings.Contains(line, substr) {
			n++
		}
	}
	return n
}

// Write adds p as one line: a slog handler writes one record per call.
func (l *lockedLines) Write(p []byte) (int, error) {
	l.add(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func (l *lockedLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// index of the first line containing substr, or -1.
func (l *lockedLines) index(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, line := range l.lines {
		if strings.Contains(line, substr) {
			return i
		}
	}
	return -1
}

func configDir(t *testing.T) string {
	dir, err := filepath.Abs("../../../consul/kv")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// startUserProcess runs the user binary against the agent and waits until it
// serves. env adds or overrides environment variables.
func startUserProcess(t *testing.T, agent *consultest.Agent, env ...string) *userProcess {
	t.Helper()
	p, err := tryUserProcess(t, agent, env...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func tryUserProcess(t *testing.T, agent *consultest.Agent, env ...string) (*userProcess, error) {
	t.Helper()
	cmd := exec.Command(userBinary)
	cmd.Env = append(os.Environ(),
		"CONSUL_HTTP_ADDR="+agent.Addr(),
		"CONSUL_HTTP_TOKEN="+agent.Token(),
		"KEEL_ENV=test",
		"KEEL_CONFIG_DIR="+configDir(t),
		"KEEL_TOKEN_KEY="+testTokenKey,
		"KEEL_IDENTITY_KEY="+testIdentityKey,
		"KEEL_LOG_LEVEL=debug",
		"KEEL_DATABASE_DATA_DIR="+t.TempDir(),
	)
	cmd.Env = append(cmd.Env, env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &userProcess{cmd: cmd, logs: &lockedLines{}, done: make(chan struct{})}
	started := make(chan struct{})
	go func() {
		defer close(p.done)
		scanner := bufio.NewScanner(stderr)
		scanner.Buffer(make([]byte, 1<<20), 1<<20)
		var once sync.Once
		for scanner.Scan() {
			line := scanner.Text()
			p.logs.add(line)
			var rec struct{ Msg, Addr, ID string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "started" {
				p.addr, p.id = rec.Addr, rec.ID
				once.Do(func() { close(started) })
			}
		}
		_ = cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	})
	select {
	case <-started:
		return p, nil
	case <-p.done:
		return p, fmt.Errorf("user process exited before serving: %v\n%s", cmd.ProcessState, p.logs)
	case <-time.After(20 * time.Second):
		return p, fmt.Errorf("user process did not start:\n%s", p.logs)
	}
}

// passing lists the ids of the passing instances of service in Consul.
func passing(t *testing.T, client *api.Client, service string) []string {
	t.Helper()
	entries, _, err := client.Health().Service(service, "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range entries {
		ids = append(ids, e.Service.ID)
	}
	return ids
}

func waitFor(t *testing.T, what string, within time.Duration, cond func() bool) time.Duration {
	t.Helper()
	began := time.Now()
	for !cond() {
		if time.Since(began) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(began)
}

// consulEdge is the edge booted in this process against an agent.
type consulEdge struct {
	url string
	// backend's resolver is what the edge routes by.
	backend *consul.Backend
	// logs holds what the backend logged (watch failures, recoveries).
	logs *lockedLines
}

// routesTo reports whether the edge resolves service to exactly the
// instances ids, in any order: the set it balances calls over.
func (e *consulEdge) routesTo(service string, ids ...string) bool {
	list, err := e.backend.Resolver().Instances(service)
	if err != nil {
		return len(ids) == 0
	}
	got := make([]string, 0, len(list))
	for _, inst := range list {
		got = append(got, inst.ID)
	}
	slices.Sort(got)
	want := slices.Sorted(slices.Values(ids))
	return slices.Equal(got, want)
}

// startConsulEdge boots the edge in this process against the agent.
func startConsulEdge(t *testing.T, client *api.Client) *consulEdge {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	logs := &lockedLines{}
	backend := consul.NewBackend(client, slog.New(slog.NewJSONHandler(logs, nil)))
	r, err := platform.Edge().Start(ctx, boot.Options{
		Env:       config.EnvTest,
		ConfigDir: configDir(t),
		Backend:   backend,
		Log:       io.Discard,
		LookupEnv: func(name string) (string, bool) {
			v, ok := map[string]string{"KEEL_TOKEN_KEY": testTokenKey, "KEEL_IDENTITY_KEY": testIdentityKey}[name]
			return v, ok
		},
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = r.Wait()
		_ = backend.Close()
	})
	return &consulEdge{url: "http://" + r.Instance.Addr, backend: backend, logs: logs}
}

// load calls GetUser through the edge until stopped and counts failures.
type load struct {
	calls, failures atomic.Int64
	firstErr        atomic.Value
	stop            chan struct{}
	done            chan struct{}
}

func startLoad(edgeURL, id, token string) *load {
	l := &load{stop: make(chan struct{}), done: make(chan struct{})}
	c := userv1connect.NewUserServiceClient(testkit.H2CClient(), edgeURL, connect.WithGRPC(), bearer(token))
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := c.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: id}))
			cancel()
			l.calls.Add(1)
			if err != nil {
				l.failures.Add(1)
				l.firstErr.CompareAndSwap(nil, err.Error())
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return l
}

// waitCalls waits until the load has made n more calls, failed or not,
// than it had made when waitCalls was called.
func (l *load) waitCalls(t *testing.T, n int64, what string) {
	t.Helper()
	target := l.calls.Load() + n
	waitFor(t, what, 10*time.Second, func() bool { return l.calls.Load() >= target })
}

func (l *load) finish(t *testing.T, phase string) {
	t.Helper()
	close(l.stop)
	<-l.done
	t.Logf("%s: %d calls, %d failed", phase, l.calls.Load(), l.failures.Load())
	if n := l.failures.Load(); n > 0 {
		t.Fatalf("%s: %d of %d calls failed, first: %v", phase, n, l.calls.Load(), l.firstErr.Load())
	}
	if l.calls.Load() < 20 {
		t.Fatalf("%s: only %d calls made", phase, l.calls.Load())
	}
}

func TestTwoInstancesThroughConsul(t *testing.T) {
	agent := consultest.Start(t)
	dsn := pgtest.Start(t)
	// Two instances share one database and, as several instances must,
	// one Redis for their cache: a user registered through one is found
	// through the other.
	shared := []string{"KEEL_DATABASE_DRIVER=postgres", "KEEL_DATABASE_DSN=" + dsn, "KEEL_SERVER_DRAIN_DELAY=500ms",
		"KEEL_CACHE_REDIS_ADDR=" + redistest.Start(t).Addr()}
	a := startUserProcess(t, agent, shared...)
	b := startUserProcess(t, agent, shared...)
	waitFor(t, "both instances passing", 10*time.Second, func() bool { return len(passing(t, agent.Client(), "user")) == 2 })
	front := startConsulEdge(t, agent.Client())
	edgeURL := front.url

	c := userv1connect.NewUserServiceClient(testkit.H2CClient(), edgeURL, connect.WithGRPC())
	// Register on an instance directly: a call that hashes a password
	// takes far longer than a GetUser, and the balancer, weighing
	// instances by their recent latency whatever the method, would then
	// keep the GetUser calls off the instance that served it for a while.
	direct := userv1connect.NewUserServiceClient(testkit.H2CClient(), "http://"+a.addr, connect.WithGRPC())
	reg, err := direct.Register(context.Background(), connect.NewRequest(&userv1.RegisterRequest{Email: "two@example.com", Password: "correct horse", DisplayName: "Two"}))
	if err != nil {
		t.Fatal(err)
	}
	id := reg.Msg.GetUser().GetId()
	token := testToken(t, id)
	c = userv1connect.NewUserServiceClient(testkit.H2CClient(), edgeURL, connect.WithGRPC(), bearer(token))
	// Concurrent callers: the balancer weighs instances by their calls in
	// flight and latency (power of two choices), so with equal instances
	// under load both take a good share.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				if _, err := c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: id})); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	onA, onB := a.logs.count("UserService/GetUser"), b.logs.count("UserService/GetUser")
	t.Logf("80 calls through the edge: %d on %s, %d on %s", onA, a.id, onB, b.id)
	if onA+onB != 80 || onA < 8 || onB < 8 {
		t.Fatalf("calls not spread over both instances: %d and %d", onA, onB)
	}

	// A graceful stop deregisters first, then drains: no call fails.
	l := startLoad(edgeURL, id, token)
	l.waitCalls(t, 20, "calls under way before the graceful stop")
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	<-a.done
	if code := a.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("graceful stop exited %d:\n%s", code, a.logs)
	}
	dereg, stopped := a.logs.index(`"msg":"deregistered"`), a.logs.index(`"msg":"stopped"`)
	if dereg < 0 || stopped < 0 || dereg > stopped {
		t.Fatalf("want deregistered before stopped:\n%s", a.logs)
	}
	waitFor(t, "the edge routing to the remaining instance only", 10*time.Second, func() bool { return front.routesTo("user", b.id) })
	l.waitCalls(t, 20, "calls to the remaining instance after the graceful stop")
	l.finish(t, "graceful stop of one instance")
	if ids := passing(t, agent.Client(), "user"); len(ids) != 1 || ids[0] != b.id {
		t.Fatalf("after the graceful stop Consul lists %v", ids)
	}

	// SIGKILL: the dead instance leaves once its check fails, and idempotent
	// calls through the edge keep succeeding meanwhile.
	c2 := startUserProcess(t, agent, shared...)
	waitFor(t, "replacement passing", 10*time.Second, func() bool { return len(passing(t, agent.Client(), "user")) == 2 })
	waitFor(t, "the edge's watch seeing the replacement", 10*time.Second, func() bool { return front.routesTo("user", b.id, c2.id) })
	l = startLoad(edgeURL, id, token)
	l.waitCalls(t, 20, "calls under way before the SIGKILL")
	killed := time.Now()
	_ = b.cmd.Process.Signal(syscall.SIGKILL)
	gone := waitFor(t, "killed instance leaves Consul's passing set", 15*time.Second, func() bool {
		ids := passing(t, agent.Client(), "user")
		return len(ids) == 1 && ids[0] == c2.id
	})
	t.Logf("SIGKILL to out of Consul's passing instances: %v", gone.Round(time.Millisecond))
	waitFor(t, "the edge's watch seeing the killed instance leave", 10*time.Second, func() bool { return front.routesTo("user", c2.id) })
	l.waitCalls(t, 20, "calls to the live instance after the kill")
	l.finish(t, "SIGKILL of one instance")
	before := c2.logs.count("UserService/GetUser")
	for range 10 {
		if _, err := c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: id})); err != nil {
			t.Fatal(err)
		}
	}
	if got := c2.logs.count("UserService/GetUser") - before; got != 10 {
		t.Fatalf("after the kill %d of 10 calls reached the live instance", got)
	}
	t.Logf("SIGKILL to edge routing only to the live instance: within %v", time.Since(killed).Round(time.Millisecond))
}

// tokenTTL logs in through the given client and returns how long the
// token it got is valid.
func tokenTTL(t *testing.T, c userv1connect.UserServiceClient) time.Duration {
	t.Helper()
	res, err := c.Login(context.Background(), connect.NewRequest(&userv1.LoginRequest{Email: "kv@example.com", Password: "correct horse"}))
	if err != nil {
		t.Fatal(err)
	}
	return time.Until(res.Msg.GetExpireTime().AsTime()).Round(time.Minute)
}

func TestConfigChangeInConsulKVReachesARunningService(t *testing.T) {
	agent := consultest.Start(t)
	kv := agent.Client().KV()
	if _, err := consul.Push(context.Background(), agent.Client(), config.EnvTest, configDir(t)); err != nil {
		t.Fatal(err)
	}
	u := startUserProcess(t, agent)
	c := userv1connect.NewUserServiceClient(testkit.H2CClient(), "http://"+u.addr, connect.WithGRPC())
	if _, err := c.Register(context.Background(), connect.NewRequest(&userv1.RegisterRequest{Email: "kv@example.com", Password: "correct horse", DisplayName: "KV"})); err != nil {
		t.Fatal(err)
	}
	if got := tokenTTL(t, c); got != time.Hour {
		t.Fatalf("token_ttl from consul/kv/test/user.yaml: got %v, want 1h", got)
	}

	// A valid change takes effect within a second, without a restart.
	if _, err := kv.Put(&api.KVPair{Key: "keel/test/user/token_ttl", Value: []byte("2m")}, nil); err != nil {
		t.Fatal(err)
	}
	took := waitFor(t, "token_ttl change in effect", time.Second, func() bool { return tokenTTL(t, c) == 2*time.Minute })
	t.Logf("KV write to new token_ttl in effect: %v (at most, including one login per poll)", took.Round(time.Millisecond))

	// Invalid values are rejected whole; the last good value stays.
	for _, bad := range []struct{ key, value, why string }{
		{"keel/test/user/token_ttl", "banana", "not a duration"},
		{"keel/test/user/token_ttl", "0s", "out of range"},
		{"keel/test/user/server/shutdown_timeout", "-5s", "negative timeout"},
		{"keel/test/user/feature_flags/new_login", "maybe", "not a boolean"},
		{"keel/test/user/no_such_setting", "1", "unknown key"},
	} {
		before := u.logs.count("rejected")
		prev, _, err := kv.Get(bad.key, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(&api.KVPair{Key: bad.key, Value: []byte(bad.value)}, nil); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "rejection of "+bad.why+" logged", 2*time.Second, func() bool { return u.logs.count("rejected") > before })
		if !strings.Contains(u.logs.String(), strings.TrimPrefix(bad.key, "keel/test/user/")) {
			t.Fatalf("rejection of %s does not name the key:\n%s", bad.why, u.logs)
		}
		if got := tokenTTL(t, c); got != 2*time.Minute {
			t.Fatalf("after a rejected %s the token_ttl is %v, want the last good 2m", bad.why, got)
		}
		if prev != nil {
			_, err = kv.Put(prev, nil)
		} else {
			_, err = kv.Delete(bad.key, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	// A static setting changes only at the next start, and says so.
	if _, err := kv.Put(&api.KVPair{Key: "keel/test/user/password_hashing/time", Value: []byte("3")}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restart-needed logged", 2*time.Second, func() bool { return u.logs.count("password_hashing/time") > 0 && u.logs.count("restart") > 0 })
}

func TestConsulOutage(t *testing.T) {
	agent := consultest.Start(t)
	a := startUserProcess(t, agent)
	waitFor(t, "instance passing", 10*time.Second, func() bool { return len(passing(t, agent.Client(), "user")) == 1 })
	front := startConsulEdge(t, agent.Client())
	edgeURL := front.url
	c := userv1connect.NewUserServiceClient(testkit.H2CClient(), edgeURL, connect.WithGRPC())
	reg, err := c.Register(context.Background(), connect.NewRequest(&userv1.RegisterRequest{Email: "outage@example.com", Password: "correct horse", DisplayName: "O"}))
	if err != nil {
		t.Fatal(err)
	}
	id := reg.Msg.GetUser().GetId()
	token := testToken(t, id)
	c = userv1connect.NewUserServiceClient(testkit.H2CClient(), edgeURL, connect.WithGRPC(), bearer(token))

	// With the agent down, the edge keeps routing to the instances it knew
	// and the service keeps its configuration.
	agent.Stop()
	l := startLoad(edgeURL, id, token)
	waitFor(t, "the edge's watch finding Consul gone", 10*time.Second, func() bool { return front.logs.count("consul: watch failing") > 0 })
	waitFor(t, "the service's configuration watch finding Consul gone", 10*time.Second, func() bool {
		return a.logs.count("config source unreachable") > 0
	})
	l.waitCalls(t, 100, "calls through the edge once both found Consul gone")
	l.finish(t, "Consul down")

	// Back up, watches resume: a new instance is found and gets calls.
	agent.Restart()
	b := startUserProcess(t, agent, "KEEL_DATABASE_DATA_DIR="+t.TempDir())
	took := waitFor(t, "edge routes to the instance registered after the restart", 15*time.Second, func() bool {
		_, _ = c.GetUser(context.Background(), connect.NewRequest(&userv1.GetUserRequest{Id: id}))
		return b.logs.count("UserService/GetUser") > 0
	})
	t.Logf("agent restart to new instance taking calls: %v", took.Round(time.Millisecond))
	waitFor(t, "the instance from before the outage passing again", 10*time.Second, func() bool {
		return slices.Contains(passing(t, agent.Client(), "user"), a.id)
	})
}

func TestConsulACLToken(t *testing.T) {
	agent := consultest.Start(t, consultest.WithACL())
	const wrong = "6a1f0c1e-0000-4000-8000-000000000bad"
	p, err := tryUserProcess(t, agent, "CONSUL_HTTP_TOKEN="+wrong)
	if err == nil {
		t.Fatal("the user service started with a wrong Consul token")
	}
	<-p.done
	if p.cmd.ProcessState.ExitCode() == 0 {
		t.Fatal("exit status 0 with a wrong token")
	}
	logs := p.logs.String()
	if !strings.Contains(logs, "token") || strings.Contains(logs, wrong) {
		t.Fatalf("want a clear error about the token that does not print it:\n%s", logs)
	}

	ok := startUserProcess(t, agent)
	waitFor(t, "instance registered with the right token passing", 10*time.Second, func() bool {
		ids := passing(t, agent.Client(), "user")
		return len(ids) == 1 && ids[0] == ok.id
	})
}
