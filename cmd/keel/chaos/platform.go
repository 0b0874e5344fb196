package chaos

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/keelplatform/keel/consul"
	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/gen/go/shop/inventory/v1/inventoryv1connect"
	moneyv1 "github.com/keelplatform/keel/gen/go/shop/money/v1"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/cache/redistest"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
)

// services are the shop's services in start order (peers first).
var services = []string{"user", "inventory", "payment", "order", "storefront"}

// stateful names the services with a database of their own.
var stateful = map[string]bool{"user": true, "inventory": true, "payment": true, "order": true}

// cached names the services with a Redis cache tier.
var cached = map[string]bool{"user": true, "inventory": true}

const (
	tokenKey    = "0123456789abcdef0123456789abcdef-drill"
	identityKey = "fedcba9876543210fedcba9876543210-drill"
)

// item is one catalogue item the drill seeds.
type item struct {
	SKU   string `json:"sku"`
	Price int64  `json:"price_minor"`
	Stock int64  `json:"initial_stock"`
}

// catalogue: two plentiful items, one that runs out (orders cancelled
// out of stock) and one priced over the payment simulator's limit
// (orders declined and compensated).
var catalogue = []item{
	{"DRILL-TEA", 450, 1_000_000},
	{"DRILL-MUG", 1200, 1_000_000},
	{"DRILL-RARE", 2500, 60},
	{"DRILL-GOLD", 900_000, 1_000_000},
}

// declineOverMinor is the payment simulator's limit the drill sets.
const declineOverMinor = 500_000

// platform is Keel brought up the production way on loopback.
type platform struct {
	root, dir string
	log       io.Writer
	agent     *consulAgent
	client    *api.Client
	pg        *postgres
	redisBin  string
	redisDir  string
	redisAddr string
	redisMu   sync.Mutex
	redis     *redistest.Redis
	redisPid  int
	procs     map[string][]*proc
	edge      *proc
	toxics    *toxiproxy.ApiServer
	proxies   map[string]*toxiproxy.Proxy // by service: in front of its instance 0
	proxyReg  *consul.Registry
	kvExtra   map[string]string
}

func (p *platform) logf(format string, args ...any) {
	fmt.Fprintf(p.log, "drill: "+format+"\n", args...)
}

// allProcs lists every service process and the edge.
func (p *platform) allProcs() []*proc {
	var out []*proc
	for _, s := range services {
		out = append(out, p.procs[s]...)
	}
	return append(out, p.edge)
}

// bringUp builds the binaries and starts Consul, PostgreSQL, Redis,
// instances instances of every service, the edge and the network
// proxies, then seeds the catalogue.
func bringUp(ctx context.Context, opts Options, dir string, log io.Writer) (*platform, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	p := &platform{root: root, dir: dir, log: log, procs: map[string][]*proc{}, proxies: map[string]*toxiproxy.Proxy{}}
	began := time.Now()

	binDir := filepath.Join(dir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return p, err
	}
	pkgs := []string{"./cmd/edge"}
	for _, s := range services {
		pkgs = append(pkgs, "./services/"+s)
	}
	p.logf("building %s", strings.Join(pkgs, " "))
	build := exec.CommandContext(ctx, "go", append([]string{"build", "-o", binDir + "/"}, pkgs...)...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return p, fmt.Errorf("go build: %w\n%s", err, out)
	}

	consulBin := os.Getenv("KEEL_CONSUL_BIN")
	if consulBin == "" {
		get := exec.CommandContext(ctx, filepath.Join(root, "consul", "get-consul.sh"))
		get.Stderr = log
		out, err := get.Output()
		if err != nil {
			return p, fmt.Errorf("consul/get-consul.sh: %w", err)
		}
		consulBin = strings.TrimSpace(string(out))
	}
	if p.agent, err = newConsulAgent(consulBin, filepath.Join(dir, "consul")); err != nil {
		return p, err
	}
	if err := p.agent.start(); err != nil {
		return p, err
	}
	if p.client, err = api.NewClient(&api.Config{Address: p.agent.addr}); err != nil {
		return p, err
	}
	p.kvExtra = map[string]string{
		"keel/test/payment/simulator/decline_over_minor": strconv.Itoa(declineOverMinor),
		"keel/test/payment/simulator/failure_rate":       "0.02",
	}
	if err := p.pushConfig(ctx); err != nil {
		return p, err
	}
	p.logf("consul agent on %s, configuration pushed", p.agent.addr)

	pgBase := "" // the system's: the postgres OS user must reach it
	if opts.Dir != "" {
		pgBase = dir
	}
	if p.pg, err = startPostgres(ctx, pgBase); err != nil {
		return p, err
	}
	p.logf("postgres on 127.0.0.1:%d", p.pg.port)
	if p.redisBin, err = redistest.Binary(); err != nil {
		return p, err
	}
	p.redisDir = filepath.Join(dir, "redis")
	if p.redisAddr, err = freeAddr(); err != nil {
		return p, err
	}
	if err := p.startRedis(); err != nil {
		return p, err
	}

	for _, s := range services {
		for slot := range opts.Instances {
			addr, err := freeAddr()
			if err != nil {
				return p, err
			}
			env := []string{
				"KEEL_ENV=test",
				"KEEL_CONFIG_DIR=" + filepath.Join(root, "consul", "kv"),
				"CONSUL_HTTP_ADDR=" + p.agent.addr,
				"CONSUL_HTTP_TOKEN=",
				"KEEL_TOKEN_KEY=" + tokenKey,
				"KEEL_IDENTITY_KEY=" + identityKey,
				"KEEL_SERVER_DRAIN_DELAY=0s",
			}
			if stateful[s] {
				// database/data_dir is shared by a service's instances: the
				// payment simulator keeps its provider books there, one
				// provider for every instance, as an outside one would be.
				env = append(env, "KEEL_DATABASE_DRIVER=postgres", "KEEL_DATABASE_DSN="+p.pg.dsn(s), "KEEL_DATABASE_MAX_OPEN_CONNS=12",
					"KEEL_DATABASE_DATA_DIR="+filepath.Join(dir, "data", s))
			}
			if cached[s] {
				env = append(env, "KEEL_CACHE_REDIS_ADDR="+p.redisAddr)
			}
			if s == "order" {
				// A killed instance's sagas are taken over within seconds,
				// not the 30s of the test settings, so a drill of a minute
				// or two sees them resumed.
				env = append(env, "KEEL_SAGA_LEASE_TTL=6s", "KEEL_SAGA_RECOVERY_INTERVAL=2s")
			}
			p.procs[s] = append(p.procs[s], &proc{
				service: s, slot: slot, bin: filepath.Join(binDir, s), addr: addr, env: env,
				logPath: filepath.Join(dir, "logs", fmt.Sprintf("%s-%d.log", s, slot)),
			})
		}
	}
	for _, d := range append([]string{"logs"}, "data/user", "data/inventory", "data/payment", "data/order") {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return p, err
		}
	}
	// Peers first: a service starting before its peers is fine in
	// principle, but on two cores a start in waves is quicker.
	for _, wave := range [][]string{{"user", "inventory", "payment"}, {"order", "storefront"}} {
		g, _ := errgroup.WithContext(ctx)
		for _, s := range wave {
			for _, pr := range p.procs[s] {
				g.Go(func() error { return pr.start(60 * time.Second) })
			}
		}
		if err := g.Wait(); err != nil {
			return p, err
		}
	}
	edgeAddr, err := freeAddr()
	if err != nil {
		return p, err
	}
	p.edge = &proc{
		service: "edge", bin: filepath.Join(binDir, "edge"), addr: edgeAddr,
		logPath: filepath.Join(dir, "logs", "edge-0.log"),
		env: []string{
			"KEEL_ENV=test",
			"KEEL_CONFIG_DIR=" + filepath.Join(root, "consul", "kv"),
			"CONSUL_HTTP_ADDR=" + p.agent.addr,
			"CONSUL_HTTP_TOKEN=",
			"KEEL_TOKEN_KEY=" + tokenKey,
			"KEEL_IDENTITY_KEY=" + identityKey,
		},
	}
	if err := p.edge.start(60 * time.Second); err != nil {
		return p, err
	}
	p.logf("%d instances of each of %s and the edge on %s are up", opts.Instances, strings.Join(services, ", "), edgeAddr)

	if err := p.startProxies(ctx); err != nil {
		return p, err
	}
	if err := p.waitPassing(ctx, 30*time.Second); err != nil {
		return p, err
	}
	if err := p.seed(ctx); err != nil {
		return p, err
	}
	p.logf("platform up and seeded in %v (files in %s)", time.Since(began).Round(time.Millisecond), dir)
	return p, nil
}

// pushConfig writes the seed configuration and the drill's own settings
// to Consul KV (again after an agent restart: a dev agent keeps KV in
// memory, where a production cluster keeps it on its servers' disks).
func (p *platform) pushConfig(ctx context.Context) error {
	if _, err := consul.Push(ctx, p.client, config.EnvTest, filepath.Join(p.root, "consul", "kv")); err != nil {
		return fmt.Errorf("push configuration to Consul KV: %w", err)
	}
	for k, v := range p.kvExtra {
		if _, err := p.client.KV().Put(&api.KVPair{Key: k, Value: []byte(v)}, nil); err != nil {
			return err
		}
	}
	return nil
}

func (p *platform) startRedis() error {
	r, err := redistest.Run(p.redisBin, p.redisDir, p.redisAddr)
	if err != nil {
		return err
	}
	p.redisMu.Lock()
	p.redis, p.redisPid = r, r.Pid()
	p.redisMu.Unlock()
	return nil
}

func (p *platform) redisSignal(sig syscall.Signal) {
	p.redisMu.Lock()
	pid := p.redisPid
	p.redisMu.Unlock()
	_ = syscall.Kill(pid, sig)
}

// killRedis kills redis-server with SIGKILL and waits until it is gone.
func (p *platform) killRedis() {
	p.redisMu.Lock()
	r := p.redis
	p.redisMu.Unlock()
	_ = syscall.Kill(r.Pid(), syscall.SIGCONT)
	_ = syscall.Kill(r.Pid(), syscall.SIGKILL)
	select {
	case <-r.Exited():
	case <-time.After(10 * time.Second):
	}
	r.Stop() // the watchdog
}

// startProxies puts a toxiproxy in front of instance 0 of every service
// and registers it in Consul as one more instance of that service: the
// edge and the peers route some of their calls through it, across a
// network the drill can degrade.
func (p *platform) startProxies(ctx context.Context) error {
	logger := zerolog.New(io.Discard)
	p.toxics = toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), logger)
	p.proxyReg = consul.NewRegistry(p.client, consul.RegistryConfig{})
	for _, s := range services {
		listen, err := freeAddr()
		if err != nil {
			return err
		}
		px := toxiproxy.NewProxy(p.toxics, s+"-net", listen, p.procs[s][0].addr)
		if err := p.toxics.Collection.Add(px, true); err != nil {
			return fmt.Errorf("toxiproxy for %s: %w", s, err)
		}
		p.proxies[s] = px
		inst := discovery.Instance{
			ID: s + "-via-net-" + strings.ReplaceAll(listen, ":", "-"), Service: s, Addr: listen,
			Tags: []string{"keel", "connect", "grpc", "grpc-web"},
			Meta: map[string]string{"env": "test", "version": "drill", "protocols": "connect,grpc,grpc-web"},
		}
		if err := p.proxyReg.Register(ctx, inst); err != nil {
			return err
		}
	}
	return nil
}

// waitPassing waits until every service has all its instances (and its
// proxy) passing in Consul.
func (p *platform) waitPassing(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		missing := ""
		for _, s := range services {
			entries, _, err := p.client.Health().Service(s, "", true, (&api.QueryOptions{}).WithContext(ctx))
			if err != nil || len(entries) < len(p.procs[s])+1 {
				missing = fmt.Sprintf("%s: %d passing (%v)", s, len(entries), err)
				break
			}
		}
		if missing == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("instances not passing in Consul within %v: %s", within, missing)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// seed creates the catalogue, calling an inventory instance directly
// with the platform's identity, as the platform's own processes do
// (CreateItem is internal: the edge refuses it).
func (p *platform) seed(ctx context.Context) error {
	ids, err := auth.NewIdentities([]byte(identityKey), "drill")
	if err != nil {
		return err
	}
	inv := inventoryv1connect.NewInventoryServiceClient(http.DefaultClient, "http://"+p.procs["inventory"][0].addr, connect.WithInterceptors(ids))
	for _, it := range catalogue {
		_, err := inv.CreateItem(ctx, connect.NewRequest(&inventoryv1.CreateItemRequest{
			RequestId: "drill-seed-" + it.SKU, Sku: it.SKU, Name: "Drill item " + it.SKU,
			Price: &moneyv1.Money{CurrencyCode: "EUR", AmountMinor: it.Price}, InitialStock: it.Stock,
		}))
		if err != nil {
			return fmt.Errorf("seed %s: %w", it.SKU, err)
		}
	}
	return nil
}

// tearDown stops everything the platform started.
func (p *platform) tearDown(keep bool) {
	var wg sync.WaitGroup
	for _, pr := range p.allProcs() {
		if pr == nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); pr.stop(5 * time.Second) }()
	}
	wg.Wait()
	if p.proxyReg != nil {
		_ = p.proxyReg.Close()
	}
	if p.toxics != nil {
		for _, px := range p.proxies {
			px.Stop()
		}
	}
	if p.redis != nil {
		p.redisSignal(syscall.SIGCONT)
		p.redis.Stop()
	}
	if p.agent != nil {
		p.agent.stop()
	}
	if p.pg != nil {
		p.pg.stop(keep)
	}
	if !keep && p.dir != "" {
		_ = os.RemoveAll(p.dir)
	}
}

// scrape fetches a process's /metrics and returns its samples by series.
func scrape(ctx context.Context, addr string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	res, err := scrapeClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", res.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || !strings.HasPrefix(line, "keel_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

var scrapeClient = &http.Client{Timeout: 2 * time.Second}
